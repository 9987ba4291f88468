"""Quantization's ``torch.fx`` tracer, its op taxonomy and its op recorder, in one place.

- :func:`trace_model` (with :class:`_Tracer`): traces a model, keeping quantized modules, plain
  ``torch.nn`` layers and submodules that do not trace as opaque calls.
- The op taxonomy on fx nodes: residual adds (:func:`is_add`), ReLU / ReLU6 (:func:`act_kind`), ops
  exact on integer tensors (:func:`pass_kind`: ReLU, max-pooling, zero padding, reshapes, slicing,
  nearest upsampling, dropout, identities), non-tensor values (:func:`non_tensor`), and the ops that
  keep a ReLU's output a clipped non-negative activation (:func:`keeps_relu`, for PACT).
- :class:`ReluTracker`: a ``TorchFunctionMode`` that follows which tensors of one real forward are
  ReLU outputs (PACT's analysis for models that do not trace).

The shared tracer, recorder and op taxonomy (:mod:`torchcompress.tracing`) replace this module.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .modules import FakeQuantize, QuantizedModule

__all__ = [
    "ReluTracker",
    "act_kind",
    "is_add",
    "is_eval_identity",
    "is_inplace",
    "is_relu_output",
    "keeps_relu",
    "module_of",
    "non_tensor",
    "pass_kind",
    "trace_model",
]

log = logging.getLogger(__name__)


# --- tracing -----------------------------------------------------------------------------------


def _is_container(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict)


class _Tracer(fx.Tracer):
    """Leaves: named modules, quantized modules and plain ``torch.nn`` layers (not containers)."""

    def __init__(self, leaf_names: set[str]) -> None:
        super().__init__()
        self.leaf_names = leaf_names
        self.stack: list[str] = []
        self.failed_at: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names:
            return True
        if isinstance(m, QuantizedModule | FakeQuantize):
            return True
        return type(m).__module__.startswith("torch.nn") and not _is_container(m)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        qualname = self.path_of_module(m)
        self.stack.append(qualname)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = qualname
            raise
        finally:
            self.stack.pop()


def trace_model(
    model: nn.Module, leaf_names: list[str] | None = None
) -> tuple[fx.Graph, list[str]] | None:
    """Trace ``model`` with torch.fx, keeping modules that do not trace as opaque calls.

    Returns:
        ``(graph, leaf_names)`` (the modules kept opaque), or ``None`` when the top level itself
        does not trace.
    """
    leaves = set(leaf_names or [])
    for _ in range(len(list(model.modules())) + 1):
        tracer = _Tracer(leaves)
        try:
            graph = tracer.trace(model)
        except Exception as e:  # anything the tracer cannot follow
            failed = tracer.failed_at
            if not failed or failed in leaves:
                log.info(
                    "%s does not trace with torch.fx (%s); quantizing layer by layer.",
                    type(model).__name__,
                    e,
                )
                return None
            log.info("keeping %r as an opaque call in the quantized graph (%s)", failed, e)
            leaves.add(failed)
            continue
        return graph, sorted(leaves)
    return None


# --- op taxonomy on fx nodes -----------------------------------------------------------------

_ADD_FUNCS = {operator.add, torch.add, operator.iadd}
_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
_RELU6_FUNCS = {F.relu6}
_PASS_FUNCS = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    operator.getitem,
    F.max_pool1d,
    F.max_pool2d,
    F.dropout,
    torch.nn.functional.dropout2d,
}
_PASS_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "__getitem__",
    "expand",
    "narrow",
}
_PASS_MODULES = (
    nn.Identity,
    nn.Flatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
)
_NON_TENSOR_METHODS = {"size", "dim", "numel"}


def module_of(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The module a ``call_module`` node calls (``None`` for any other node)."""
    if node.op == "call_module":
        return modules.get(str(node.target))
    return None


def is_add(node: fx.Node) -> bool:
    """Whether ``node`` adds exactly two tensors (a residual add)."""
    if node.op == "call_function" and node.target in _ADD_FUNCS:
        return len(node.args) == 2 and not node.kwargs
    if node.op == "call_method" and node.target in ("add", "__add__") and not node.kwargs:
        return len(node.args) == 2
    return False


