"""STE, LSQ and PACT quantizers: gradients and initialisation by hand."""

from __future__ import annotations

import math

import pytest
import torch

from torchcompress.quant import (
    IntSpec,
    LSQQuantize,
    PACTQuantize,
)


def test_lsq_step_gradient_matches_hand_computation():
    fq = LSQQuantize(IntSpec(4), role="weight", shape=(1, 4))
    with torch.no_grad():
        fq.scale.fill_(0.1)
    fq.calibrated = True
    x = torch.tensor([[0.14, -0.26, 0.33, -0.95]], requires_grad=True)
    fq(x).sum().backward()
    # inside: round(x/s) - x/s = -0.4, -0.4, -0.3; -9.5 is clipped to qmin = -8
    g = 1 / math.sqrt(4 * 7)
    assert fq.scale.grad.item() == pytest.approx((-0.4 - 0.4 - 0.3 - 8) * g, rel=1e-5)
    assert x.grad.tolist() == [[1.0, 1.0, 1.0, 0.0]]  # straight through, zero where clipped


def test_lsq_gradient_scale_per_channel_and_activation():
    w = LSQQuantize(IntSpec(3, granularity="channel"), role="weight", shape=(2, 3))
    with torch.no_grad():
        w.scale.copy_(torch.tensor([0.5, 0.25]))
    w.calibrated = True
    x = torch.tensor([[0.7, 0.2, -3.0], [0.3, 0.1, 0.05]])
    w(x).sum().backward()
    g = 1 / math.sqrt(3 * 3)  # N = 3 elements per channel, Qp = 3
    row0 = (1 - 1.4) + (0 - 0.4) + (-4)  # -3/0.5 = -6 clipped to -4
    row1 = (1 - 1.2) + (0 - 0.4) + (0 - 0.2)
    assert w.scale.grad.tolist() == pytest.approx([row0 * g, row1 * g], rel=1e-5)

    a = LSQQuantize(IntSpec(2, symmetric=False, signed=False), role="activation")
    with torch.no_grad():
        a.scale.fill_(1.0)
        a.zero_point.fill_(0.0)
    a.calibrated = True
    xa = torch.tensor([[0.4, 1.6], [2.2, 5.0]])  # 2 examples of 2 features; 5.0 is clipped to 3
    a(xa).sum().backward()
    g = 1 / math.sqrt(2 * 3)
    expect = (0 - 0.4) + (2 - 1.6) + (2 - 2.2) + 3
    assert a.scale.grad.item() == pytest.approx(expect * g, rel=1e-5)
    # LSQ+ offset: zero inside the range, -s per clipped element (here one), scaled by g
    assert a.zero_point.grad.item() == pytest.approx(-1.0 * g, rel=1e-5)


def test_lsq_paper_initialisation():
    fq = LSQQuantize(IntSpec(8), role="weight", shape=(1, 4))
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    fq.init_lsq(x)
    assert fq.scale.item() == pytest.approx(2 * 2.5 / math.sqrt(127), rel=1e-6)


def test_pact_alpha_gradient_by_hand():
    fq = PACTQuantize(IntSpec(4, signed=False), alpha=1.5)
    x = torch.tensor([0.5, 1.0, 2.0, 3.0], requires_grad=True)
    y = fq(x)
    assert y.tolist() == pytest.approx([0.5, 1.0, 1.5, 1.5], abs=1e-6)
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert fq.alpha.grad.item() == pytest.approx(3.0 + 4.0)  # d y / d alpha = 1[x >= alpha]
    assert x.grad.tolist() == [1.0, 2.0, 0.0, 0.0]
    assert float(fq.scale) == pytest.approx(1.5 / 15)
