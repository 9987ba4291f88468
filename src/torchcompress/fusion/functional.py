"""The pure maths of BatchNorm folding: :func:`bn_scale_shift` and :func:`fold_bn_weights`.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) * gamma / sqrt(var + eps) +
beta``, so it folds into the layer that produced ``x`` (Ioffe & Szegedy 2015; Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
CVPR 2018, section 3.2). Tensor in, tensor out, differentiable.

Example:
    >>> import torch
    >>> mean, var, gamma = torch.ones(2), torch.ones(2), torch.tensor([2.0, 3.0])
    >>> scale, shift = bn_scale_shift(mean, var, 0.0, gamma)
    >>> scale.tolist(), shift.tolist()
    ([2.0, 3.0], [-2.0, -3.0])
"""

from __future__ import annotations

import torch

from ..errors import ShapeError

__all__ = ["bn_scale_shift", "fold_bn_weights"]


def bn_scale_shift(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel affine map of an eval-mode BatchNorm: ``y = x * scale + shift``.

    ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale``, with ``gamma = 1`` and
    ``beta = 0`` for a BatchNorm without affine parameters. Computed in at least float32 and
    differentiable (usable with batch statistics in quantization-aware training).

    Args:
        running_mean: the BN's mean per channel (running or batch statistics).
        running_var: the BN's variance per channel.
        eps: the BN's epsilon.
        weight: gamma, or ``None`` (no affine).
        bias: beta, or ``None`` (no affine).

    Returns:
        ``(scale, shift)``, each of shape ``(channels,)``.

    Example:
        >>> import torch
        >>> s, t = bn_scale_shift(torch.tensor([1.0]), torch.tensor([4.0]), 0.0)
        >>> s.item(), t.item()
        (0.5, -0.5)
    """
    dtype = torch.promote_types(running_var.dtype, torch.float32)
    var = running_var.to(dtype)
    mean = running_mean.to(dtype)
    inv_std = torch.rsqrt(var + eps)
    scale = inv_std if weight is None else weight.to(dtype) * inv_std
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(dtype)
    return scale, shift


def fold_bn_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    bn_weight: torch.Tensor | None = None,
    bn_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BatchNorm into the weight and bias of the layer before it.

    ``W' = W * scale`` along the output channels (dim 0, as in Linear and Conv weights, grouped and
    depthwise convolutions included) and ``b' = (b - mean) * scale + beta``, with ``scale = gamma /
    sqrt(var + eps)``. Computed in at least float32, returned in ``weight``'s dtype; differentiable,
    so quantization-aware training can fold before fake-quantizing (Jacob et al. 2018, section 3.2).

    Args:
        weight: the layer's weight, output channels first: ``(out, ...)``.
        bias: the layer's bias ``(out,)`` or ``None`` (treated as zero).
        running_mean: the BN's mean ``(out,)``.
        running_var: the BN's variance ``(out,)``.
        eps: the BN's epsilon.
        bn_weight: the BN's gamma, or ``None`` for a BN without affine parameters.
        bn_bias: the BN's beta, or ``None``.

    Returns:
        ``(folded_weight, folded_bias)``.

    Raises:
        ShapeError: the BN's channel count differs from the weight's output channels.

    Example:
        >>> import torch
        >>> w, b = fold_bn_weights(torch.ones(2, 3), None, torch.zeros(2), torch.ones(2), 0.0,
        ...                        torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.0]))
        >>> w[:, 0].tolist(), b.tolist()
        ([2.0, 3.0], [1.0, 0.0])
    """
    out = weight.shape[0]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t.shape != (out,):
            raise ShapeError(
                f"fold_bn_weights: {name} has shape {tuple(t.shape)} but the weight has {out} "
                f"output channels (weight shape {tuple(weight.shape)})."
            )
    scale, shift = bn_scale_shift(running_mean, running_var, eps, bn_weight, bn_bias)
    w = weight.to(scale.dtype) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias.to(scale.dtype) * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)
