"""The teacher cache: keyed by sample content, so a shuffled loader gets each sample's own outputs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import torchcompress as tc
from torchcompress.batches import Batch
from torchcompress.distill import Distiller, DistillTerm, TeacherCache
from torchcompress.errors import ConfigError
from torchcompress.train import LambdaCallback

from .conftest import net


def test_keys_follow_the_content_not_the_position():
    cache = TeacherCache()
    x = torch.arange(12.0).reshape(4, 3)
    mask = torch.tensor([[1, 0], [1, 1], [0, 0], [1, 0]])
    keys = cache.keys(Batch(kwargs={"x": x, "mask": mask}))
    assert len(set(keys)) == 4
    perm = [2, 0, 3, 1]
    assert cache.keys(Batch(kwargs={"mask": mask[perm], "x": x[perm]})) == [keys[i] for i in perm]
    # a different value, dtype or other input changes the key
    assert cache.keys(Batch(kwargs={"x": x + 1, "mask": mask}))[0] != keys[0]
    assert cache.keys(Batch(kwargs={"x": x.double(), "mask": mask}))[0] != keys[0]
    assert cache.keys(Batch(kwargs={"x": x, "mask": mask, "flag": True}))[0] != keys[0]
    # duplicates share a key (the teacher gives them the same outputs)
    dup = torch.stack([x[0], x[0]])
    k = cache.keys(Batch(args=(dup,)))
    assert k[0] == k[1]


def test_get_put_counts_and_limits():
    cache = TeacherCache(max_samples=3)
    x = torch.randn(4, 2)
    keys = cache.keys(Batch(args=(x,)))
    assert cache.get(keys) is None and cache.misses == 4
    cache.put(keys, {"<logits>": x * 2, "block": x[:, :1]})
    assert len(cache) == 3  # full
    assert cache.get(keys[:3])["block"].shape == (3, 1) and cache.hits == 3
    assert torch.equal(cache.get(keys[1:3])["<logits>"], 2 * x[1:3])
    with pytest.raises(ConfigError, match="per sample"):
        cache.put(keys, {"<logits>": torch.zeros(2, 3)})
    with pytest.raises(ConfigError, match="max_samples"):
        TeacherCache(max_samples=0)
    cache.clear()
    assert len(cache) == 0 and cache.hits == cache.misses == 0


def _run(cache: bool, loader, teacher, calls):
    tc.seed_everything(0)
    student = net(4)
    seen: list[dict[str, float]] = []
    d = Distiller(
        [("kd", 1.0), DistillTerm("hint", 5.0, student="block"), ("dkd", 0.5)], cache=cache
    )
    tc.finetune(
        student,
        loader,
        epochs=3,
        lr=0.05,
        teacher=teacher,
        distill=d,
        progress=False,
        callbacks=[LambdaCallback(on_step_end=lambda s: seen.append(dict(s.losses)))],
    )
    return student, seen, d


def test_shuffled_loader_cached_equals_uncached(teacher):
    calls: list[int] = []
    teacher.fc.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    x = torch.randn(96, 1, 8, 8)
    y = torch.randint(0, 10, (96,))
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=16,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    a, seen_a, _ = _run(False, loader, teacher, calls)
    uncached_calls = sum(calls)
    calls.clear()
    loader.generator.manual_seed(3)
    b, seen_b, d = _run(True, loader, teacher, calls)
    assert len(seen_a) == len(seen_b) == 18
    for ra, rb in zip(seen_a, seen_b):
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-7), k
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(v, w, atol=1e-4), k
    # the teacher ran on the first epoch only (plus the example batch at attach)
    assert uncached_calls == 96 * 3 + 16
    assert sum(calls) == 96 + 16
    assert d.cache.hits == 96 * 2 and len(d.cache) == 96
