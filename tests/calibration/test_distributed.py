"""Calibration under torchrun: each of 2 ranks sees half the data, both get one process's statistics.

Minima, maxima and every count are bit-identical to one process on all the data (the reduction does
not depend on the order); sums (means, second moments, gradients) agree to float tolerance, since
the ranks' partial sums are added in another order than one process adds the batches. Both ranks
always hold exactly the same numbers.
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
def test_two_ranks_with_half_the_data_each_match_one_process(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "tests" / "calibration" / "_dist_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")

    sys.path.insert(0, str(ROOT / "tests" / "calibration"))
    try:
        import _dist_worker as worker
    finally:
        sys.path.pop(0)
    one = worker.run(worker.data())  # one process, all the data

    assert r0["batches"] == r1["batches"] == one["batches"] == 6
    for layer in ("conv", "fc"):
        a, b, ref = r0[layer], r1[layer], one[layer]
        assert a["counts"] == b["counts"] == ref["counts"]
        assert a["calls"] == b["calls"] == ref["calls"] and a["rows"] == ref["rows"]
        assert sorted(a["values"]) == sorted(ref["values"]) == sorted(worker.STATS[layer])
        for name, value in ref["values"].items():
            assert torch.equal(a["values"][name], b["values"][name]), (layer, name)
            if name.endswith(("_min", "_max")):
                assert torch.equal(a["values"][name], value), (layer, name)
            else:
                torch.testing.assert_close(a["values"][name], value, rtol=1e-5, atol=1e-7)
