"""Profiler costs of masked layers: dense work done, non-zeros, and what a sparse kernel would need.

torch's parametrizations give every masked module its own class (``ParametrizedLinear``, ...), so
:func:`masked_cost` is registered for that class when the mask is applied
(:func:`~torchcompress.sparsity.masking.apply_mask`) and when a masked model is loaded. The MACs
come from the layer's :class:`~torchcompress.layers.Geometry`.

Example:
    >>> import torch
    >>> from torchcompress.sparsity.costs import describe_structure
    >>> describe_structure(torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 4.0]]))
    '2:4'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..costs import LayerCost, lookup_cost
from ..layers import layer_kind

__all__ = ["describe_structure", "masked_cost"]


def describe_structure(w_canonical: torch.Tensor) -> str:
    """How the zeros of a canonical ``(out, in, *k)`` weight are laid out.

    ``"2:4"`` when every 4 consecutive inputs hold exactly 2 non-zeros, ``"unstructured, fits 2:4"``
    when they hold at most 2 (sparser, still runnable on 2:4 kernels), ``"channel"`` when the zeros
    are whole output rows, else ``"unstructured"`` (``"dense"`` without zeros).
    """
    nz = w_canonical != 0
    if bool(nz.all()):
        return "dense"
    n_in = w_canonical.shape[1]
    if n_in % 4 == 0:
        blocks = nz.movedim(1, -1).reshape(-1, 4).sum(-1)
        if bool((blocks == 2).all()):
            return "2:4"
        if bool((blocks <= 2).all()):
            return "unstructured, fits 2:4"
    rows = nz.reshape(nz.shape[0], -1)
    if bool((rows.all(1) | ~rows.any(1)).all()):
        return "channel"
    return "unstructured"


def masked_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    """Cost of a masked layer: the dense kernel's MACs, with non-zeros counted honestly.

    A masked module of another family (a fake-quant layer that kept the mask of the layer it
    replaced) is costed by that family's function, with the non-zeros and effective MACs of the
    masked weight on top: the profile reports both savings.
    """
    kind = layer_kind(module)
    base = lookup_cost(module, skip=masked_cost)
    if kind is None and base is not None:
        return _refine(base(module, args, kwargs, output), module)
    w = module.weight.detach()
    numel = w.numel()
    nnz = int((w != 0).sum())
    bias = getattr(module, "bias", None)
    b_numel = bias.numel() if isinstance(bias, torch.Tensor) else 0
    b_nnz = int((bias != 0).sum()) if isinstance(bias, torch.Tensor) else 0
    out = output if isinstance(output, torch.Tensor) else None
    macs = effective = 0
    structure = "masked"
    if kind is not None:
        if out is not None:
            geo = kind.geometry(module)
            positions = geo.output_positions(out)  # every weight is used once per position
            macs, effective = geo.macs(positions), positions * nnz
        structure = describe_structure(kind.to_canonical(module, w))
    sparsity = 1.0 - nnz / numel if numel else 0.0
    note = f"{structure} mask, {sparsity:.0%} zeros: dense kernel, no speed-up"
    if "2:4" in structure:
        note += " (CUDA 2:4 kernels: tc.finalize(semi_structured=True))"
    elif structure == "channel":
        note += " (tc.prune_channels removes channels)"
    return LayerCost(
        macs=macs,
        params=numel + b_numel,
        nonzero_params=nnz + b_nnz,
        effective_macs=effective,
        note=note,
        counts_children=True,
    )


def _refine(cost: LayerCost, module: nn.Module) -> LayerCost:
    """``cost`` of a family's layer with the zeros of its masked weight (and bias) counted."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or not w.numel():
        return cost
    numel, nnz = w.numel(), int(torch.count_nonzero(w.detach()))
    bias = getattr(module, "bias", None)
    b_numel = bias.numel() if isinstance(bias, torch.Tensor) else 0
    b_nnz = int(torch.count_nonzero(bias.detach())) if isinstance(bias, torch.Tensor) else 0
    params = cost.params if cost.params is not None else numel + b_numel
    cost.nonzero_params = params - (numel - nnz) - (b_numel - b_nnz)
    # every weight takes part in the same number of MACs: the scaling is exact
    cost.effective_macs = (
        cost.macs // numel * nnz if cost.macs % numel == 0 else round(cost.macs * nnz / numel)
    )
    zeros = f"{1 - nnz / numel:.0%} zeros (mask)"
    cost.note = f"{cost.note}; {zeros}" if cost.note else zeros
    return cost
