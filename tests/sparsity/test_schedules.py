"""Schedules at their end points, Zhu & Gupta's cubic exactly, and gradual pruning."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError
from torchcompress.sparsity import GradualPruning, SparsitySchedule
from torchcompress.sparsity.masking import get_mask

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["constant", "linear", "cubic", "exponential", "cosine"]


@pytest.mark.parametrize("kind", KINDS)
def test_end_points(kind: str) -> None:
    s = SparsitySchedule(kind, initial=0.1, final=0.8, start_step=10, end_step=110, frequency=10)
    assert s(0) == 0.0 and s(9) == 0.0  # before start: nothing pruned
    assert s(10) == pytest.approx(0.8 if kind == "constant" else 0.1)
    assert s(110) == pytest.approx(0.8) and s(10_000) == pytest.approx(0.8)
    values = [s(t) for t in range(10, 111)]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values))  # never decreases


def test_cubic_is_zhu_gupta() -> None:
    s_i, s_f, t0, dt, n = 0.05, 0.9, 100, 25, 8
    s = SparsitySchedule(
        "cubic", initial=s_i, final=s_f, start_step=t0, end_step=t0 + n * dt, frequency=dt
    )
    for t in range(t0, t0 + n * dt + 1):
        k = (t - t0) // dt  # the mask is updated every dt steps
        expected = s_f + (s_i - s_f) * (1 - (k * dt) / (n * dt)) ** 3
        assert s(t) == pytest.approx(expected, abs=1e-12)
    assert s.update_steps() == list(range(t0, t0 + n * dt + 1, dt))


def test_midpoints() -> None:
    kw = dict(initial=0.0, final=0.5, start_step=0, end_step=100)
    assert SparsitySchedule("linear", **kw)(50) == pytest.approx(0.25)
    assert SparsitySchedule("cosine", **kw)(50) == pytest.approx(0.25)
    assert SparsitySchedule("cubic", **kw)(50) == pytest.approx(0.5 - 0.5 * 0.125)
    assert SparsitySchedule("exponential", **kw)(50) == pytest.approx(1 - math.sqrt(0.5))
    assert SparsitySchedule("cosine", **kw)(25) == pytest.approx(0.25 * (1 - math.cos(math.pi / 4)))


def test_frequency_and_updates() -> None:
    s = SparsitySchedule("linear", final=0.5, start_step=5, end_step=23, frequency=5)
    assert s.update_steps() == [5, 10, 15, 20, 23]
    assert s(14) == s(10) and s(23) == 0.5
    assert [t for t in range(30) if s.should_update(t)] == [5, 10, 15, 20, 23]


def test_end_from_training_length() -> None:
    s = SparsitySchedule("cubic", final=0.6)
    with pytest.raises(ConfigError, match="total_steps"):
        s(3)
    assert s(40, total_steps=40) == pytest.approx(0.6)
    assert s.resolved(40).end_step == 40


@pytest.mark.parametrize(
    "kw",
    [
        dict(kind="quadratic"),
        dict(initial=0.6, final=0.5),
        dict(final=1.0),
        dict(start_step=10, end_step=5),
        dict(frequency=0),
        dict(start_step=-1),
    ],
)
def test_bad_schedules(kw: dict) -> None:
    with pytest.raises(ConfigError):
        SparsitySchedule(**kw)


def test_round_trip() -> None:
    s = SparsitySchedule(
        "exponential", initial=0.1, final=0.7, start_step=3, end_step=9, frequency=2
    )
    assert SparsitySchedule.from_dict(s.to_dict()) == s


def _train(model: nn.Module, data: list, cb: GradualPruning, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    state = SimpleNamespace(model=model, total_steps=steps, step=0)
    cb.on_train_begin(state)
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        state.step = i + 1
        cb.on_step_end(state)


@pytest.mark.parametrize("crit", ["magnitude", "taylor"])
def test_gradual_pruning_callback(mlp: nn.Module, mlp_data: list, crit: str) -> None:
    sched = SparsitySchedule(
        "cubic", initial=0.2, final=0.8, start_step=0, end_step=12, frequency=3
    )
    cb = GradualPruning(sched, tc.PruneConfig(criterion=crit, scope="global"), data=mlp_data)
    masks: list[list[torch.Tensor]] = []
    orig_step = cb._maybe_prune

    def spy(state):  # record masks after every update to check they only shrink
        orig_step(state)
        masks.append([get_mask(m).clone() for m in mlp if isinstance(m, nn.Linear)])

    cb._maybe_prune = spy  # type: ignore[method-assign]
    _train(mlp, mlp_data, cb, steps=15)
    assert [s for s, _ in cb.applied] == [0, 3, 6, 9, 12]
    assert cb.applied[-1][1] == pytest.approx(0.8)
    assert tc.sparsity_report(mlp).sparsity == pytest.approx(0.8, abs=1e-3)
    for before, after in itertools.pairwise(masks):
        assert all(bool((b >= a).all()) for a, b in zip(after, before))


def test_gradual_nm_ramps_blocks(mlp: nn.Module, mlp_data: list) -> None:
    sched = SparsitySchedule(
        "linear", initial=0.0, final=0.5, start_step=1, end_step=4, frequency=1
    )
    cb = GradualPruning(sched, tc.PruneConfig(pattern="2:4"))
    _train(mlp, mlp_data, cb, steps=5)
    for m in mlp:
        if isinstance(m, nn.Linear):
            assert bool(((m.weight != 0).reshape(m.weight.shape[0], -1, 4).sum(-1) == 2).all())


def test_gradual_errors() -> None:
    with pytest.raises(DataError, match="needs data"):
        GradualPruning(SparsitySchedule(final=0.5), tc.PruneConfig(criterion="wanda"))
    with pytest.raises(ConfigError, match="above what 2:4"):
        GradualPruning(SparsitySchedule(final=0.7), tc.PruneConfig(pattern="2:4"))


def test_gradual_prune_with_finetune(mlp: nn.Module, mlp_data: list) -> None:
    train = pytest.importorskip("torchcompress.train")
    if not hasattr(train, "finetune"):
        pytest.skip("tc.finetune not built yet")
    sched = SparsitySchedule("cubic", final=0.75, frequency=2)
    tc.sparsity.gradual_prune(
        mlp, mlp_data, sched, tc.PruneConfig(), epochs=2, lr=0.05, progress=False
    )
    assert tc.sparsity_report(mlp).sparsity == pytest.approx(0.75, abs=2e-3)


# --- torchrun / DDP: identical masks on every rank ----------------------------------------------


@pytest.mark.slow
def test_masks_identical_across_ranks_and_equal_to_pooled_data(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    worker_script = ROOT / "tests" / "sparsity" / "_ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(worker_script), str(tmp_path / "masks.pt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gathered = torch.load(tmp_path / "masks.pt")
    for key in gathered[0]:
        for a, b in zip(gathered[0][key], gathered[1][key]):
            assert torch.equal(a, b), key
    sys.path.insert(0, str(worker_script.parent))
    try:
        import _ddp_worker as worker
    finally:
        sys.path.pop(0)
    # all-reduced statistics: the same masks as one process scoring both ranks' data
    for crit in ("taylor", "wanda", "fisher"):
        m = worker.model()
        tc.prune(
            m,
            tc.PruneConfig(sparsity=0.5, criterion=crit, scope="global"),
            worker.rank_data(0) + worker.rank_data(1),
        )
        assert torch.equal(get_mask(m[0]), gathered[0][crit][0]), crit
        assert torch.equal(get_mask(m[2]), gathered[0][crit][1]), crit
    assert gathered[0]["gradual"][0].float().mean() == pytest.approx(0.4, abs=0.01)
