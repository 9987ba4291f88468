"""Graph-level static quantization: activations stay integer between layers.

Calling a quantized convolution per layer, with a quantize before and a dequantize after each one,
spends much of the int8 gain on conversions. Where a model traces with ``torch.fx``, :func:`quantize`
instead plans quantization on the whole graph, the way the integer model will run it:

- BatchNorm after a convolution (or Linear) is folded into it first (:func:`torchcompress.fuse`).
- A *group* is a quantized convolution or Linear, optionally followed by a residual add into it
  (convolutions: oneDNN adds the other operand, itself integer, inside the kernel) and by a ReLU /
  ReLU6; the group's output is quantized once, after the activation, where the integer kernel
  re-quantizes it (:class:`FakeQuantize` nodes are inserted in the graph there).
- Ops that are exact on integers and have a uint8 kernel (ReLU, 2-D/3-D max-pooling, padding with
  zeros, reshapes, slicing, nearest upsampling, dropout in eval, identities; see
  :func:`~torchcompress.quant.ops.pass_kind`) pass integer tensors through.
- Any other op dequantizes its inputs and runs in float; a quantized layer whose input is float
  gets an input quantizer.

So every quantizer of the fake-quant graph sits where the integer graph quantizes, and the
fake-quant model computes what :func:`torchcompress.convert` runs. Parts of the model that do not
trace (data-dependent control flow) are kept as opaque calls (their layers are quantized layer by
layer); a model whose top level does not trace is quantized layer by layer.

The traced graph replaces the model's ``forward`` on the instance (the class is unchanged); the
inserted quantizers live in ``model.quant_graph`` (a :class:`QuantGraph`), which also knows how to
rebuild the graph on a fresh model when :func:`torchcompress.load` loads a saved one.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn

from ..errors import CompressionStateError
from ..layers import Geometry
from .build import integer_ranges, make_activation_quant
from .kernels import KERNELS
from .modules import FakeQuantize, QuantizedModule
from .ops import act_kind, is_add, module_of, non_tensor, pass_kind, trace_model
from .spec import QuantConfig

__all__ = [
    "GRAPH_ATTR",
    "GraphPlan",
    "Group",
    "Point",
    "QuantGraph",
    "container_of",
    "find_groups",
    "fuses_residual",
    "insert_points",
    "plan_points",
    "prepare_graph",
    "strip_identities",
    "strip_points",
    "trace_model",
    "unbind",
]

GRAPH_ATTR = "quant_graph"


def fuses_residual(geometry: Geometry) -> bool:
    """Whether a registered integer kernel adds a residual operand inside the kernel for layers of
    ``geometry`` (:meth:`~torchcompress.quant.int_layer.Kernel.fuses_residual`): graph mode then
    plans the add after such a layer as part of it."""
    return any(KERNELS.get(name).fuses_residual(geometry) for name in KERNELS)


def _is_qop(node: fx.Node, targets: set[str]) -> bool:
    return node.op == "call_module" and str(node.target) in targets


@dataclass
class Group:
    """A quantized layer with the ops fused into its integer kernel."""

    layer: fx.Node
    add: fx.Node | None = None
    other: fx.Node | None = None
    act: fx.Node | None = None
    act_kind: str | None = None
    #: ``"layer"`` (a quantized layer) or ``"add"`` (a residual add of two integer tensors,
    #: re-quantized on its own: ``fuse_residual=False``)
    kind: str = "layer"
    owner: str = ""  # the layer named in messages for an add group

    @property
    def tail(self) -> fx.Node:
        return self.act or self.add or self.layer


def find_groups(
    graph: fx.Graph, modules: dict[str, nn.Module], targets: set[str], fuse_residual: bool = True
) -> dict[fx.Node, Group]:
    """Each quantized layer node's group (layer [+ residual add] [+ ReLU/ReLU6]).

    With ``fuse_residual=False`` residual adds are not fused into the convolution before them:
    each becomes a group of its own (both operands and the sum integer, as onnxruntime's
    ``QLinearAdd``).
    """
    groups: dict[fx.Node, Group] = {}
    for node in graph.nodes:
        if not _is_qop(node, targets):
            continue
        g = Group(node)
        layer = modules.get(str(node.target))
        fuses = isinstance(layer, QuantizedModule) and fuses_residual(layer.geometry)
        users = list(node.users)
        if fuse_residual and fuses and len(users) == 1 and is_add(users[0]):
            add = users[0]
            a, b = add.args
            other = b if a is node else a
            if isinstance(other, fx.Node) and other is not node and not non_tensor(other):
                g.add, g.other = add, other
        tail = g.tail
        users = list(tail.users)
        if len(users) == 1:
            k = act_kind(users[0], modules)
            if k is not None and users[0].args and users[0].args[0] is tail:
                g.act, g.act_kind = users[0], k
        groups[node] = g
    if not fuse_residual:
        tails = {g.tail: g for g in groups.values()}
        for node in graph.nodes:
            if not is_add(node):
                continue
            a, b = node.args
            if (
                not (isinstance(a, fx.Node) and isinstance(b, fx.Node))
                or non_tensor(a)
                or non_tensor(b)
            ):
                continue
            src = tails.get(a) or tails.get(b)
            if src is None or a is b:
                continue
            g = Group(node, kind="add", owner=str(src.layer.target))
            users = list(node.users)
            if len(users) == 1:
                k = act_kind(users[0], modules)
                if k is not None and users[0].args and users[0].args[0] is node:
                    g.act, g.act_kind = users[0], k
            groups[node] = g
    return groups


# --- planning ------------------------------------------------------------------------------


@dataclass
class Point:
    """A quantization point of the graph: where, and for which layer (for error messages)."""

    name: str
    layer: str
    where: str  # "input", "accum", "output"
    node: fx.Node  # input/accum: the consumer; output: the producer (group tail)


@dataclass
class GraphPlan:
    """What :func:`prepare_graph` decided: the traced graph, opaque modules, groups and points."""

    graph: fx.Graph
    leaf_names: list[str]
    targets: list[str]
    visible: set[str] = field(default_factory=set)
    fuse_residual: bool = True

    def install(
        self, model: nn.Module, config: QuantConfig, reduce: str
    ) -> dict[str, list[FakeQuantize]]:
        """Insert the quantizers (observing) and bind the graph as ``model.forward``.

        Returns:
            The quantizers to calibrate, by the layer each belongs to.
        """
        _, arange = integer_ranges(config, reduce)
        if hasattr(model, GRAPH_ATTR):
            raise CompressionStateError(
                f"{type(model).__name__} already has an attribute {GRAPH_ATTR!r}; it cannot be "
                "quantized in graph mode (pass graph='layer')."
            )
        container = QuantGraph(self.leaf_names, fuse_residual=self.fuse_residual)
        model.add_module(GRAPH_ATTR, container)
        points = plan_points(
            self.graph, dict(model.named_modules()), set(self.visible), self.fuse_residual
        )
        out: dict[str, list[FakeQuantize]] = {}
        for p in points:
            layer = model.get_submodule(p.layer)
            fq = make_activation_quant(config, p.layer, geometry=layer.geometry, arange=arange)
            fq.to(layer.weight.device)
            container.quantizers[p.name] = fq
            out.setdefault(p.layer, []).append(fq)
        # the range of each fused layer's output before its residual add: not used by the torch
        # model, but an ONNX export can quantize there, the form onnxruntime fuses best
        modules = dict(model.named_modules())
        for g in find_groups(self.graph, modules, set(self.visible), self.fuse_residual).values():
            if g.kind != "layer" or g.add is None:
                continue
            name = str(g.layer.target)
            layer = modules[name]
            fq = make_activation_quant(config, name, geometry=layer.geometry, arange=arange)  # type: ignore[arg-type]
            fq.to(layer.weight.device)  # type: ignore[arg-type]
            container.export_ranges[g.layer.name] = fq
            out.setdefault(name, []).append(fq)
            layer.observe_output_with(fq)  # type: ignore[operator]
        insert_points(self.graph, points)
        container.bind(model, self.graph)
        return out


def _needs_int(
    node: fx.Node,
    modules: dict[str, nn.Module],
    targets: set[str],
    group_of_add: dict[fx.Node, Group],
    memo: dict[fx.Node, bool],
) -> bool:
    """Whether some use of ``node``'s value (through integer-exact ops) wants it integer."""
    if node in memo:
        return memo[node]
    memo[node] = False
    res = False
    for u in node.users:
        g = group_of_add.get(u)
        if (_is_qop(u, targets) and u.args and u.args[0] is node) or (
            g is not None and (g.other is node or (g.kind == "add" and node in u.args[:2]))
        ):
            res = True
        elif pass_kind(u, modules) is not None and u.args and u.args[0] is node:
            res = _needs_int(u, modules, targets, group_of_add, memo)
        if res:
            break
    memo[node] = res
    return res


