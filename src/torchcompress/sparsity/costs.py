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

from ..costs import LayerCost
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
    """Cost of a masked Linear/Conv: the dense kernel's MACs, with non-zeros counted honestly."""
    kind = layer_kind(module)
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
