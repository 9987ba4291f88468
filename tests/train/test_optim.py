"""Optimizers and learning-rate schedules by name, and user factories."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import torchcompress as tc
from torchcompress.errors import ConfigError
from torchcompress.train import LambdaCallback

from .conftest import Recorder, mlp, tiny_data


def _lrs(scheduler, steps, warmup=0, lr=0.1):
    rec = Recorder()
    data = tiny_data(n=8 * steps)
    tc.finetune(
        mlp(),
        data,
        lr=lr,
        scheduler=scheduler,
        warmup_steps=warmup,
        callbacks=[rec],
        progress=False,
    )
    return rec.lrs


def test_scheduler_values():
    lr, n = 0.1, 8
    assert _lrs("constant", n) == pytest.approx([lr] * n)
    assert _lrs(None, n) == pytest.approx([lr] * n)
    assert _lrs("cosine", n) == pytest.approx(
        [lr * 0.5 * (1 + math.cos(math.pi * t / n)) for t in range(n)]
    )
    assert _lrs("linear", n) == pytest.approx([lr * (1 - t / n) for t in range(n)])
    assert _lrs("step", n) == pytest.approx([lr] * 4 + [lr * 0.1] * 2 + [lr * 0.01] * 2)
    w = 3
    got = _lrs("cosine", n, warmup=w)
    assert got[:w] == pytest.approx([lr * (s + 1) / w for s in range(w)])
    assert got[w:] == pytest.approx(
        [lr * 0.5 * (1 + math.cos(math.pi * t / (n - w))) for t in range(n - w)]
    )


def test_custom_scheduler_and_optimizers():
    model = mlp()
    factory = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)
    rec = Recorder()
    tc.finetune(
        model,
        tiny_data(n=32),
        lr=0.2,
        scheduler=lambda opt, total: factory(opt),
        callbacks=[rec],
        progress=False,
    )
    assert rec.lrs == pytest.approx([0.2, 0.2, 0.1, 0.1])
    with pytest.raises(ConfigError, match="warmup_steps applies to the named schedulers"):
        tc.finetune(model, tiny_data(), scheduler=lambda o, t: factory(o), warmup_steps=2)

    types = {}
    for name in ("sgd", "adam", "adamw"):
        cb = LambdaCallback(
            on_train_begin=lambda s, name=name: types.__setitem__(name, type(s.optimizer))
        )
        tc.finetune(mlp(), tiny_data(), optimizer=name, callbacks=[cb], progress=False)
    assert types == {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    cb = LambdaCallback(on_train_begin=lambda s: types.__setitem__("f", s.optimizer))
    tc.finetune(
        mlp(), tiny_data(), optimizer=torch.optim.RMSprop, lr=0.003, callbacks=[cb], progress=False
    )
    assert isinstance(types["f"], torch.optim.RMSprop) and types["f"].defaults["lr"] == 0.003
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.5)
    tc.finetune(m, tiny_data(), optimizer=opt, scheduler="constant", progress=False)
    assert all(opt.state[p]["momentum_buffer"] is not None for p in m.parameters())
    with pytest.raises(ConfigError, match="'sgd', 'adam', 'adamw'"):
        tc.finetune(mlp(), tiny_data(), optimizer="lion")
    with pytest.raises(ConfigError, match="Did you mean 'cosine'"):
        tc.finetune(mlp(), tiny_data(), scheduler="cosin")