def _int_state(
    graph: fx.Graph,
    modules: dict[str, nn.Module],
    targets: set[str],
    groups: dict[fx.Node, Group],
    outputs_int: set[fx.Node],
) -> dict[fx.Node, bool]:
    """Which values are integer in the integer graph (before any input quantizer is added)."""
    state: dict[fx.Node, bool] = {}
    group_nodes = {}
    for g in groups.values():
        for n in (g.layer, g.add, g.act):
            if n is not None:
                group_nodes[n] = g
    for node in graph.nodes:
        m = module_of(node, modules)
        if isinstance(m, FakeQuantize):
            state[node] = True
        elif node in group_nodes and node is group_nodes[node].tail:
            state[node] = node in outputs_int
        elif node in group_nodes:
            state[node] = False
        elif (
            pass_kind(node, modules) is not None and node.args and isinstance(node.args[0], fx.Node)
        ):
            state[node] = state.get(node.args[0], False)
        else:
            state[node] = False
    return state


def plan_points(
    graph: fx.Graph, modules: dict[str, nn.Module], targets: set[str], fuse_residual: bool = True
) -> list[Point]:
    """The quantization points of ``graph`` (deterministic: named after the graph's nodes)."""
    groups = find_groups(graph, modules, targets, fuse_residual)
    group_of_add = {g.add: g for g in groups.values() if g.add is not None}
    group_of_add.update({g.layer: g for g in groups.values() if g.kind == "add"})
    memo: dict[fx.Node, bool] = {}
    outputs_int = {
        g.tail
        for g in groups.values()
        if g.kind == "add" or _needs_int(g.tail, modules, targets, group_of_add, memo)
    }
    state = _int_state(graph, modules, targets, groups, outputs_int)
    points: list[Point] = []
    for g in groups.values():
        if g.kind == "add":
            for i, arg in enumerate(g.layer.args[:2]):
                if isinstance(arg, fx.Node) and not state.get(arg, False):
                    points.append(Point(f"input{i}_{g.layer.name}", g.owner, "addin", g.layer))
            points.append(Point(f"output_{g.layer.name}", g.owner, "output", g.tail))
            continue
        x = g.layer.args[0] if g.layer.args else None
        if isinstance(x, fx.Node) and not state.get(x, False):
            points.append(Point(f"input_{g.layer.name}", str(g.layer.target), "input", g.layer))
        if g.other is not None and not state.get(g.other, False):
            points.append(Point(f"accum_{g.layer.name}", str(g.layer.target), "accum", g.add))  # type: ignore[arg-type]
        if g.tail in outputs_int:
            points.append(Point(f"output_{g.layer.name}", str(g.layer.target), "output", g.tail))
    return points


