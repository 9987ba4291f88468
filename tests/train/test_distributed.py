"""tc.finetune / tc.evaluate under torchrun (two processes, gloo) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchcompress as tc

from ._ddp_worker import mlp as worker_mlp

ROOT = Path(__file__).resolve().parents[2]


def test_ddp_under_torchrun_matches_one_process(tmp_path):
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
    j0 = json.loads((tmp_path / "rank0.json").read_text())
    j1 = json.loads((tmp_path / "rank1.json").read_text())
    # both ranks end with identical parameters and buffers (BatchNorm statistics included)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert j0["world_sizes"] == [2] and j0["steps_a"] == 84 and j0["training_a"]
    # metrics are averaged across ranks: identical on both, over all 450 test images
    assert j0["metrics_a"] == j1["metrics_a"] and j0["metrics_a"]["samples"] == 450
    assert j0["history_b"] == j1["history_b"] or all(
        a["eval_accuracy"] == b["eval_accuracy"] for a, b in zip(j0["history_b"], j1["history_b"])
    )
    assert j0["history_b"][-1]["eval_accuracy"] > 0.8
    # a list of 84 batches: 42 per rank; a stream without len(): exactly steps=50 on both ranks
    assert j0["steps_c"] == j1["steps_c"] == 42 and j0["steps_d"] == j1["steps_d"] == 50
    assert j0["metrics_c"] == j1["metrics_c"] and j0["metrics_c"]["samples"] == 450
    assert j0["metrics_one"] == j1["metrics_one"] and j0["metrics_one"]["samples"] == 16

    # 2 ranks x 16 unshuffled samples per step == one process with 32 per step
    tc.seed_everything(0)
    ref = worker_mlp()
    train, test = tc.data.digits(
        batch_size=32, image_size=8, channels=1, shuffle=False, drop_last=True
    )
    tc.finetune(ref, train, epochs=2, lr=0.05, progress=False)
    for k, v in ref.state_dict().items():
        assert torch.allclose(v, r0[f"a.{k}"], atol=1e-5), k
    single = tc.evaluate(ref, test)
    assert single["accuracy"] == pytest.approx(j0["metrics_a"]["accuracy"], abs=1 / 450 + 1e-9)
    assert single["loss"] == pytest.approx(j0["metrics_a"]["loss"], rel=1e-4)
