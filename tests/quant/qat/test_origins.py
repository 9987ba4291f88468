"""Which quantized activations are ReLU outputs (PACT), on the traced graph and in layer mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.quant.graph import prepare_graph
from torchcompress.quant.qat.origins import layer_origins, point_origins, value_origin
from torchcompress.quant.tracer import trace_model


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 2)
        self.d = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x)).reshape(x.shape[0], 8)  # a reshape keeps a ReLU output
        s = torch.sigmoid(self.b(h))
        return self.c(h) + self.d(s)


def test_value_origin_follows_ops_that_keep_a_relu_output() -> None:
    m = Mixed()
    graph, _ = trace_model(m)  # type: ignore[misc]
    modules = dict(m.named_modules())
    by_name = {str(n.target): n for n in graph.nodes if n.op == "call_module"}
    assert value_origin(by_name["a"].args[0], modules) == "input"
    assert value_origin(by_name["b"].args[0], modules) == "relu"
    assert value_origin(by_name["c"].args[0], modules) == "relu"
    assert value_origin(by_name["d"].args[0], modules) == "other"


def test_point_and_layer_origins_agree() -> None:
    m = Mixed().eval()
    names = ["a", "b", "c", "d"]
    plan = prepare_graph(m, names)
    assert plan is not None
    q = tc.quantize(m, tc.QuantConfig(mode="dynamic"))  # quantized layers for the planner
    points = point_origins(plan, q, fuse_residual=True)
    assert points["input_a"] == ("input", "the input of 'a'")
    assert points["input_d"][0] == "other"
    layers = layer_origins(Mixed().eval(), names, [torch.randn(3, 4)])
    assert layers == {"a": "input", "b": "relu", "c": "relu", "d": "other"}
