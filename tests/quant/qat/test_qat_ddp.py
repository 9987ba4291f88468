"""QAT under torchrun with DDP (gloo on CPU): ranges and learned scales identical on both ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


def test_qat_ddp_keeps_scales_identical_across_ranks(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(ROOT / "tests" / "quant" / "qat" / "_qat_ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys() == {"ste", "lsq", "pact", "synced_scale"}
    # statistics of both ranks' data: the range [0, 3] of rank 1, on rank 0 too
    assert r0["synced_scale"]["scale"].item() == pytest.approx(3.0 / 255, rel=1e-6)
    for method in r0:
        assert r0[method].keys() == r1[method].keys() and r0[method], method
        for k in r0[method]:
            assert torch.equal(r0[method][k], r1[method][k]), (method, k)
    # the learned parameters really trained (not a trivially equal initial state)
    assert any(k.endswith("alpha") for k in r0["pact"])
