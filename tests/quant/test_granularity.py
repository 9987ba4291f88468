"""quant.granularity: one strategy per way of sharing scales, against hand-computed shapes."""

from __future__ import annotations

import pytest
import torch

from torchcompress.errors import ConfigError, ShapeError
from torchcompress.quant import functional as QF
from torchcompress.quant.granularity import GRANULARITY, granularity


def test_registry() -> None:
    assert GRANULARITY.names() == ["tensor", "channel", "group", "token"]
    with pytest.raises(ConfigError, match="granularity"):
        granularity("row")


def test_weight_shapes_and_views() -> None:
    w = torch.arange(24.0).reshape(4, 6)
    cases = {
        "tensor": ((1,), (1, 24), 24),
        "channel": ((4,), (4, 6), 6),
        "group": ((4, 3), (12, 2), 2),
    }
    for name, (qshape, view, per_scale) in cases.items():
        g = granularity(name)
        assert g.qparam_shape(4, 6, 2) == qshape
        assert tuple(g.to_groups(w, 2).shape) == view
        assert g.elements_per_scale(4, 6, 2) == per_scale
        s = torch.ones(qshape)
        assert g.expand(s).dim() == g.grouped(w, 2).dim()  # broadcastable against the grouped view
    with pytest.raises(ShapeError, match="divide"):
        granularity("group").qparam_shape(4, 6, 4)
    with pytest.raises(ShapeError):
        granularity("token").qparam_shape(4, 6)
    assert not granularity("token").weights and granularity("group").grouped_inputs


def test_activation_support() -> None:
    g = {n: granularity(n) for n in GRANULARITY}
    assert [n for n in g if g[n].static_activations] == ["tensor"]
    assert [n for n in g if g[n].dynamic_activations] == ["tensor", "token"]


def test_dynamic_ranges() -> None:
    x = torch.tensor([[-1.0, 3.0], [2.0, -6.0]])
    lo, hi = granularity("tensor").dynamic_range(x, symmetric_signed=True)
    assert lo.tolist() == [-6.0] and hi.tolist() == [3.0]
    lo, hi = granularity("token").dynamic_range(x, symmetric_signed=False)
    assert lo.tolist() == [[-1.0], [-6.0]] and hi.tolist() == [[3.0], [2.0]]
    lo, hi = granularity("token").dynamic_range(x, symmetric_signed=True)
    assert lo.tolist() == [[-3.0], [-6.0]] and hi.tolist() == [[3.0], [6.0]]
    # functional's dynamic quantizer parameters are these ranges through choose_qparams
    s, z = QF.dynamic_qparams(x, "token", -128, 127, symmetric=True)
    assert torch.allclose(s.reshape(-1), torch.tensor([3.0, 6.0]) / 127)
    assert torch.equal(z, torch.zeros_like(z))


def test_short_descriptions() -> None:
    assert granularity("channel").short() == "per-channel"
    assert granularity("group").short(32) == "group 32"
