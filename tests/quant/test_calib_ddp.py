"""Static calibration under torchrun (2 ranks, gloo): each rank quantizes on half the data.

With ``"minmax"`` and the histogram observers (``"percentile"``, ``"mse"``, ``"kl"``: two passes,
integer counts over a range fixed by the first) every scale and zero point is bit-identical on both
ranks and to one process on all the data, in graph and in layer mode; ``"moving_minmax"`` depends on
the order of the batches: the ranks average their moving averages, identical on both ranks, an
approximation of one process (here each rank's first batch sets its average: not one process's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_with_half_the_data_get_one_process_scales(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "tests" / "quant" / "_calib_ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    ref = r0["reference"]
    assert ref.keys() == r1["reference"].keys() == r0["ranks"].keys() == r1["ranks"].keys()
    assert len(ref) == 10
    for variant, want in ref.items():
        a, b = r0["ranks"][variant], r1["ranks"][variant]
        assert a.keys() == b.keys() == want.keys(), variant
        for k in want:
            assert torch.equal(a[k], b[k]), (variant, k)  # every rank holds the same numbers
            if not variant.startswith("moving_minmax"):
                assert torch.equal(a[k], want[k]), (variant, k)  # one process's, bit for bit
