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

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError

__all__ = [
    "ACTIVATION",
    "ADD",
    "ALONG_DIM",
    "ATTENTION",
    "AVG_POOL",
    "CAST",
    "COMPARE",
    "CONCAT",
    "DROPOUT",
    "ELEMENTWISE",
    "FACTORY",
    "IDENTITY",
    "INDEX",
    "INT_EXACT",
    "LIKE",
    "LINEAR",
    "MATMUL",
    "MAX_POOL",
    "MEAN",
    "NON_TENSOR",
    "OPS",
    "PAD",
    "PERMUTE",
    "POOLING",
    "RANGE_PRESERVING",
    "REDUCE",
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
#: permutations of dimensions: permute, transpose, ``t``, movedim, swapaxes, ``x.T`` / ``x.mT``
PERMUTE = "permute"
#: comparisons and logical ops: element-wise maps with boolean results (also :data:`ELEMENTWISE`)
COMPARE = "compare"
#: conversions that keep the shape and every element's place: ``to``, ``float``, ``type_as``, ...
CAST = "cast"
#: shape-preserving maps that mix the elements along one dimension: softmax, log_softmax,
#: ``F.normalize``, cumsum
ALONG_DIM = "along_dim"
#: reductions over dimensions: sum, mean, amax, amin, max/min along a dimension, prod,
#: logsumexp, var, std
REDUCE = "reduce"
#: matrix products of two tensors (batched, broadcasting): matmul, ``@``, mm, bmm
MATMUL = "matmul"
#: the functional linear map ``F.linear(x, weight, bias)``
LINEAR = "linear"
#: ``F.scaled_dot_product_attention(q, k, v, ...)``
ATTENTION = "attention"
#: new tensors shaped like their input: zeros_like, ones_like, full_like, empty_like, rand_like, ...
LIKE = "like"
#: new tensors of an explicit size whose tensor argument only gives dtype and device:
#: ``x.new_zeros(...)``, ``x.new_ones(...)``, ``x.new_full(...)``, ``x.new_empty(...)``
FACTORY = "factory"


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
