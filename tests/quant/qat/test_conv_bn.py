"""Convolutions training with their BatchNorm folded."""

from __future__ import annotations

import copy

import torch
from torch import nn

import torchcompress as tc
from torchcompress.quant import (
    IntSpec,
    QuantConfig,
    QuantConvBn2d,
)
from torchcompress.quant import qat as Q

from ._common import W4A4, Net, calib_of, warm


def test_folded_bn_training_matches_unfolded_reference(data):
    train, _ = data
    batches = [b for b, _ in zip(train, range(6))]
    ref = warm(nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU()), batches[0][0])
    folded = copy.deepcopy(ref)
    # 16-bit weights, float activations: the folded layer is then BatchNorm arithmetic up to rounding
    cfg = QuantConfig(weight=IntSpec(16, granularity="channel"), activation=None)
    tc.prepare_qat(folded, cfg, method="ste")
    assert isinstance(folded[0], QuantConvBn2d) and type(folded[1]) is nn.Identity
    for m in (ref, folded):
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        for x, _ in batches:
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
        m.eval()
    x = batches[0][0]
    with torch.no_grad():
        assert torch.allclose(folded(x), ref(x), atol=2e-3)
    assert torch.allclose(folded[0].bn.running_var, ref[1].running_var, rtol=1e-3)


def test_frozen_bn_stats_training_forward_is_the_converted_layer(data):
    train, _ = data
    x = calib_of(train, 1)[0]
    model = warm(Net(), x)
    tc.prepare_qat(model, W4A4, method="lsq", calib_data=[x])
    model.train()
    mean0 = model.conv1.bn.running_mean.clone()
    with torch.no_grad():
        model(x)
    assert not torch.equal(model.conv1.bn.running_mean, mean0)  # batch statistics update them
    Q.freeze_bn_stats(model)
    mean1 = model.conv1.bn.running_mean.clone()
    with torch.no_grad():
        y_train = model(x)
        assert torch.equal(model.conv1.bn.running_mean, mean1)
        y_eval = model.eval()(x)
        y_int = tc.convert(copy.deepcopy(model))(x)
    assert torch.allclose(y_train, y_eval, atol=1e-6)
    assert torch.allclose(y_int, y_eval, atol=1e-4)
    Q.unfreeze_bn_stats(model)
    assert not bool(model.conv1.stats_frozen)
