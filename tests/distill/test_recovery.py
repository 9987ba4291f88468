"""Recovery by distillation: the float model teaches its (channel-)pruned, factorized, QAT self."""

from __future__ import annotations

import copy

import pytest
import torch

import torchcompress as tc
from torchcompress.distill import Distiller, DistillTerm
from torchcompress.lowrank import LowRankModule
from torchcompress.quant import IntSpec, QuantConfig

from .conftest import kl_to_teacher, state

W2A2 = QuantConfig(
    weight=IntSpec(2, granularity="channel"),
    activation=IntSpec(2, symmetric=False, signed=False),
)


def recover(model, teacher, train, hint: str):
    """One epoch of KD + a hint on ``hint``; returns the KL to the teacher before and after."""
    d = Distiller([("kd", 1.0), DistillTerm("hint", 1.0, student=hint)])
    return tc.finetune(model, train, epochs=1, lr=0.02, teacher=teacher, distill=d, progress=False)


def check(model, teacher, digits, hint: str, factor: float = 0.8) -> None:
    train, test = digits
    before_teacher = state(teacher)
    before = kl_to_teacher(model, teacher, test)
    recover(model, teacher, train, hint)
    after = kl_to_teacher(model, teacher, test)
    assert after < factor * before, (before, after)
    for k, v in state(teacher).items():  # the teacher is never updated
        assert torch.equal(v, before_teacher[k]), k


def test_recovery_after_unstructured_pruning(digits, teacher):
    model = tc.prune(copy.deepcopy(teacher), tc.PruneConfig(sparsity=0.7))
    check(model, teacher, digits, "block")
    rep = tc.sparsity_report(model)
    assert rep.sparsity == pytest.approx(0.7, abs=0.01)  # pruned weights stay zero


def test_recovery_after_factorization(digits, teacher):
    model = tc.factorize(copy.deepcopy(teacher), tc.LowRankConfig(rank="params_ratio", value=0.5))
    n_lowrank = sum(isinstance(m, LowRankModule) for m in model.modules())
    assert n_lowrank > 0
    check(model, teacher, digits, "block")
    assert sum(isinstance(m, LowRankModule) for m in model.modules()) == n_lowrank


def test_recovery_after_qat(digits, teacher):
    train, _ = digits
    calib = [x for (x, _), _ in zip(train, range(4))]
    model = tc.prepare_qat(copy.deepcopy(teacher), W2A2, method="ste", calib_data=calib)
    kinds = sorted({type(m).__name__ for m in model.modules()})
    # a QAT model runs as a graph of its layers: the hint names a layer ('block.2', the ReLU)
    check(model, teacher, digits, "block.2")
    assert sorted({type(m).__name__ for m in model.modules()}) == kinds
    tc.convert(model)  # still a QAT model that converts


def test_recovery_after_channel_pruning(digits, teacher):
    train, _ = digits
    x, _ = next(iter(train))
    model = tc.prune_channels(copy.deepcopy(teacher), x, 0.5)
    widths = (model.block[0].out_channels, teacher.block[0].out_channels)
    assert widths[0] < widths[1]  # narrower than its teacher: the hint goes through an adapter
    check(model, teacher, digits, "block")
    assert model.block[0].out_channels == widths[0]  # still the pruned width
    assert model.fc.in_features == widths[0]
