"""One taxonomy of torch ops, for fx graphs and for recorded forwards: :data:`OPS`.

Fusion, quantization planning, QAT's activation origins and the channel-pruning dependency graph
all ask the same questions of an op: is it a ReLU, an element-wise op, a residual add, a reshape, a
concatenation, a split, a pooling; does it pass integer tensors through unchanged? :data:`OPS`
answers them for

- ``torch.fx`` nodes (``call_function`` targets, ``call_method`` names, ``call_module`` module
  classes): :meth:`OpTaxonomy.of_node`;
- ops seen by a :class:`~torchcompress.tracing.Recorder` (function objects such as ``F.relu`` or
  ``torch.cat``, ``Tensor`` methods such as ``Tensor.view``, attribute reads such as ``x.shape``):
  :meth:`OpTaxonomy.of_op`;
- modules: :meth:`OpTaxonomy.of_module`.

An entry is a *target* (a function object, a ``Tensor`` method name, or an ``nn.Module`` class,
matched by exact type so that a subclass with its own ``forward`` is not mistaken for its base) in
a *category*, optionally with a condition on the call (``F.pad`` is a zero padding only with
``mode="constant"`` and value 0). The same function reached as ``torch.relu``, ``F.relu`` or
``x.relu()`` is registered under each spelling. Categories are plain strings; the built-in ones
are the constants of this module.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torchcompress.tracing import OPS
    >>> sorted(OPS.of_op(F.relu, (torch.randn(2),)) & {"activation", "relu", "relu_like"})
    ['activation', 'relu', 'relu_like']
    >>> "zero_pad" in OPS.of_op(F.pad, (torch.randn(2), (1, 1)), {"mode": "reflect"})
    False
    >>> def swish(x):
    ...     return x * torch.sigmoid(x)
    >>> OPS.register("activation", swish)
    >>> OPS.op_is(swish, "activation")
    True
    >>> OPS.remove("activation", swish)
"""

from __future__ import annotations

import operator
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = [
    "ACTIVATION",
    "ADD",
    "AVG_POOL",
    "CONCAT",
    "DROPOUT",
    "ELEMENTWISE",
    "IDENTITY",
    "INDEX",
    "INT_EXACT",
    "MAX_POOL",
    "MEAN",
    "NON_TENSOR",
    "OPS",
    "PAD",
    "POOLING",
    "RANGE_PRESERVING",
    "RELU",
    "RELU6",
    "RELU_LIKE",
    "RESHAPE",
    "SPLIT",
    "STACK",
    "UPSAMPLE",
    "ZERO_PAD",
    "OpCall",
    "OpTaxonomy",
]

#: element-wise non-linearities (ReLU, GELU, SiLU, sigmoid, ...)
ACTIVATION = "activation"
#: ``max(x, 0)``
RELU = "relu"
#: ``min(max(x, 0), c)``: ReLU6 and a Hardtanh clipping at 0
RELU6 = "relu6"
#: :data:`RELU` or :data:`RELU6`: non-negative outputs clipped at zero
RELU_LIKE = "relu_like"
#: element-wise maps of one or more tensors (with broadcasting): arithmetic, activations
ELEMENTWISE = "elementwise"
#: additions (a residual add is one with two tensor operands)
ADD = "add"
#: shape changes that keep every element: view, reshape, flatten, permute, transpose, expand, ...
RESHAPE = "reshape"
#: indexing and slicing: ``x[...]``, narrow, select, index_select
INDEX = "index"
#: concatenation along an existing dimension (``torch.cat``)
CONCAT = "concat"
#: stacking along a new dimension (``torch.stack``)
STACK = "stack"
#: splitting into several tensors: split, chunk, tensor_split, unbind
SPLIT = "split"
#: every pooling (max, average, adaptive, Lp)
POOLING = "pooling"
#: max pooling (adaptive included)
MAX_POOL = "max_pool"
#: average pooling (adaptive included)
AVG_POOL = "avg_pool"
#: ``torch.mean`` / ``x.mean()``
MEAN = "mean"
#: dropout (the identity in eval mode)
DROPOUT = "dropout"
#: the identity: ``nn.Identity``, ``contiguous``, ``clone``, ``detach``
IDENTITY = "identity"
#: up-sampling / interpolation
UPSAMPLE = "upsample"
#: padding (any mode)
PAD = "pad"
#: padding with zeros
ZERO_PAD = "zero_pad"
#: ops exact on integers: applied to an affine-quantized tensor, they give the quantized result with
#: the same scale and zero point (every output element is an input element: reshapes, indexing,
#: identities, dropout in eval, max pooling without indices, nearest up-sampling). ReLU and zero
#: padding are exact too once the zero point stands for zero (:data:`RELU`, :data:`ZERO_PAD`).
INT_EXACT = "int_exact"
#: ops whose outputs lie within the range of their input (:data:`INT_EXACT`, average pooling, mean,
#: linear interpolation): a ReLU's output stays non-negative and below its clip through them
RANGE_PRESERVING = "range_preserving"
#: calls returning shapes, sizes or dtypes, not tensors: ``x.size()``, ``x.dim()``, ``x.shape``
NON_TENSOR = "non_tensor"


