"""The integer graph of a model quantized in graph mode (see :mod:`~torchcompress.quant.graph`).

:func:`build_integer_graph` rewrites the fake-quant graph into the one :func:`torchcompress.convert`
binds: activations stay uint8 between layers (quantized once where the fake-quant graph has a
quantizer, re-quantized where two quantizers meet), integer-exact ops work on the uint8 tensors,
and every group (layer + residual add + ReLU) is one :class:`~torchcompress.quant.int_layer.IntLayer`
call. :func:`rebuild` re-traces a freshly loaded model and binds its graph again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CompressionStateError
from ..select import module_device_dtype, set_module
from .functional import dequantize_u8, quantize_u8
from .graph import (
    GRAPH_ATTR,
    QuantGraph,
    find_groups,
    insert_points,
    plan_points,
    strip_identities,
    strip_points,
)
from .int_layer import IntLayer
from .modules import FakeQuantize, QuantLayer
from .ops import is_eval_identity, is_inplace, module_of, non_tensor, pass_kind, trace_model

__all__ = ["build_integer_graph", "pad_u8", "rebuild", "relu_u8", "requantize_u8"]


def _targets(modules: dict[str, nn.Module]) -> set[str]:
    """The quantized layers of a graph (fake-quant or already integer)."""
    return {n for n, m in modules.items() if isinstance(m, QuantLayer | IntLayer)}


@dataclass(frozen=True)
class _QP:
    scale: float
    zp: int
    qmin: int
    qmax: int

    @property
    def zpk(self) -> int:
        return self.zp - self.qmin

    @property
    def hi(self) -> int:
        return self.qmax - self.qmin


def _fits_u8(fq: FakeQuantize | None) -> bool:
    """Whether the quantizer's integers fit the integer graph's uint8 storage (at most 256 levels).

    Wider formats (16-bit activations) stay float between layers, fake-quantized exactly as in the
    fake-quant model, and the layers around them run with float inputs or outputs."""
    return fq is not None and int(fq.quant_max) - int(fq.quant_min) <= 255


def _qp_of(fq: FakeQuantize) -> _QP:
    return _QP(
        float(fq.scale.detach().reshape(-1)[0]),
        int(fq.zero_point.reshape(-1)[0].round()),
        int(fq.quant_min),
        int(fq.quant_max),
    )


def relu_u8(u: Tensor, zpk: int, inplace: bool = False) -> Tensor:
    """ReLU of integer activations stored as uint8 with zero point ``zpk`` (in place like the
    model's own ReLU, when that one is)."""
    if zpk <= 0:
        return u
    return u.clamp_min_(zpk) if inplace else u.clamp_min(zpk)


def pad_u8(u: Tensor, pad: Any, zpk: int) -> Tensor:
    """Zero padding of integer activations (pads with the zero point)."""
    return F.pad(u, pad, mode="constant", value=zpk)


def requantize_u8(u: Tensor, s_in: float, z_in: int, s_out: float, z_out: int, hi: int) -> Tensor:
    """Re-quantize uint8 activations to other parameters."""
    return quantize_u8(dequantize_u8(u, s_in, z_in), s_out, z_out, hi)


def build_integer_graph(model: nn.Module, graph: fx.Graph, *, configure: bool = True) -> fx.Graph:
    """The integer graph of a model quantized in graph mode (see :mod:`torchcompress.quant.graph`).

    With ``configure``, the fake-quant layers of the graph are replaced by :class:`IntLayer` s set
    up with the graph's activation ranges; otherwise they are already integer (a loaded model).
    """
    modules = dict(model.named_modules())
    targets = _targets(modules)
    # (with fuse_residual=False the residual adds are separated from the convolutions by the
    # output quantizers already in the graph: they run as float adds between quantize steps)
    groups = find_groups(graph, modules, targets)
    member: dict[fx.Node, Any] = {}
    for g in groups.values():
        for n in (g.layer, g.add, g.act):
            if n is not None:
                member[n] = g

    def fq_of(node: fx.Node) -> FakeQuantize | None:
        m = module_of(node, modules)
        return m if isinstance(m, FakeQuantize) else None

    # a layer the graph calls several times: one integer layer per call (their activation
    # ranges differ), the later ones in the container's ``sites``, sharing the weights
    originals = {str(g.layer.target): modules[str(g.layer.target)] for g in groups.values()}
    called: set[str] = set()
    out_fq: dict[fx.Node, fx.Node] = {}  # group tail -> its output quantizer node
    for g in groups.values():
        for u in g.tail.users:
            if _fits_u8(fq_of(u)) and str(u.target).endswith(f".output_{g.layer.name}"):
                out_fq[g.tail] = u
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    qp: dict[fx.Node, _QP] = {}
    deq: dict[fx.Node, fx.Node] = {}
    fdtype = module_device_dtype(model)[1] or torch.float32

    def as_float(n: fx.Node) -> fx.Node:
        if n in qp:
            if n not in deq:
                p = qp[n]
                deq[n] = new.call_function(dequantize_u8, (env[n], p.scale, p.zpk, fdtype))
            return deq[n]
        return env[n]

    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = new.node_copy(node, lambda n: env[n])
            continue
        if node.op == "output":
            new.output(fx.map_arg(node.args[0], as_float))
            continue
        fq = fq_of(node)
        if fq is not None and not _fits_u8(fq):
            # too wide for uint8 storage: the fake-quant model's own float arithmetic
            env[node] = new.node_copy(node, as_float)
            continue
        if fq is not None:
            src = node.args[0]
            p = _qp_of(fq)
            if isinstance(src, fx.Node) and src in out_fq and out_fq[src] is node:
                env[node] = env[src]
                qp[node] = qp[src]
            elif isinstance(src, fx.Node) and src in qp:
                ps = qp[src]
                if ps == p:
                    env[node] = env[src]
                else:
                    env[node] = new.call_function(
                        requantize_u8, (env[src], ps.scale, ps.zpk, p.scale, p.zpk, p.hi)
                    )
                qp[node] = p
            else:
                env[node] = new.call_function(quantize_u8, (env[src], p.scale, p.zpk, p.hi))
                qp[node] = p
            continue
        if node in member:
            g = member[node]
            if node is not g.tail:
                continue
            x_old = g.layer.args[0]
            name = str(g.layer.target)
            # a residual operand too wide for uint8 is float: the add (and the activation after
            # it) run in float after the layer, as in the fake-quant model
            fused = g.other is None or g.other in qp
            if not fused:
                out_fq.pop(node, None)
            ofq_node = out_fq.get(node)
            first_call = name not in called
            called.add(name)
            call_name = name if first_call else f"{GRAPH_ATTR}.sites.{g.layer.name}"
            if configure:
                layer = originals[name]
                in_fq = _producer_fq(x_old, modules, qp)
                acc_fq = (
                    _producer_fq(g.other, modules, qp) if g.other is not None and fused else None
                )
                ofq = fq_of(ofq_node) if ofq_node is not None else None
                int_layer = IntLayer.from_quant(
                    layer,  # type: ignore[arg-type]
                    input_fq=in_fq,
                    output_fq=ofq,
                    accum_fq=acc_fq,
                    unary=g.act_kind if fused else None,
                    graph_mode=True,
                )
                if first_call:
                    set_module(model, name, int_layer)
                else:
                    getattr(model, GRAPH_ATTR).sites[g.layer.name] = int_layer
                modules[call_name] = int_layer
            if not first_call:
                _share_weights(modules[call_name], modules[name], name)
            args: tuple[Any, ...] = (env[x_old],)
            if g.other is not None and fused:
                args = (*args, env[g.other])
            if fused:
                env[node] = new.call_module(call_name, args)
            else:
                env[g.layer] = new.call_module(call_name, args)
                for n in (g.add, g.act):
                    if n is not None:
                        env[n] = new.node_copy(n, as_float)
            if ofq_node is not None:
                qp[node] = _qp_of(fq_of(ofq_node))  # type: ignore[arg-type]
            continue
        pk = pass_kind(node, modules)
        x = node.args[0] if node.args else None
        if pk is not None and isinstance(x, fx.Node) and x in qp:
            p = qp[x]
            if pk == "relu":
                env[node] = new.call_function(relu_u8, (env[x], p.zpk, is_inplace(node, modules)))
            elif pk == "pad":
                pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
                env[node] = new.call_function(
                    pad_u8, (env[x], fx.map_arg(pad, lambda n: env[n]), p.zpk)
                )
            elif is_eval_identity(node, modules):
                env[node] = env[x]
            else:
                env[node] = new.node_copy(node, lambda n: env[n])
            qp[node] = p
            continue
        if non_tensor(node):
            env[node] = new.node_copy(node, lambda n: env[n])
        else:
            env[node] = new.node_copy(node, as_float)
    new.lint()
    _mark_inplace_accum(new, modules)
    return new


def _mark_inplace_accum(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Let a fused residual add write into its operand when nothing reads that tensor afterwards."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    ok: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 2:
            continue
        if not isinstance(modules.get(str(node.target)), IntLayer):
            continue
        safe = True
        a = node.args[1]
        seen = 0
        # the kernel reads its input while it writes the sum: never into the input's memory
        # (``relu(conv(h) + h)`` passes one tensor as both)
        input_chain = _alias_chain(node.args[0], modules)
        while isinstance(a, fx.Node) and seen < 1000:
            seen += 1
            if (
                a.op == "placeholder"
                or a in input_chain
                or any(order[u] > order[node] for u in a.users if u is not node)
            ):
                safe = False
                break
            if a.op == "call_function" and a.target in (quantize_u8, requantize_u8):
                break  # a fresh tensor
            if a.op == "call_module" and isinstance(modules.get(str(a.target)), IntLayer):
                break  # a layer's output: a fresh tensor
            if not a.args:
                safe = False
                break
            a = a.args[0]  # a view or an alias of its input: check the input too
        name = str(node.target)
        ok[name] = ok.get(name, True) and safe
    for name, v in ok.items():
        modules[name].accum_inplace_ok = v  # type: ignore[union-attr]


def _share_weights(site: nn.Module, layer: nn.Module, name: str) -> None:
    """Let the integer layer of a later call use the first call's (``name``) weight tensors."""
    for key in ("qweight", "weight_scale", "weight_zero_point", "bias"):
        t = layer._buffers.get(key)
        if t is not None and key in site._buffers:
            site._buffers[key] = t
    site.weights_of = name  # type: ignore[assignment]


def _alias_chain(node: Any, modules: dict[str, nn.Module]) -> set[fx.Node]:
    """``node`` and the values it may be a view of (up to a freshly made tensor)."""
    out: set[fx.Node] = set()
    while isinstance(node, fx.Node) and node not in out and len(out) < 1000:
        out.add(node)
        if node.op == "call_function" and node.target in (quantize_u8, requantize_u8):
            break
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), IntLayer):
            break
        if not node.args:
            break
        node = node.args[0]
    return out


