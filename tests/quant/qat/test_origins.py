"""Which quantized activations are ReLU outputs (PACT), on the traced graph and in layer mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.quant.graph import prepare_graph
from torchcompress.quant.ops import trace_model
from torchcompress.quant.qat.origins import ReluOrigins, layer_origins, point_origins, value_origin
from torchcompress.tracing import Recorder


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


class Pooled(nn.Module):
    """A ReLU's output through max pooling and a view; a sigmoid's is not one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 2), nn.Linear(16, 2), nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu(x)
        p = F.max_pool2d(r, 2)
        v = p.flatten(1)
        s = torch.sigmoid(x).flatten(1)
        return self.fc1(v) + self.fc2(s[:, :16]) + self.fc3(x.flatten(1))


def test_relu_origins_listener_follows_relu_outputs_through_pooling_and_views() -> None:
    """The Recorder listener that replaced quant's own TorchFunctionMode."""
    m = Pooled()
    rec = Recorder(m)
    listener = ReluOrigins(rec, ["fc1", "fc2", "fc3"])
    rec.listeners.append(listener)
    with rec:
        m(torch.randn(2, 3, 4, 4))
    assert listener.origins == {"fc1": "relu", "fc2": "other", "fc3": "other"}
    assert layer_origins(Pooled(), ["fc1", "fc2", "fc3"], [torch.randn(2, 3, 4, 4)]) == {
        "fc1": "relu",
        "fc2": "other",
        "fc3": "other",
    }