@dataclass(frozen=True)
class OpCall:
    """One call as the taxonomy sees it (what a condition receives).

    Attributes:
        target: the function object, the ``Tensor`` method name (``str``), or for a module call the
            module's class.
        args: positional arguments (in an fx graph, nodes stand for the values they compute; for a
            method call ``args[0]`` is the tensor itself).
        kwargs: keyword arguments.
        module: the module instance for a module call, else ``None``.
    """

    target: Any
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Argument ``name`` passed at position ``index`` or by keyword (else ``default``)."""
        if len(self.args) > index:
            return self.args[index]
        return self.kwargs.get(name, default)


Condition = Callable[[OpCall], bool]


class OpTaxonomy:
    """Categories of ops: registrable, and queried for fx nodes, recorded ops and modules.

    Use the shared instance :data:`OPS`; a new one starts empty.
    """

    def __init__(self) -> None:
        self._entries: dict[Any, dict[str, list[Condition | None]]] = {}
        self._categories: dict[str, None] = {}

    # -- registration ------------------------------------------------------------------------
    def register(self, category: str, *targets: Any, when: Condition | None = None) -> None:
        """Put ``targets`` in ``category`` (a new category is created on first use).

        Args:
            category: the category name (e.g. :data:`ACTIVATION`, or one of your own).
            targets: function objects (``torch.cat``, ``F.relu``, ``operator.add``, your own),
                ``Tensor`` method names (``"view"``) or ``nn.Module`` classes (exact type).
            when: a condition on the :class:`OpCall` (``None``: always). A target can be registered
                several times; it belongs to the category when any of its conditions holds.

        Raises:
            ConfigError: the category is not a non-empty string or a target is none of the above.
        """
        if not isinstance(category, str) or not category:
            raise ConfigError(f"An op category must be a non-empty string, got {category!r}.")
        if not targets:
            raise ConfigError(f"OPS.register({category!r}) needs at least one target.")
        for t in targets:
            if not (isinstance(t, str) or callable(t)):
                raise ConfigError(
                    f"OPS.register({category!r}, ...): {t!r} is not a function, a Tensor method "
                    "name or an nn.Module class."
                )
            conds = self._entries.setdefault(t, {}).setdefault(category, [])
            if when not in conds:
                conds.append(when)
        self._categories.setdefault(category, None)

    def remove(self, category: str, *targets: Any) -> None:
        """Take ``targets`` out of ``category`` (every condition); unknown ones are ignored."""
        for t in targets:
            entry = self._entries.get(t)
            if entry is not None:
                entry.pop(category, None)
                if not entry:
                    del self._entries[t]

    def categories(self) -> list[str]:
        """Every category name, in registration order."""
        return list(self._categories)

    def members(self, category: str) -> list[Any]:
        """The targets registered in ``category`` (with or without a condition)."""
        return [t for t, cats in self._entries.items() if category in cats]

    # -- lookups -----------------------------------------------------------------------------
    def of_call(self, call: OpCall) -> frozenset[str]:
        """The categories of one normalised call."""
        key = type(call.module) if call.module is not None else call.target
        try:
            entry = self._entries.get(key)
        except TypeError:  # an unhashable callable
            return frozenset()
        if not entry:
            return frozenset()
        return frozenset(c for c, conds in entry.items() if any(_holds(w, call) for w in conds))

    def of_node(
        self, node: fx.Node, modules: Mapping[str, nn.Module] | nn.Module
    ) -> frozenset[str]:
        """The categories of an fx node (``call_function``, ``call_method`` or ``call_module``).

        Args:
            node: the node.
            modules: the traced root module, or its ``dict(named_modules())``, to resolve
                ``call_module`` targets.
        """
        if node.op in ("call_function", "call_method"):
            return self.of_call(OpCall(node.target, tuple(node.args), dict(node.kwargs)))
        if node.op == "call_module":
            m = _submodule(modules, str(node.target))
            if m is None:
                return frozenset()
            return self.of_call(OpCall(type(m), tuple(node.args), dict(node.kwargs), m))
        return frozenset()

    def of_op(
        self, func: Any, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
    ) -> frozenset[str]:
        """The categories of an op as a ``TorchFunctionMode`` sees it (``func(*args, **kwargs)``).

        ``Tensor`` methods are looked up by name (so ``"view"`` covers ``x.view(...)``), attribute
        reads (``x.shape``, seen as a descriptor's ``__get__``) as ``getattr(x, "shape")``.
        """
        return self.of_call(self.normalise(func, args, kwargs))

    def of_module(self, module: nn.Module) -> frozenset[str]:
        """The categories of a module (matched by its exact class, conditions on the module)."""
        return self.of_call(OpCall(type(module), (), {}, module))

    def node_is(
        self, node: fx.Node, category: str, modules: Mapping[str, nn.Module] | nn.Module
    ) -> bool:
        """Whether fx ``node`` is in ``category``."""
        return category in self.of_node(node, modules)

    def op_is(
        self,
        func: Any,
        category: str,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether the recorded op ``func(*args, **kwargs)`` is in ``category``."""
        return category in self.of_op(func, args, kwargs)

    def module_is(self, module: nn.Module, category: str) -> bool:
        """Whether ``module`` is in ``category``."""
        return category in self.of_module(module)

    def normalise(
        self, func: Any, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
    ) -> OpCall:
        """The :class:`OpCall` a recorded op is looked up as (see :meth:`of_op`)."""
        kwargs = dict(kwargs or {})
        owner = getattr(func, "__self__", None)
        if isinstance(owner, types.GetSetDescriptorType) and getattr(func, "__name__", "") == (
            "__get__"
        ):
            return OpCall(getattr, (args[0] if args else None, owner.__name__), {})
        try:
            known = func in self._entries
        except TypeError:
            known = False
        name = getattr(func, "__name__", None)
        if not known and isinstance(name, str) and getattr(torch.Tensor, name, None) is func:
            return OpCall(name, tuple(args), kwargs)
        return OpCall(func, tuple(args), kwargs)

    def __repr__(self) -> str:
        return f"OpTaxonomy({len(self._entries)} targets in {self.categories()})"


def _holds(cond: Condition | None, call: OpCall) -> bool:
    if cond is None:
        return True
    try:
        return bool(cond(call))
    except Exception:  # e.g. comparing an fx Node with a number: unknown, so not in the category
        return False


def _submodule(modules: Mapping[str, nn.Module] | nn.Module, name: str) -> nn.Module | None:
    if isinstance(modules, nn.Module):
        try:
            return modules.get_submodule(name)
        except AttributeError:
            return None
    return modules.get(name)


#: The shared taxonomy every part of torchcompress uses.
OPS = OpTaxonomy()


# ----------------------------------------------------------------------------------------------
# The built-in table
# ----------------------------------------------------------------------------------------------


def _have(owner: Any, *names: str) -> list[Any]:
    """The attributes of ``owner`` that exist in this torch version."""
    return [getattr(owner, n) for n in names if hasattr(owner, n)]


def _add(targets: Iterable[Any], *categories: str, when: Condition | None = None) -> None:
    targets = list(targets)
    for c in categories:
        OPS.register(c, *targets, when=when)


def _not_indices(index: int) -> Condition:
    def cond(c: OpCall) -> bool:
        if c.module is not None:
            return not getattr(c.module, "return_indices", False)
        return not c.arg(index, "return_indices", False)

    return cond


def _clips_at_zero(c: OpCall) -> bool:
    lo = c.module.min_val if c.module is not None else c.arg(1, "min_val", -1.0)
    hi = c.module.max_val if c.module is not None else c.arg(2, "max_val", 1.0)
    return bool(lo == 0 and hi > 0)


def _pads_zero(c: OpCall) -> bool:
    if c.module is not None:
        return bool(getattr(c.module, "value", 0) == 0)
    value = c.arg(3, "value", None)
    return c.arg(2, "mode", "constant") == "constant" and (value is None or value == 0)


def _upsample_mode(c: OpCall) -> str:
    if c.module is not None:
        return str(getattr(c.module, "mode", "nearest"))
    if c.target is getattr(F, "upsample_bilinear", None):
        return "bilinear"
    if c.target is getattr(F, "upsample_nearest", None):
        return "nearest"
    return str(c.arg(3, "mode", "nearest"))


def _nearest(c: OpCall) -> bool:
    return _upsample_mode(c) in ("nearest", "nearest-exact")


def _convex_upsample(c: OpCall) -> bool:
    return _upsample_mode(c) in (
        "nearest",
        "nearest-exact",
        "linear",
        "bilinear",
        "trilinear",
        "area",
    )


def _add_alpha_one(c: OpCall) -> bool:
    return c.kwargs.get("alpha", 1) == 1


_NON_TENSOR_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad"}

_relu = [F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_", nn.ReLU]
_relu6 = [F.relu6, nn.ReLU6]
_hardtanh = [F.hardtanh, F.hardtanh_, nn.Hardtanh]
_other_acts = [
    *_have(F, "gelu", "silu", "mish", "hardswish", "hardsigmoid", "leaky_relu", "leaky_relu_"),
    *_have(F, "elu", "elu_", "selu", "celu", "softplus", "softsign", "tanhshrink", "logsigmoid"),
    *_have(F, "sigmoid", "tanh", "prelu", "rrelu", "threshold", "hardshrink", "softshrink"),
    torch.sigmoid,
    torch.tanh,
    torch.selu,
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    *_have(nn, "GELU", "SiLU", "Mish", "Hardswish", "Hardsigmoid", "LeakyReLU", "ELU", "SELU"),
    *_have(nn, "CELU", "Softplus", "Softsign", "Tanhshrink", "LogSigmoid", "Sigmoid", "Tanh"),
    *_have(nn, "PReLU", "RReLU", "Threshold", "Hardshrink", "Softshrink"),
]
_add(_relu, ACTIVATION, RELU, RELU_LIKE, ELEMENTWISE)
_add(_relu6, ACTIVATION, RELU6, RELU_LIKE, ELEMENTWISE)
_add(_hardtanh, ACTIVATION, ELEMENTWISE)
_add(_hardtanh, RELU6, RELU_LIKE, when=_clips_at_zero)
_add(_other_acts, ACTIVATION, ELEMENTWISE)

_add_ops = [
    operator.add,
    operator.iadd,
    torch.add,
    "add",
    "add_",
    "__add__",
    "__radd__",
    "__iadd__",
]
_add(_add_ops, ADD, when=_add_alpha_one)
_arith_fns = [
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    operator.floordiv,
    operator.neg,
    operator.pow,
    *_have(torch, "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide"),
    *_have(torch, "neg", "abs", "exp", "log", "sqrt", "rsqrt", "square", "pow", "reciprocal"),
    *_have(torch, "clamp", "clip", "clamp_min", "clamp_max", "maximum", "minimum", "where"),
    *_have(torch, "sin", "cos", "erf", "sign", "round", "floor", "ceil", "addcmul", "addcdiv"),
    *_have(torch, "lerp", "masked_fill"),
]
_arith_methods = [
    f"{base}{suffix}"
    for base in ("add", "sub", "mul", "div", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow")
    for suffix in ("", "_")
] + [
    "__add__",
    "__radd__",
    "__iadd__",
    "__sub__",
    "__rsub__",
    "__isub__",
    "__mul__",
    "__rmul__",
    "__imul__",
    "__truediv__",
    "__rtruediv__",
    "__itruediv__",
    "__floordiv__",
    "__neg__",
    "__pow__",
    "__rpow__",
    "square",
    "reciprocal",
    "clamp",
    "clamp_",
    "clip",
    "clamp_min",
    "clamp_min_",
    "clamp_max",
    "clamp_max_",
    "maximum",
    "minimum",
    "sign",
    "round",
    "floor",
    "ceil",
    "masked_fill",
    "masked_fill_",
    "lerp",
]
_add([*_arith_fns, *_arith_methods], ELEMENTWISE)

_reshape = [
    *_have(torch, "flatten", "reshape", "squeeze", "unsqueeze", "permute", "transpose", "t"),
    *_have(torch, "movedim", "moveaxis", "swapaxes", "swapdims", "unflatten", "ravel"),
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "unflatten",
    "permute",
    "transpose",
    "t",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "movedim",
    "moveaxis",
    "swapaxes",
    "swapdims",
    "ravel",
    nn.Flatten,
    nn.Unflatten,
]
_index = [operator.getitem, "__getitem__", torch.narrow, "narrow", torch.select, "select"]
_index += [torch.index_select, "index_select"]
_identity = [nn.Identity, "contiguous", "clone", torch.clone, "detach", torch.detach]
_dropout = [
    *_have(F, "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout"),
    *_have(F, "feature_alpha_dropout"),
    torch.dropout,
    *_have(nn, "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"),
    *_have(nn, "FeatureAlphaDropout"),
]
_add(_reshape, RESHAPE, INT_EXACT, RANGE_PRESERVING)
_add(_index, INDEX, INT_EXACT, RANGE_PRESERVING)
_add(_identity, IDENTITY, INT_EXACT, RANGE_PRESERVING)
_add(_dropout, DROPOUT, INT_EXACT, RANGE_PRESERVING)

_add([torch.cat, *_have(torch, "concat", "concatenate")], CONCAT)
_add([torch.stack], STACK)
_split = [torch.split, "split", torch.chunk, "chunk", torch.tensor_split, "tensor_split"]
_split += [torch.unbind, "unbind", *_have(torch, "split_with_sizes"), "split_with_sizes"]
_add(_split, SPLIT)

# max pooling: F.max_poolNd(input, kernel, stride, padding, dilation, ceil_mode, return_indices)
_max_pool = [*_have(F, "max_pool1d", "max_pool2d", "max_pool3d")]
_max_pool += [*_have(torch, "max_pool1d", "max_pool2d", "max_pool3d")]
_max_pool += [*_have(nn, "MaxPool1d", "MaxPool2d", "MaxPool3d")]
_adaptive_max = [*_have(F, "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")]
_adaptive_max += [*_have(nn, "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d")]
_with_indices = [
    *_have(F, "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices"),
    *_have(F, "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices"),
    *_have(F, "adaptive_max_pool3d_with_indices"),
]
_avg_pool = [*_have(F, "avg_pool1d", "avg_pool2d", "avg_pool3d")]
_avg_pool += [*_have(F, "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d")]
_avg_pool += [*_have(nn, "AvgPool1d", "AvgPool2d", "AvgPool3d")]
_avg_pool += [*_have(nn, "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d")]
_lp_pool = [*_have(F, "lp_pool1d", "lp_pool2d", "lp_pool3d")]
_lp_pool += [*_have(nn, "LPPool1d", "LPPool2d", "LPPool3d")]
_add([*_max_pool, *_adaptive_max, *_with_indices, *_avg_pool, *_lp_pool], POOLING)
_add([*_max_pool, *_adaptive_max, *_with_indices], MAX_POOL)
_add(_max_pool, INT_EXACT, RANGE_PRESERVING, when=_not_indices(6))
_add(_adaptive_max, INT_EXACT, RANGE_PRESERVING, when=_not_indices(2))
_add(_avg_pool, AVG_POOL, RANGE_PRESERVING)
_add([torch.mean, "mean"], MEAN, RANGE_PRESERVING)

_upsample = [F.interpolate, *_have(F, "upsample", "upsample_nearest", "upsample_bilinear")]
_upsample += [nn.Upsample, *_have(nn, "UpsamplingNearest2d", "UpsamplingBilinear2d")]
_add(_upsample, UPSAMPLE)
_add(_upsample, INT_EXACT, when=_nearest)
_add(_upsample, RANGE_PRESERVING, when=_convex_upsample)

_zero_pad_modules = [*_have(nn, "ZeroPad1d", "ZeroPad2d", "ZeroPad3d")]
_const_pad_modules = [*_have(nn, "ConstantPad1d", "ConstantPad2d", "ConstantPad3d")]
_other_pad_modules = [
    *_have(nn, "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d"),
    *_have(nn, "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d"),
    *_have(nn, "CircularPad1d", "CircularPad2d", "CircularPad3d"),
]
_add([F.pad, *_zero_pad_modules, *_const_pad_modules, *_other_pad_modules], PAD)
_add([F.pad, *_const_pad_modules], ZERO_PAD, when=_pads_zero)
_add(_zero_pad_modules, ZERO_PAD)

_non_tensor_methods = ["size", "dim", "numel", "ndimension", "nelement", "stride", "element_size"]
_non_tensor_methods += ["is_contiguous", "is_floating_point", "data_ptr", "get_device", "item"]
_non_tensor_methods += ["tolist"]
_add(_non_tensor_methods, NON_TENSOR)
_add([getattr], NON_TENSOR, when=lambda c: c.arg(1, "name") in _NON_TENSOR_ATTRS)
