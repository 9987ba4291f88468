"""tc.evaluate, tc.finetune (incl. DDP under torchrun), seed_everything, callbacks and schedules."""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError, NumericalError
from torchcompress.train import Callback, LambdaCallback, TrainState, extract_logits

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; on a shared, loaded machine more threads spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Fixed(nn.Module):
    """Returns preset logits (one row per sample index given as input)."""

    def __init__(self, logits: torch.Tensor, wrap: str = "tensor") -> None:
        super().__init__()
        self.register_buffer("table", logits)
        self.wrap = wrap
        self.grad_enabled: list[bool] = []
        self.child = nn.Linear(1, 1)

    def forward(self, idx: torch.Tensor):
        self.grad_enabled.append(torch.is_grad_enabled())
        out = self.table[idx]
        if self.wrap == "tuple":
            return out, "aux"
        if self.wrap == "object":
            return type("Out", (), {"logits": out})()
        if self.wrap == "dict":
            return {"logits": out, "hidden": out}
        return out


def tiny_data(n=40, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4))


# --- seed_everything -----------------------------------------------------------------------------


def test_seed_everything_repeats_every_generator():
    import random

    import numpy as np

    assert tc.seed_everything(7) == 7
    a = (random.random(), float(np.random.rand()), torch.rand(3))
    tc.seed_everything(7)
    b = (random.random(), float(np.random.rand()), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(ConfigError):
        tc.seed_everything(-1)


# --- evaluate --------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["tensor", "tuple", "object", "dict"])
def test_evaluate_accuracy_and_loss_against_hand_computed(wrap):
    torch.manual_seed(0)
    logits = torch.randn(10, 4)
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    model = Fixed(logits, wrap)
    data = [(torch.arange(0, 6), target[:6]), (torch.arange(6, 10), target[6:])]
    r = tc.evaluate(model, data, topk=(1, 2))
    assert r["samples"] == 10 and r["batches"] == 2
    assert r["accuracy"] == pytest.approx((logits.argmax(1) == target).float().mean().item())
    top2 = logits.topk(2, dim=1).indices
    assert r["top2_accuracy"] == pytest.approx(
        (top2 == target[:, None]).any(1).float().mean().item()
    )
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert model.grad_enabled == [False, False]  # under no_grad


def test_evaluate_restores_every_submodule_mode():
    model = nn.Sequential(
        nn.Linear(5, 8), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 4))
    )
    model.train()
    model[2][0].eval()
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = {n: m.training for n, m in model.named_modules()}
    tc.evaluate(model, tiny_data())
    assert seen and not any(seen)  # ran in eval mode
    assert {n: m.training for n, m in model.named_modules()} == before
    # also after a failure
    with pytest.raises(DataError):
        tc.evaluate(model, [(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))])
    assert {n: m.training for n, m in model.named_modules()} == before


def test_evaluate_token_level_ignore_index_and_dict_batches():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)  # (N, T, C): class-last, as in Hugging Face

    class Tok(nn.Module):
        def forward(self, input_ids, attention_mask=None):
            assert attention_mask is not None
            return {"logits": logits[: input_ids.shape[0]]}

    labels = torch.randint(0, 7, (2, 5))
    labels[0, :2] = -100
    batch = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "attention_mask": torch.ones(2, 5),
        "labels": labels,
    }
    r = tc.evaluate(Tok(), [batch])
    keep = labels != -100
    acc = (logits.argmax(-1) == labels)[keep].float().mean().item()
    assert r["accuracy"] == pytest.approx(acc)
    assert r["loss"] == pytest.approx(
        F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1)).item(), rel=1e-6
    )
    assert r["samples"] == 2


def test_evaluate_class_second_layout_and_soft_targets():
    torch.manual_seed(0)
    seg = torch.randn(2, 3, 4, 4)  # (N, C, H, W) with (N, H, W) labels
    labels = torch.randint(0, 3, (2, 4, 4))

    class Seg(nn.Module):
        def forward(self, x):
            return seg

    r = tc.evaluate(Seg(), [(torch.zeros(2), labels)])
    assert r["accuracy"] == pytest.approx((seg.argmax(1) == labels).float().mean().item())
    assert r["loss"] == pytest.approx(F.cross_entropy(seg, labels).item(), rel=1e-6)
    soft = torch.softmax(torch.randn(10, 4), 1)
    logits = torch.randn(10, 4)
    r = tc.evaluate(Fixed(logits), [(torch.arange(10), soft)])
    assert r["accuracy"] == pytest.approx(
        (logits.argmax(1) == soft.argmax(1)).float().mean().item()
    )
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, soft).item(), rel=1e-6)


