"""The cost registry: how :func:`torchcompress.profile` counts each kind of layer.

The profiler counts plain layers (Linear, Conv, attention) itself. A technique that introduces its own
module (a quantized, masked or factorized layer) declares that module's cost here, so the profile of
a compressed model counts what the compressed layer really executes and stores.

A cost function receives the module, the positional and keyword inputs of one forward call and its
output, and returns a :class:`LayerCost`. Lookup walks the module's MRO, so a function registered for
``nn.Linear`` also covers its subclasses unless they register their own.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.costs import LayerCost, register_cost, lookup_cost
    >>> class Scale(nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> @register_cost(Scale)
    ... def _scale_cost(module, args, kwargs, output):
    ...     return LayerCost(macs=0, note="elementwise")
    >>> lookup_cost(Scale()) is _scale_cost
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["CostFn", "LayerCost", "lookup_cost", "register_cost", "registered_cost_types"]


@dataclass
class LayerCost:
    """What one forward call of a layer costs.

    Attributes:
        macs: multiply-accumulates the layer's kernels execute (dense work actually done).
        flops: floating-point (or integer) operations; ``None`` means ``2 * macs``.
        params: parameters the layer holds; ``None`` means "count its tensors".
        nonzero_params: non-zero parameters; ``None`` means "count them".
        effective_macs: MACs a sparsity-aware kernel would need (non-zero weights only);
            ``None`` means equal to ``macs``.
        bytes: bytes of the layer's stored state; ``None`` means "sum its state_dict tensors".
        note: a short remark shown in the profile table (e.g. "int8 kernel", "2:4 mask, dense kernel").
        counts_children: when true, the profiler does not descend into the layer's submodules
            (their work is included in this cost).
    """

    macs: int = 0
    flops: int | None = None
    params: int | None = None
    nonzero_params: int | None = None
    effective_macs: int | None = None
    bytes: int | None = None
    note: str = ""
    counts_children: bool = True


CostFn = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], LayerCost]

_COSTS: dict[type[nn.Module], CostFn] = {}


def register_cost(*module_types: type[nn.Module]) -> Callable[[CostFn], CostFn]:
    """Decorator registering a cost function for one or more module classes.

    A later registration for the same class replaces the earlier one.
    """
    if not module_types or not all(
        isinstance(t, type) and issubclass(t, nn.Module) for t in module_types
    ):
        raise TypeError("register_cost takes one or more nn.Module subclasses.")

    def decorator(fn: CostFn) -> CostFn:
        for t in module_types:
            _COSTS[t] = fn
        return fn

    return decorator


def lookup_cost(module: nn.Module, *, skip: CostFn | None = None) -> CostFn | None:
    """The cost function for ``module``'s class (nearest in its MRO), or ``None``.

    Args:
        module: the module.
        skip: a cost function to pass over (a cost that refines another one, such as a pruning
            mask's on top of a fake-quant layer's, finds the one it refines).
    """
    for cls in type(module).__mro__:
        fn = _COSTS.get(cls)  # type: ignore[arg-type]
        if fn is not None and fn is not skip:
            return fn
    return None


def registered_cost_types() -> list[type[nn.Module]]:
    """Every module class with a registered cost function."""
    return list(_COSTS)