def _producer_fq(
    node: Any, modules: dict[str, nn.Module], qp: dict[fx.Node, _QP]
) -> FakeQuantize | None:
    """The quantizer whose parameters an integer value carries (following integer-exact ops)."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 10000:
        m = module_of(node, modules)
        if isinstance(m, FakeQuantize):
            return m
        if not node.args:
            return None
        node = node.args[0]
        seen += 1
    return None


def rebuild(model: nn.Module, container: QuantGraph) -> None:
    """Re-trace a freshly loaded model and bind its graph (the fake-quant or the integer one).

    Raises:
        CompressionStateError: the model no longer traces to the same graph.
    """
    # the container is a child of the model, not part of its forward (an nn.Sequential would
    # otherwise call it): trace without it
    held = model._modules.pop(GRAPH_ATTR, None)
    try:
        traced = trace_model(model, container.leaf_names)
    finally:
        if held is not None:
            model._modules[GRAPH_ATTR] = held
    if traced is None:
        raise CompressionStateError(
            f"{type(model).__name__} no longer traces with torch.fx; the saved graph-mode "
            "quantization cannot be rebuilt on it."
        )
    graph, _ = traced
    modules = dict(model.named_modules())
    targets = _targets(modules)
    graph = strip_points(graph, modules)
    strip_identities(graph, modules)
    points = plan_points(graph, modules, targets, container.fuse_residual)
    names = sorted(p.name for p in points)
    if names != sorted(container.quantizers.keys()):
        raise CompressionStateError(
            f"The traced graph of {type(model).__name__} does not match the saved quantized graph "
            f"(quantizers {names[:4]}... vs {sorted(container.quantizers.keys())[:4]}...). Was the "
            "model's code changed?"
        )
    insert_points(graph, points)
    container.bind(model, graph)
    if container.converted:
        container.converted = False
        int_graph = build_integer_graph(model, graph, configure=False)
        container.converted = True
        container.bind(model, int_graph)
