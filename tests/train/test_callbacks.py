"""Callbacks: the order of the hooks and the TrainState they receive."""

from __future__ import annotations

import torchcompress as tc
from torchcompress.train import TrainState

from .conftest import Recorder, mlp, tiny_data


def test_callback_order_and_state():
    rec = Recorder()
    model = mlp()
    tc.finetune(model, tiny_data(n=16), epochs=2, callbacks=[rec], progress=False)
    per_step = lambda k: [("step_begin", k), ("after_backward", k), ("step_end", k + 1)]  # noqa: E731
    expected = [
        ("train_begin", 0),
        *per_step(0),
        *per_step(1),
        ("epoch_end", 2),
        *per_step(2),
        *per_step(3),
        ("epoch_end", 4),
        ("train_end", 4),
    ]
    assert rec.events == expected
    assert all(rec.training)


def test_trainstate_is_a_dataclass_with_the_documented_fields():
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainState)}
    assert {
        "model",
        "optimizer",
        "scheduler",
        "step",
        "epoch",
        "total_steps",
        "loss",
        "rank",
        "world_size",
    } <= names
