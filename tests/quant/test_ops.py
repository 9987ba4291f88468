"""quant.ops: opaque submodules, the shared op taxonomy on fx nodes as the integer graph reads it."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.quant.ops import (
    NO_INT_KERNEL,
    act_kind,
    is_add,
    is_eval_identity,
    is_inplace,
    non_tensor,
    pass_kind,
    trace_model,
)
from torchcompress.tracing import INT_EXACT, OPS, RANGE_PRESERVING

from .test_ptq import Untraceable


class Ops(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu6 = nn.ReLU6()
        self.drop = nn.Dropout(0.1)
        self.inner = Untraceable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(x, inplace=True)
        b = self.relu6(a) + x
        c = self.drop(b.view(b.shape[0], -1))
        d = F.pad(c, (1, 1))
        return torch.sigmoid(self.inner(d[:, :8]))


def test_opaque_submodules_and_taxonomy() -> None:
    m = Ops()
    traced = trace_model(m)
    assert traced is not None
    graph, leaves = traced
    assert leaves == ["inner"]  # does not trace: kept as one call
    modules = dict(m.named_modules())
    nodes = {n.name: n for n in graph.nodes}
    assert act_kind(nodes["relu"], modules) == "relu" and is_inplace(nodes["relu"], modules)
    assert act_kind(nodes["relu6"], modules) == "relu6"
    assert is_add(nodes["add"]) and not is_add(nodes["relu"])
    assert non_tensor(nodes["getattr_1"])  # b.shape
    assert pass_kind(nodes["view"], modules) == "same"
    assert OPS.node_is(nodes["view"], RANGE_PRESERVING, modules)  # keeps a ReLU output
    assert is_eval_identity(nodes["drop"], modules) and pass_kind(nodes["drop"], modules) == "same"
    assert pass_kind(nodes["pad"], modules) == "pad"
    assert pass_kind(nodes["sigmoid"], modules) is None
    assert not OPS.node_is(nodes["sigmoid"], RANGE_PRESERVING, modules)
    assert nodes["inner"].op == "call_module"


def test_quantized_layers_are_leaves() -> None:
    q = tc.quantize(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), tc.QuantConfig(mode="dynamic"))
    graph, _ = trace_model(q)  # type: ignore[misc]
    calls = [str(n.target) for n in graph.nodes if n.op == "call_module"]
    assert calls == ["0", "1"]  # not traced into: the quantizers do not appear
    assert isinstance(graph, fx.Graph)


class Pools(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p1, self.a1 = nn.MaxPool1d(2), nn.AdaptiveMaxPool1d(3)
        self.p2, self.a2 = nn.MaxPool2d(2), nn.AdaptiveMaxPool2d(2)
        self.h6, self.h3 = nn.Hardtanh(0.0, 6.0), nn.Hardtanh(0.0, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a1(self.p1(F.max_pool1d(x, 1))).unsqueeze(1)
        y = self.a2(self.p2(F.max_pool2d(y, 1)))
        y = F.adaptive_max_pool2d(y, 1) + F.hardtanh(y, 0.0, 6.0) + F.hardtanh(y, 0.0, 2.0)
        return self.h3(self.h6(y)) + F.relu6(y)


def test_integer_pass_through_needs_a_uint8_kernel() -> None:
    """Max pooling over one dimension and adaptive max pooling are exact on integers but torch has
    no uint8 kernel for them: the integer graph runs them in float."""
    m = Pools()
    graph, _ = trace_model(m)  # type: ignore[misc]
    modules = dict(m.named_modules())
    kinds = {n.name: pass_kind(n, modules) for n in graph.nodes}
    exact = {n.name for n in graph.nodes if OPS.node_is(n, INT_EXACT, modules)}
    no_kernel = {n.name for n in graph.nodes if OPS.node_is(n, NO_INT_KERNEL, modules)}
    assert no_kernel == {"max_pool1d", "p1", "a1", "a2", "adaptive_max_pool2d"}
    assert no_kernel <= exact
    assert all(kinds[n] is None for n in no_kernel)
    assert kinds["max_pool2d"] == kinds["p2"] == kinds["unsqueeze"] == "same"
    # and each of them really fails on uint8 here (if torch gains a kernel, drop it from the list)
    u = torch.randint(0, 255, (2, 3, 8), dtype=torch.uint8)
    for fn in (lambda: F.max_pool1d(u, 2), lambda: F.adaptive_max_pool2d(u.unsqueeze(0), 2)):
        with pytest.raises(RuntimeError, match="not implemented for 'Byte'"):
            fn()


def test_relu6_is_a_clip_at_exactly_six() -> None:
    m = Pools()
    graph, _ = trace_model(m)  # type: ignore[misc]
    modules = dict(m.named_modules())
    acts = {n.name: act_kind(n, modules) for n in graph.nodes}
    assert acts["h6"] == acts["hardtanh"] == acts["relu6"] == "relu6"
    assert acts["h3"] is None and acts["hardtanh_1"] is None  # clips at 3 and 2: run in float
