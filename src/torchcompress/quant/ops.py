"""How quantization reads a traced graph: the shared tracer and op taxonomy, seen from integers.

Quantization traces with :func:`torchcompress.tracing.trace` (:func:`trace_model`: quantizers and
quantized layers are registered leaves, compressed layers of other families are traced into, a
submodule that does not trace stays an opaque call) and asks :data:`torchcompress.tracing.OPS`
about each node:

- :func:`pass_kind`: how an op treats an integer (uint8) activation: ``"same"`` for ops exact on
  integers that have a uint8 kernel (reshapes, indexing, identities, dropout, 2-D/3-D max pooling,
  nearest up-sampling), ``"relu"``, ``"pad"`` (zero padding), or ``None`` (the integer graph
  dequantizes before it). Ops exact on integers without a uint8 CPU kernel in torch are in the
  category :data:`NO_INT_KERNEL` (``max_pool1d`` and the adaptive max poolings); register more
  with ``OPS.register(NO_INT_KERNEL, fn)``.
- :func:`act_kind`: the activation an integer kernel fuses after a layer: ``"relu"``, or
  ``"relu6"`` (the category :data:`RELU6_EXACT`: ``ReLU6``, and ``Hardtanh`` clipping at exactly
  ``[0, 6]``; another clip is not a fused activation: it runs in float).
- :func:`is_add`, :func:`non_tensor`, :func:`is_eval_identity`, :func:`is_inplace`: residual adds,
  shape queries, modules that are the identity in eval mode, in-place ReLUs.
- :func:`value_origin`: whether a value is a ReLU's output (through ops that keep it in range),
  the model's input, or something else (PACT's clipping applies to ReLU outputs).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.quant.ops import act_kind, pass_kind, trace_model
    >>> model = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Hardtanh(0.0, 6.0), nn.MaxPool1d(2))
    >>> graph, opaque = trace_model(model)
    >>> modules = dict(model.named_modules())
    >>> [(act_kind(n, modules), pass_kind(n, modules)) for n in graph.nodes][2:4]
    [('relu6', None), (None, None)]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..layers import layer_kind
from ..tracing import (
    ADD,
    DROPOUT,
    IDENTITY,
    INT_EXACT,
    NON_TENSOR,
    OPS,
    RANGE_PRESERVING,
    RELU,
    RELU_LIKE,
    ZERO_PAD,
    OpCall,
    trace,
)

__all__ = [
    "NO_INT_KERNEL",
    "RELU6_EXACT",
    "act_kind",
    "is_add",
    "is_eval_identity",
    "is_inplace",
    "module_of",
    "non_tensor",
    "pass_kind",
    "trace_model",
    "value_origin",
]

#: ops exact on integers (:data:`~torchcompress.tracing.INT_EXACT`) that torch has no uint8 CPU
#: kernel for ("max_pool1d_impl not implemented for 'Byte'"): the integer graph dequantizes first
NO_INT_KERNEL = "no_int_kernel"


def _have(owner: Any, *names: str) -> list[Any]:
    return [getattr(owner, n) for n in names if hasattr(owner, n)]


OPS.register(
    NO_INT_KERNEL,
    *_have(F, "max_pool1d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"),
    *_have(torch, "max_pool1d", "adaptive_max_pool1d"),
    *_have(nn, "MaxPool1d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d"),
)

#: a clip to exactly ``[0, 6]``: what the integer kernels fuse as ``"relu6"`` (ReLU6, and
#: ``Hardtanh``/``F.hardtanh`` with those bounds)
RELU6_EXACT = "relu6_exact"


def _clips_to_six(c: OpCall) -> bool:
    lo = c.module.min_val if c.module is not None else c.arg(1, "min_val", -1.0)
    hi = c.module.max_val if c.module is not None else c.arg(2, "max_val", 1.0)
    return bool(lo == 0 and hi == 6)


OPS.register(RELU6_EXACT, F.relu6, nn.ReLU6)
OPS.register(RELU6_EXACT, *_have(F, "hardtanh", "hardtanh_"), nn.Hardtanh, when=_clips_to_six)


def trace_model(
    model: nn.Module, leaf_names: list[str] | None = None
) -> tuple[fx.Graph, list[str]] | None:
    """Trace ``model`` with :func:`torchcompress.tracing.trace`, keeping submodules that do not
    trace as opaque calls.

    Leaves: quantizers and quantized layers (registered), every layer of a registered layer kind
    (one call, as its quantized replacement will be, even when its own forward is functional),
    plain ``torch.nn`` layers and ``leaf_names``; compressed layers of other families are traced
    into, so their inner layers can be quantized.

    Returns:
        ``(graph, leaf_names)`` (the named leaves and the modules kept opaque, sorted), or ``None``
        when the top level itself does not trace.
    """
    leaves = sorted(set(leaf_names or []))
    layers = [m for m in model.modules() if layer_kind(m) is not None]
    traced = trace(model, [*leaves, *layers], descend=False, costed_leaves=False)
    if traced.graph is None:
        return None
    return traced.graph, sorted({*leaves, *traced.opaque})


def module_of(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The module a ``call_module`` node calls (``None`` for any other node)."""
    if node.op == "call_module":
        return modules.get(str(node.target))
    return None


