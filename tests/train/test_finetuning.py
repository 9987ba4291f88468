"""tc.finetune: a real run, the plain loop exactly, epochs and steps, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError
from torchcompress.train import LambdaCallback

from .conftest import gpt2, lm_batches, mlp, tiny_data


@pytest.mark.slow
def test_resnet20_on_digits_reaches_high_accuracy():
    tc.seed_everything(0)
    # the digits' own 8x8 resolution keeps this run to a few seconds on two cores
    train, test = tc.data.digits(batch_size=32, image_size=8, channels=1, drop_last=True)
    model = tc.models.resnet20(in_channels=1)
    before = tc.evaluate(model, test)["accuracy"]
    model.eval()
    tc.finetune(model, train, epochs=3, lr=0.05, eval_data=test, progress=False)
    assert not model.training  # it came in eval mode
    hist = tc.train.training_history(model)
    assert [h["epoch"] for h in hist] == [0, 1, 2] and hist[-1]["step"] == 3 * 42
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    after = tc.evaluate(model, test)
    # three epochs of ResNet-20 reach 96-99% across seeds here; 93% leaves room, chance is 10%
    assert after["accuracy"] > 0.93 and before < 0.5
    assert hist[-1]["eval_accuracy"] == pytest.approx(after["accuracy"])
    assert tc.io.history(model)[-1]["step"] == "finetune"
    assert tc.io.history(model)[-1]["config"]["steps"] == 126


def test_finetune_is_the_plain_loop_exactly():
    """Same init, same shuffled loader: tc.finetune takes exactly the steps of the hand-written loop."""
    torch.manual_seed(0)
    init = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    a, b = init, copy.deepcopy(init)
    loader = lambda: tc.data.digits(batch_size=64, image_size=8, channels=1, seed=3)[0]  # noqa: E731
    train = loader()
    total = 2 * len(train)
    opt = torch.optim.SGD(a.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    for _ in range(2):
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(a(x), y).backward()
            opt.step()
            sched.step()
    tc.finetune(b, loader(), epochs=2, lr=0.05, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "epochs, steps, expected_steps, expected_epochs",
    [
        (None, None, 5, 1),
        (2, None, 10, 2),
        (None, 3, 3, 1),
        (1, 3, 3, 1),
        (None, 12, 12, 3),
        (1, 12, 5, 1),
    ],
)
def test_epochs_and_steps(epochs, steps, expected_steps, expected_epochs):
    model = mlp()
    tc.finetune(model, tiny_data(), epochs=epochs, steps=steps, progress=False)
    hist = tc.train.training_history(model)
    assert hist[-1]["step"] == expected_steps and len(hist) == expected_epochs


def test_finetune_bad_input():
    with pytest.raises(DataError, match="yielded no batch"):
        tc.finetune(mlp(), [], progress=False)
    with pytest.raises(DataError, match="Batch 1 of data does not fit"):
        tc.finetune(
            mlp(),
            [tiny_data()[0], (torch.randn(8, 9), torch.zeros(8, dtype=torch.long))],
            progress=False,
        )
    with pytest.raises(DataError, match="has no target"):
        tc.finetune(mlp(), [torch.randn(4, 5)], progress=False)
    for kwargs in (
        {"epochs": 0},
        {"steps": -1},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"momentum": 1.5},
        {"weight_decay": -1},
        {"grad_clip": 0},
        {"epochs": 1.5},
        {"warmup_steps": -1},
    ):
        with pytest.raises(ConfigError):
            tc.finetune(mlp(), tiny_data(), **kwargs)
    with pytest.raises(ConfigError, match="launched by torchrun"):
        tc.finetune(mlp(), tiny_data(), ddp=True)
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        tc.finetune(frozen, tiny_data())
    with pytest.raises(ConfigError, match="callbacks"):
        tc.finetune(mlp(), tiny_data(), callbacks=[lambda s: None])


def test_one_shot_iterators_and_unknown_length():
    model = mlp()
    tc.finetune(model, iter(tiny_data()), scheduler="constant", progress=False)
    assert tc.train.training_history(model)[-1]["step"] == 5
    with pytest.raises(ConfigError, match="needs the number of steps"):
        tc.finetune(mlp(), iter(tiny_data()))  # cosine needs a length
    tc.finetune(model, (b for b in tiny_data()), steps=3, progress=False)
    assert tc.train.training_history(model)[-1]["step"] == 3
    tc.finetune(model, iter(tiny_data()), steps=10, progress=False)  # runs out: a warning
    assert tc.train.training_history(model)[-1]["step"] == 5
    with pytest.raises(ConfigError, match="one-shot iterator"):
        tc.finetune(mlp(), iter(tiny_data()), epochs=2)

    class Stream:  # re-iterable, no len()
        def __iter__(self):
            return iter(tiny_data())

    with pytest.raises(ConfigError, match="needs the number of steps"):
        tc.finetune(mlp(), Stream())
    model = mlp()
    tc.finetune(model, Stream(), steps=12, progress=False)
    assert [h["step"] for h in tc.train.training_history(model)] == [5, 10, 12]


@pytest.mark.hf
def test_finetune_of_a_causal_lm_trains_on_the_next_token():
    model = gpt2()
    data = lm_batches(n=2)
    with torch.no_grad():
        first = model(**data[0]).loss.item()  # dropout is off: train mode computes the same
    seen = []
    tc.finetune(
        model,
        data,
        epochs=1,
        lr=0.1,
        callbacks=[LambdaCallback(on_step_end=lambda s: seen.append(s.loss))],
        progress=False,
    )
    assert seen[0] == pytest.approx(first, rel=1e-5)  # the model's own loss, not the copy task


def test_finetune_labels_out_of_range_are_a_data_error():
    bad = (torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 9, 0, 1, 2]))  # mlp() has 4 classes
    with pytest.raises(DataError, match=r"Batch 1 of data has the label 9, .* 4 classes"):
        tc.finetune(mlp(), [tiny_data()[0], bad], epochs=1, progress=False)
