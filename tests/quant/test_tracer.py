"""quant.tracer: opaque submodules, the op taxonomy on fx nodes, the ReLU recorder."""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.quant.tracer import (
    ReluTracker,
    act_kind,
    is_add,
    is_eval_identity,
    is_inplace,
    keeps_relu,
    non_tensor,
    pass_kind,
    trace_model,
)

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
    assert pass_kind(nodes["view"], modules) == "same" and keeps_relu(nodes["view"], modules)
    assert is_eval_identity(nodes["drop"], modules) and pass_kind(nodes["drop"], modules) == "same"
    assert pass_kind(nodes["pad"], modules) == "pad"
    assert pass_kind(nodes["sigmoid"], modules) is None and not keeps_relu(
        nodes["sigmoid"], modules
    )
    assert nodes["inner"].op == "call_module"


def test_quantized_layers_are_leaves() -> None:
    q = tc.quantize(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), tc.QuantConfig(mode="dynamic"))
    graph, _ = trace_model(q)  # type: ignore[misc]
    calls = [str(n.target) for n in graph.nodes if n.op == "call_module"]
    assert calls == ["0", "1"]  # not traced into: the quantizers do not appear
    assert isinstance(graph, fx.Graph)


def test_relu_tracker_follows_relu_outputs_through_pooling_and_views() -> None:
    tracker = ReluTracker()
    x = torch.randn(2, 3, 4, 4)
    with tracker:
        r = torch.relu(x)
        p = F.max_pool2d(r, 2)
        v = p.flatten(1)
        s = torch.sigmoid(x)
    assert all(id(t) in tracker.relu for t in (r, p, v))
    assert id(s) not in tracker.relu and id(x) not in tracker.relu
