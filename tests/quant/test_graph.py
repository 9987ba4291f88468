"""quant.graph: quantization planned on the traced graph (groups, points, the bound graph)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.quant import functional as QF
from torchcompress.quant.graph import (
    GRAPH_ATTR,
    QuantGraph,
    container_of,
    find_groups,
    plan_points,
    prepare_graph,
    strip_identities,
)
from torchcompress.quant.ops import trace_model

from .test_ptq import TinyResNet, Untraceable, _randomize_bn


def test_graph_mode_plans_integer_activations() -> None:
    m = TinyResNet().eval()
    _randomize_bn(m)
    x = torch.randn(4, 3, 8, 8)
    ref = m(x)
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), [torch.randn(4, 3, 8, 8) for _ in range(3)])
    names = sorted(q.quant_graph.quantizers.keys())
    # one input quantizer at the graph input; outputs after stem+relu, conv1+relu and
    # conv2+add+relu (the block output feeds the max-pool, which passes integers to the head)
    assert names == ["input_stem", "output_block_conv1", "output_block_conv2", "output_stem"]
    assert isinstance(q.block.bn1, nn.Identity)  # folded
    assert q.quant_graph.quantizers["output_stem"].observer.__class__.__name__ == "MinMaxObserver"
    # the output quantizer after a ReLU has a zero point of 0 (the ReLU is exact on integers)
    assert int(q.quant_graph.quantizers["output_stem"].zero_point) == 0
    y = q(x)
    assert (y - ref).abs().max() < 0.1 * ref.abs().max()


def test_graph_mode_matches_manual_simulation() -> None:
    m = TinyResNet().eval()
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), [torch.randn(4, 3, 8, 8) for _ in range(2)])
    qs = q.quant_graph.quantizers
    x = torch.randn(2, 3, 8, 8)

    def fq(name: str, t: torch.Tensor) -> torch.Tensor:
        f = qs[name]
        return QF.fake_quantize(t, f.scale, f.zero_point, f.quant_min, f.quant_max)

    h = fq("output_stem", F.relu(q.stem._op(fq("input_stem", x), q.stem.quantized_weight())))
    b = q.block
    o = fq("output_block_conv1", F.relu(b.conv1._op(h, b.conv1.quantized_weight())))
    o = fq("output_block_conv2", F.relu(b.conv2._op(o, b.conv2.quantized_weight()) + h))
    o = F.max_pool2d(o, 2)
    ref = q.head._op(torch.flatten(o, 1), q.head.quantized_weight())
    # the head's input is already on the grid of output_block_conv2: no second quantizer
    assert torch.allclose(q(x), ref, atol=1e-5)


def test_graph_mode_keeps_untraceable_blocks_opaque() -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Untraceable()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.inner(x)))

    m = Outer().eval()
    q = tc.quantize(m, tc.QuantConfig(), [torch.randn(4, 8) for _ in range(2)])
    assert q.quant_graph.leaf_names == ["inner"]
    assert q.inner.fc1.input_quant is not None  # layer by layer inside the opaque block
    assert "input_fc" in q.quant_graph.quantizers
    c = tc.convert(copy.deepcopy(q))
    x = torch.randn(3, 8)
    assert torch.allclose(c(x), q(x), atol=1e-3)


def _traced(m: nn.Module) -> tuple[torch.fx.Graph, dict[str, nn.Module]]:
    traced = trace_model(m)
    assert traced is not None
    graph, _ = traced
    modules = dict(m.named_modules())
    strip_identities(graph, modules)
    return graph, modules


def test_groups_fuse_residual_and_relu_into_conv2d_only() -> None:
    m = tc.fuse(TinyResNet().eval())  # BatchNorms become identities, stripped from the graph
    m = tc.quantize(m, tc.QuantConfig(mode="dynamic"))  # quantized layers, no graph bound
    graph, modules = _traced(m)
    targets = {"stem", "block.conv1", "block.conv2", "head"}
    groups = {str(g.layer.target): g for g in find_groups(graph, modules, targets).values()}
    assert set(groups) == targets
    assert groups["stem"].act_kind == "relu" and groups["stem"].add is None
    assert groups["block.conv2"].add is not None and groups["block.conv2"].act_kind == "relu"
    assert groups["head"].act is None and groups["head"].add is None
    unfused = find_groups(graph, modules, targets, fuse_residual=False)
    assert [g.kind for g in unfused.values()].count("add") == 1
    assert all(g.add is None for g in unfused.values() if g.kind == "layer")


def test_points_are_where_the_integer_model_quantizes() -> None:
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2))
    graph, modules = _traced(tc.quantize(m, tc.QuantConfig(mode="dynamic")))
    points = plan_points(graph, modules, {"0", "2", "4"})
    # the Sigmoid runs in float: the last layer quantizes its own input; ReLU passes integers
    assert [(p.name, p.where, p.layer) for p in points] == [
        ("input__0", "input", "0"),
        ("output__0", "output", "0"),
        ("input__4", "input", "4"),
    ]


def test_prepare_and_bind() -> None:
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    plan = prepare_graph(m, ["0", "2"])
    assert plan is not None and plan.visible == {"0", "2"} and plan.leaf_names == []
    assert prepare_graph(Untraceable(), ["fc1"]) is None  # the top level does not trace
    q = tc.quantize(m, tc.QuantConfig(), [torch.randn(3, 4)])
    c = container_of(q)
    assert isinstance(c, QuantGraph) and getattr(q, GRAPH_ATTR) is c and not c.converted
    assert "quant_graph.quantizers.input__0" in c.code()
    assert q.forward.__self__ is q and "forward" in q.__dict__  # bound on the instance only
    assert "fake-quant graph, 2 activation quantizers" in repr(c)
