"""Freezing observers and BatchNorm statistics, PACT's regularizer, requantize."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError
from torchcompress.quant import (
    IntSpec,
    PACTQuantize,
    QuantConfig,
    STEQuantize,
)
from torchcompress.quant import qat as Q

from ._common import W4A4, Net, calib_of, warm


def test_pact_alpha_learns_and_regularizer(data):
    train, _ = data
    model = warm(Net(), calib_of(train, 1)[0])
    tc.prepare_qat(model, W4A4, method="pact", calib_data=calib_of(train))
    pacts = [m for m in model.modules() if isinstance(m, PACTQuantize)]
    assert len(pacts) >= 2
    before = [m.alpha.item() for m in pacts]
    reg = Q.pact_regularizer(0.01)
    assert reg(model).item() == pytest.approx(0.005 * sum(a * a for a in before), rel=1e-5)
    tc.finetune(model, train, steps=15, lr=0.05, regularizer=reg, progress=False)
    after = [m.alpha.item() for m in pacts]
    assert any(abs(a - b) > 1e-4 for a, b in zip(after, before))


def test_freeze_callbacks(data):
    train, _ = data
    model = warm(Net(), calib_of(train, 1)[0])
    tc.prepare_qat(model, W4A4, method="ste")
    state: dict[str, torch.Tensor] = {}

    def snap(s):
        if s.step == 3:
            state["mean"] = s.model.conv1.bn.running_mean.clone()
            state["scale"] = s.model.quant_graph.quantizers["output_conv1"].scale.clone()

    tc.finetune(
        model,
        train,
        steps=6,
        progress=False,
        callbacks=[
            Q.FreezeBNStats(after_steps=3),
            Q.FreezeObservers(after_steps=3),
            tc.train.LambdaCallback(on_step_end=snap),
        ],
    )
    assert torch.equal(model.conv1.bn.running_mean, state["mean"])
    assert torch.equal(model.quant_graph.quantizers["output_conv1"].scale, state["scale"])


def test_ste_ranges_follow_training_and_freeze():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    tc.prepare_qat(model, method="ste")  # no calibration data: the first training step sets ranges
    fq = model.quant_graph.quantizers["input__0"]
    assert isinstance(fq, STEQuantize) and fq.observer_name == "moving_minmax"
    model.train()
    model(torch.full((2, 4), 1.0))
    s1 = float(fq.scale)
    model(torch.full((2, 4), 10.0))
    s2 = float(fq.scale)
    assert s2 > s1  # moving average towards the new range
    Q.freeze_observers(model)
    model(torch.full((2, 4), 100.0))
    assert float(fq.scale) == s2
    model.eval()
    Q.unfreeze_observers(model)
    model(torch.full((2, 4), 100.0))  # eval: activations never observed
    assert float(fq.scale) == s2


def test_requantize_keeps_learned_state(data):
    train, _ = data
    x = calib_of(train, 1)[0]
    cfg8 = QuantConfig(weight=IntSpec(8, granularity="channel"), reduce_range="none")
    lsq = tc.prepare_qat(warm(Net(), x), cfg8, method="lsq", calib_data=[x])
    wq = lsq.fc.weight_quant
    s8 = wq.scale.detach().clone()
    mean = lsq.conv1.bn.running_mean.clone()
    cfg4 = QuantConfig(
        weight=IntSpec(4, granularity="channel"),
        activation=IntSpec(4, symmetric=False, signed=False),
        reduce_range="none",
    )
    Q.requantize(lsq, cfg4)
    assert wq.spec.bits == 4 and (wq.quant_min, wq.quant_max) == (-8, 7)
    assert torch.allclose(wq.scale.detach(), s8 * 127 / 7)  # same clipping range, coarser steps
    assert torch.equal(lsq.conv1.bn.running_mean, mean)
    tc.finetune(lsq, train, steps=2, progress=False)  # trains on at the new width
    out = tc.convert(lsq.eval())(x)
    assert torch.isfinite(out).all()

    pact = tc.prepare_qat(warm(Net(), x), cfg8, method="pact", calib_data=[x])
    p = next(m for m in pact.modules() if isinstance(m, PACTQuantize))
    alpha = p.alpha.item()
    Q.requantize(pact, cfg4)
    assert p.alpha.item() == alpha and float(p.scale) == pytest.approx(alpha / 15)
    with pytest.raises(ConfigError, match="granularity"):
        Q.requantize(pact, QuantConfig(weight=IntSpec(4), activation=cfg4.activation))