def is_add(node: fx.Node) -> bool:
    """Whether ``node`` adds exactly two tensors (a residual add)."""
    return OPS.node_is(node, ADD, {}) and len(node.args) == 2 and not node.kwargs


def act_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``"relu"`` or ``"relu6"`` if ``node`` applies one (in place or not) to its first argument.

    ``"relu6"`` is a clip to exactly ``[0, 6]`` (what the integer kernels fuse); a ``Hardtanh``
    clipping at another value is not a fused activation.
    """
    cats = OPS.of_node(node, modules)
    if RELU in cats and node.args:
        return "relu"
    if RELU6_EXACT in cats:
        return "relu6"
    return None


def pass_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """How an op treats an integer input: ``"same"`` (exact as is, with a uint8 kernel),
    ``"relu"``, ``"pad"``, or ``None`` (run in float)."""
    cats = OPS.of_node(node, modules)
    if RELU in cats:
        return "relu"
    if ZERO_PAD in cats and node.op == "call_function":
        return "pad"
    return "same" if INT_EXACT in cats and NO_INT_KERNEL not in cats else None


def non_tensor(node: fx.Node) -> bool:
    """Whether ``node`` yields shape/dtype/device information rather than a tensor."""
    return OPS.node_is(node, NON_TENSOR, {})


def is_eval_identity(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` calls a module that is the identity in eval mode (dropout, ``Identity``)."""
    return node.op == "call_module" and bool(OPS.of_node(node, modules) & {DROPOUT, IDENTITY})


def is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` (a ReLU) works in place."""
    m = module_of(node, modules)
    if m is not None:
        return bool(getattr(m, "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return bool(node.kwargs.get("inplace", False)) or node.target in (torch.relu_, F.relu_)


def value_origin(node: Any, modules: dict[str, nn.Module]) -> str:
    """``"relu"``, ``"input"`` (the model's data) or ``"other"`` for the value of ``node``.

    A value is a ReLU's output when a ReLU-like op (ReLU, ReLU6, ``Hardtanh`` clipping at zero)
    computed it, possibly followed by ops that keep values within their input's range (pooling,
    reshapes, dropout, zero padding, ...).
    """
    for _ in range(64):
        if not isinstance(node, fx.Node):
            break
        if node.op == "placeholder":
            return "input"
        cats = OPS.of_node(node, modules)
        if RELU_LIKE in cats:
            return "relu"
        if cats & {RANGE_PRESERVING, ZERO_PAD} and node.args:
            node = node.args[0]
            continue
        return "other"
    return "other"
