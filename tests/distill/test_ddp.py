"""Distillation under torchrun (two processes, gloo) against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ._ddp_worker import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_distillation_under_torchrun_matches_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).resolve().parent / "_ddp_worker.py"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    # both ranks end with identical students and adapters (the adapter's gradients are averaged)
    assert r0.keys() == r1.keys() and any(k.startswith("distiller.") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert int(r0["steps"]) == 1347 // 32  # 42 steps of 16 samples per rank
    # 2 ranks x 16 unshuffled samples per step == one process with 32 per step
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student, d = run(32)
    finally:
        torch.set_num_threads(n)
    ref = {f"student.{k}": v for k, v in student.state_dict().items()}
    ref.update({f"distiller.{k}": v for k, v in d.state_dict().items()})
    for k, v in ref.items():
        assert torch.allclose(v, r0[k], atol=1e-5), k