def test_evaluate_custom_loss_is_sample_weighted_and_regression_has_no_accuracy():
    model = nn.Linear(3, 2)
    data = [(torch.randn(6, 3), torch.randn(6, 2)), (torch.randn(2, 3), torch.randn(2, 2))]
    r = tc.evaluate(model, data, loss_fn=nn.MSELoss())
    with torch.no_grad():
        per = [F.mse_loss(model(x), y, reduction="none").mean(1) for x, y in data]
    assert r["loss"] == pytest.approx(torch.cat(per).mean().item(), rel=1e-6)
    assert r["accuracy"] is None
    r2 = tc.evaluate(model, data, loss_fn=nn.MSELoss(reduction="none"))
    assert r2["loss"] == pytest.approx(
        torch.cat([F.mse_loss(model(x), y, reduction="none").flatten() for x, y in data])
        .mean()
        .item(),
        rel=1e-5,
    )


def test_evaluate_max_batches_and_device_follow():
    model = mlp()
    r = tc.evaluate(model, tiny_data(), max_batches=2)
    assert r["batches"] == 2 and r["samples"] == 16
    r = tc.evaluate(model, tiny_data(), device="cpu")
    assert r["samples"] == 40


def test_evaluate_bad_input():
    model = mlp()
    with pytest.raises(DataError, match="yielded no batch"):
        tc.evaluate(model, [])
    with pytest.raises(DataError, match="Batch 1 of data does not fit"):
        tc.evaluate(model, [tiny_data()[0], (torch.randn(8, 9), torch.zeros(8, dtype=torch.long))])
    with pytest.raises(DataError, match="has no target"):
        tc.evaluate(model, [torch.randn(4, 5)])
    with pytest.raises(DataError, match="cannot take the cross-entropy"):
        tc.evaluate(model, [(torch.randn(4, 5), torch.zeros(4, 3, dtype=torch.long))])

    class Hidden(nn.Module):
        def forward(self, x):
            return {"hidden": x}

    with pytest.raises(DataError, match="holds no logits"):
        tc.evaluate(Hidden(), [(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(ConfigError):
        tc.evaluate(model, tiny_data(), max_batches=0)
    with pytest.raises(ConfigError):
        tc.evaluate(model, tiny_data(), topk=(0,))
    with pytest.raises(ConfigError):
        tc.evaluate(model, tiny_data(), loss_fn="mse")


def test_extract_logits_forms():
    t = torch.zeros(2, 3)
    assert extract_logits(t) is t
    assert extract_logits([(t, 1)]) is t
    assert extract_logits({"logits": t}) is t
    assert extract_logits({"x": t}) is None
    assert extract_logits("text") is None


# --- finetune: a real run on digits --------------------------------------------------------------


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


# --- finetune: the loop's contract -----------------------------------------------------------------


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


class Recorder(Callback):
    def __init__(self):
        self.events: list[tuple[str, int]] = []
        self.lrs: list[float] = []
        self.training: list[bool] = []

    def on_train_begin(self, s):
        self.events.append(("train_begin", s.step))

    def on_step_begin(self, s):
        self.events.append(("step_begin", s.step))
        self.lrs.append(s.lr)
        self.training.append(s.model.training)

    def on_after_backward(self, s):
        assert all(p.grad is not None for p in s.model.parameters())
        self.events.append(("after_backward", s.step))

    def on_step_end(self, s):
        self.events.append(("step_end", s.step))

    def on_epoch_end(self, s):
        self.events.append(("epoch_end", s.step))

    def on_train_end(self, s):
        self.events.append(("train_end", s.step))


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


def test_regularizer_is_added_to_the_loss_and_the_gradient():
    data = tiny_data(n=8)
    c = 0.3

    def reg(m):
        return c * m[0].weight.sum()

    seen = []
    cb = LambdaCallback(on_step_end=lambda s: seen.append(dict(s.losses, total=s.loss)))
    a, b = mlp(), mlp()
    common = dict(
        epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, scheduler="constant", progress=False
    )
    tc.finetune(a, data, **common)
    tc.finetune(b, data, regularizer=[reg], callbacks=[cb], **common)
    # d(reg)/dW = c everywhere, so one SGD step moves every weight of layer 0 by -lr*c more
    assert torch.allclose(
        b[0].weight - a[0].weight, torch.full_like(a[0].weight, -0.1 * c), atol=1e-6
    )
    assert torch.allclose(b[2].weight, a[2].weight)
    assert seen[0]["total"] == pytest.approx(seen[0]["task"] + seen[0]["regularizer"], rel=1e-6)
    with torch.no_grad():
        assert seen[0]["regularizer"] == pytest.approx(c * mlp()[0].weight.sum().item(), rel=1e-5)


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


def test_modes_restored_and_new_submodules_inherit():
    model = mlp()
    model.eval()
    model[1].train()

    def swap(s):
        if s.step == 1:  # a callback that replaces a layer during training (as pruning does)
            s.model[1] = nn.Sequential(nn.ReLU())

    tc.finetune(model, tiny_data(), callbacks=[LambdaCallback(on_step_end=swap)], progress=False)
    assert not model.training and not model[0].training and not model[2].training
    assert not model[1].training  # new module: takes its parent's (restored) mode
    m2 = mlp()
    m2.eval()
    m2[1].train()
    tc.finetune(m2, tiny_data(), progress=False)
    assert not m2.training and m2[1].training


def test_teacher_runs_in_eval_without_grad_and_is_restored():
    teacher = nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5))
    teacher.train()
    got = []

    def distill(s_out, t_out, target):
        got.append((t_out.requires_grad, teacher.training, s_out.requires_grad))
        return F.kl_div(F.log_softmax(s_out, 1), F.softmax(t_out, 1), reduction="batchmean")

    student = mlp()
    seen = []
    tc.finetune(
        student,
        tiny_data(),
        teacher=teacher,
        distill_loss=distill,
        callbacks=[LambdaCallback(on_step_end=lambda s: seen.append(sorted(s.losses)))],
        progress=False,
    )
    assert got and all(g == (False, False, True) for g in got)
    assert teacher.training  # restored
    assert seen[0] == ["distill"]
    tc.finetune(
        mlp(),
        tiny_data(),
        teacher=teacher,
        distill_loss=distill,
        loss_fn=nn.CrossEntropyLoss(),
        callbacks=[LambdaCallback(on_step_end=lambda s: seen.append(sorted(s.losses)))],
        progress=False,
    )
    assert seen[-1] == ["distill", "task"]
    with pytest.raises(ConfigError, match="needs distill_loss"):
        tc.finetune(mlp(), tiny_data(), teacher=teacher)
    with pytest.raises(ConfigError, match="needs teacher"):
        tc.finetune(mlp(), tiny_data(), distill_loss=distill)


def test_grad_clip_and_stop_training():
    norms = []

    def check(s):
        total = torch.norm(torch.stack([p.grad.norm() for p in s.model.parameters()]))
        norms.append((s.grad_norm, float(total)))
        if s.step == 2:
            s.stop_training = True

    model = mlp()
    tc.finetune(
        model,
        tiny_data(),
        lr=0.5,
        grad_clip=0.01,
        callbacks=[LambdaCallback(on_after_backward=lambda s: None, on_step_end=check)],
        progress=False,
    )
    assert len(norms) == 2  # stopped after step 2
    assert all(pre > 0.01 and post <= 0.01 + 1e-6 for pre, post in norms)


def test_nan_loss_is_a_numerical_error():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x[:, :4] * self.w * float("nan")

    with pytest.raises(NumericalError, match="at step 0"):
        tc.finetune(Bad(), tiny_data(), progress=False)


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


@pytest.mark.hf
def test_hf_model_dict_batches_and_model_loss():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 50, (12, 6))
    labels = ids[:, 0] % 3
    data = [
        {
            "input_ids": ids[i : i + 4],
            "attention_mask": torch.ones(4, 6, dtype=torch.long),
            "labels": labels[i : i + 4],
        }
        for i in range(0, 12, 4)
    ]
    r = tc.evaluate(model, data)
    with torch.no_grad():
        logits = torch.cat(
            [
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                for b in data
            ]
        )
    assert r["accuracy"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    r_model = tc.evaluate(model, data, loss_fn="model")
    assert r_model["loss"] == pytest.approx(r["loss"], rel=1e-5) and r_model["accuracy"] is None
    tc.finetune(model, data, epochs=15, lr=0.05, loss_fn="model", progress=False)
    assert not model.training
    assert tc.evaluate(model, data)["loss"] < r["loss"]


# --- DDP under torchrun --------------------------------------------------------------------------


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
        str(ROOT / "tests" / "_ddp_worker.py"),
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
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from _ddp_worker import mlp as worker_mlp
    finally:
        sys.path.pop(0)
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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_the_model_and_matches_cpu():
    model = mlp().cuda()
    tc.finetune(model, tiny_data(), progress=False)  # CPU batches go to the model's device
    assert next(model.parameters()).is_cuda
    on_gpu = tc.evaluate(model, tiny_data())
    on_cpu = tc.evaluate(copy.deepcopy(model).cpu(), tiny_data())
    assert on_gpu["accuracy"] == on_cpu["accuracy"]
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-4)
    m = mlp()
    tc.evaluate(m, tiny_data(), device="cuda")  # device= moves the model
    assert next(m.parameters()).is_cuda