def insert_points(graph: fx.Graph, points: list[Point]) -> None:
    """Insert a call of ``quant_graph.quantizers.<name>`` at each point."""
    for p in points:
        target = f"{GRAPH_ATTR}.quantizers.{p.name}"
        if p.where == "output":
            with graph.inserting_after(p.node):
                q = graph.call_module(target, (p.node,))
            p.node.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
        elif p.where == "addin":
            i = int(p.name[len("input") : p.name.index("_")])
            with graph.inserting_before(p.node):
                q = graph.call_module(target, (p.node.args[i],))
            args = list(p.node.args)
            args[i] = q
            p.node.args = tuple(args)
        elif p.where == "input":
            x = p.node.args[0]
            with graph.inserting_before(p.node):
                q = graph.call_module(target, (x,))
            p.node.args = (q, *p.node.args[1:])
        else:  # accum: the add's other operand
            add = p.node
            layer_name = p.name[len("accum_") :]
            a = add.args[0]
            other_idx = 1 if (isinstance(a, fx.Node) and a.name == layer_name) else 0
            other = add.args[other_idx]
            with graph.inserting_before(add):
                q = graph.call_module(target, (other,))
            args = list(add.args)
            args[other_idx] = q
            add.args = tuple(args)
    graph.lint()


def prepare_graph(
    model: nn.Module, targets: list[str], *, fuse_residual: bool = True
) -> GraphPlan | None:
    """Trace ``model`` before its layers are replaced (see the module docs).

    Returns:
        The plan, or ``None`` when the model does not trace (quantize layer by layer).
    """
    traced = trace_model(model)
    if traced is None:
        return None
    graph, leaves = traced
    call_targets = {str(n.target) for n in graph.nodes if n.op == "call_module"}
    visible = [t for t in targets if t in call_targets]
    if not visible:
        return None
    strip_identities(graph, dict(model.named_modules()))
    return GraphPlan(
        graph=graph,
        leaf_names=leaves,
        targets=targets,
        visible=set(visible),
        fuse_residual=fuse_residual,
    )