def act_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``"relu"`` or ``"relu6"`` if ``node`` applies one (in place or not) to its first argument."""
    m = module_of(node, modules)
    if m is not None:
        if type(m) is nn.ReLU:
            return "relu"
        if type(m) is nn.ReLU6:
            return "relu6"
        if type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val > 0:
            return "relu6"
        return None
    if node.op == "call_function" and node.target in _RELU_FUNCS and len(node.args) >= 1:
        return "relu"
    if node.op == "call_function" and node.target in _RELU6_FUNCS:
        return "relu6"
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def pass_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """How an op treats an integer input: ``"same"`` (exact as is), ``"relu"``, ``"pad"``, or ``None``."""
    m = module_of(node, modules)
    if m is not None:
        if isinstance(m, _PASS_MODULES):
            return "same"
        if type(m) is nn.ReLU:
            return "relu"
        if type(m) is nn.Upsample and m.mode == "nearest":
            return "same"
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCS:
            return "relu"
        if node.target in _PASS_FUNCS:
            return "same"
        if node.target is F.pad:
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
            if mode == "constant" and (value is None or value == 0):
                return "pad"
        if node.target is F.interpolate:
            mode = node.kwargs.get("mode", "nearest")
            if mode == "nearest":
                return "same"
        return None
    if node.op == "call_method":
        if node.target in _PASS_METHODS:
            return "same"
        if node.target in ("relu", "relu_"):
            return "relu"
    return None


def non_tensor(node: fx.Node) -> bool:
    """Whether ``node`` yields shape/dtype/device information rather than a tensor."""
    if node.op == "call_method" and node.target in _NON_TENSOR_METHODS:
        return True
    return (
        node.op == "call_function"
        and node.target is getattr
        and node.args[1:] in (("shape",), ("dtype",), ("device",))
    )


_EVAL_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)


def is_eval_identity(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` calls a module that is the identity in eval mode (dropout, ``Identity``)."""
    return isinstance(module_of(node, modules), _EVAL_IDENTITY_MODULES)


def is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` (a ReLU) works in place."""
    m = module_of(node, modules)
    if m is not None:
        return bool(getattr(m, "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return bool(node.kwargs.get("inplace", False)) or node.target is torch.relu_


_RELU_OUTPUT_FUNCS = {torch.relu, torch.relu_, F.relu, F.relu6}
# ops that keep a ReLU's output a clipped non-negative activation (PACT applies after them)
_KEEP_MODULES = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
_KEEP_FUNCS = {
    torch.flatten,
    torch.mean,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.avg_pool1d,
    torch.nn.functional.adaptive_avg_pool1d,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.dropout,
}
_KEEP_METHODS = {"mean", "view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}


def is_relu_output(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` applies a ReLU or ReLU6 (a module, a function or a method)."""
    if act_kind(node, modules) is not None:
        return True
    if node.op == "call_function" and node.target in _RELU_OUTPUT_FUNCS:
        return True
    return isinstance(module_of(node, modules), nn.ReLU | nn.ReLU6)


def keeps_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` keeps its first input a clipped non-negative activation (pooling,
    reshapes, dropout, identities, ...): what PACT's clipping may follow."""
    return (
        isinstance(module_of(node, modules), _KEEP_MODULES)
        or (node.op == "call_function" and node.target in _KEEP_FUNCS)
        or (node.op == "call_method" and node.target in _KEEP_METHODS)
        or pass_kind(node, modules) in ("same", "pad", "relu")
    )


# --- the recorder ------------------------------------------------------------------------------

_RELU_NAMES = {"relu", "relu_", "relu6", "hardtanh"}
_KEEP_NAMES = {
    "flatten",
    "view",
    "reshape",
    "mean",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "max_pool1d",
    "max_pool2d",
    "adaptive_max_pool2d",
    "dropout",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "clone",
    "__getitem__",
}


class ReluTracker(TorchFunctionMode):
    """Follows which tensors are ReLU outputs (or pooled / reshaped ReLU outputs) in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.relu: dict[int, Tensor] = {}  # id -> tensor (kept alive so ids stay unique)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if isinstance(out, Tensor):
            first = args[0] if args else None
            if name in _RELU_NAMES or (
                name in _KEEP_NAMES and isinstance(first, Tensor) and id(first) in self.relu
            ):
                self.relu[id(out)] = out
        return out
