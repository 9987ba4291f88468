"""The training loop: regularizers, modes, distillation, clipping, stopping, NaN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, NumericalError
from torchcompress.train import LambdaCallback

from .conftest import mlp, tiny_data


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