# --- the container and forward binding ------------------------------------------------------


class QuantGraph(nn.Module):
    """Holds the graph-level quantizers of a model quantized in graph mode, and its graph.

    Attributes:
        quantizers: the activation quantizers inserted in the graph, named after the layer they
            feed (``input_<node>``, ``accum_<node>``) or follow (``output_<node>``).
        leaf_names: modules kept as opaque calls when tracing.
        converted: the bound graph is the integer graph (after :func:`torchcompress.convert`).
        fuse_residual: residual adds are fused into the convolution before them (else they
            are integer ops of their own).
        sites: after :func:`torchcompress.convert`, the integer layers of the second and later
            calls of a layer called several times, named after their graph node.
    """

    def __init__(self, leaf_names: list[str] | None = None, *, fuse_residual: bool = True) -> None:
        super().__init__()
        self.quantizers = nn.ModuleDict()
        #: the integer layers of the second and later calls of a layer the graph calls several
        #: times (each with its own activation ranges; weights shared with the layer itself)
        self.sites = nn.ModuleDict()
        #: export-only ranges: the output of each layer with a fused residual add, before the add
        #: (named after the layer's graph node; see :func:`torchcompress.export_onnx`)
        self.export_ranges = nn.ModuleDict()
        self.leaf_names = list(leaf_names or [])
        self.fuse_residual = fuse_residual
        self.converted = False
        self.fake_graph: fx.Graph | None = None
        self.graph: fx.Graph | None = None

    def bind(self, model: nn.Module, graph: fx.Graph) -> None:
        """Make ``graph`` the model's forward (on the instance; the class is untouched)."""
        if self.fake_graph is None or not self.converted:
            self.fake_graph = graph
        self.graph = graph
        code = graph.python_code(root_module="self")
        glb: dict[str, Any] = dict(code.globals)
        exec(compile(code.src, f"<torchcompress graph of {type(model).__name__}>", "exec"), glb)
        fn = glb["forward"]
        object.__setattr__(model, "forward", types.MethodType(fn, model))

    def code(self) -> str:
        """The Python source of the bound graph (for reading)."""
        return "" if self.graph is None else self.graph.python_code(root_module="self").src

    def extra_repr(self) -> str:
        kind = "integer" if self.converted else "fake-quant"
        return (
            f"{kind} graph, {len(self.quantizers)} activation quantizers, opaque: {self.leaf_names}"
        )


def strip_identities(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Drop calls of ``nn.Identity`` (e.g. folded BatchNorms), so layers and activations are adjacent."""
    for node in list(graph.nodes):
        if type(module_of(node, modules)) is nn.Identity and node.args:
            node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
            graph.erase_node(node)


def strip_points(graph: fx.Graph, modules: dict[str, nn.Module]) -> fx.Graph:
    """Remove calls of graph quantizers (tracing a model whose forward is bound already)."""
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(f"{GRAPH_ATTR}."):
            node.replace_all_uses_with(node.args[0])  # type: ignore[arg-type]
            graph.erase_node(node)
    return graph


def unbind(model: nn.Module) -> None:
    """Restore the class's forward (drop the bound graph)."""
    if "forward" in model.__dict__:
        del model.__dict__["forward"]


def container_of(model: nn.Module) -> QuantGraph | None:
    """The model's :class:`QuantGraph`, if it was quantized in graph mode."""
    c = getattr(model, GRAPH_ATTR, None)
    return c if isinstance(c, QuantGraph) else None
