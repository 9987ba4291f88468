"""Which Linear/Conv -> BatchNorm pairs can be folded, and the folded layer: :func:`fuse_conv_bn`.

Only plain ``nn.Linear``/``nn.Conv1d/2d/3d`` followed by ``nn.BatchNorm1d/2d/3d`` (or
``nn.SyncBatchNorm``) with running statistics are folded; layers wrapped by a compression family,
subclasses, parametrized or hooked layers are not, with one exception: a plain layer whose weight
carries a form that moves onto a replacement (a pruning mask, see :mod:`torchcompress.forms`) is
folded from its original weight, and the folded layer gets the mask back (the BatchNorm scales
each output channel, so the zeros stay zeros).

Example:
    >>> import torch
    >>> conv, bn = torch.nn.Conv1d(2, 3, 1), torch.nn.BatchNorm1d(3).eval()
    >>> fused = fuse_conv_bn(conv, bn)
    >>> type(fused).__name__, fused.bias is not None
    ('Conv1d', True)
"""

from __future__ import annotations

import torch
from torch import nn

from .. import forms
from ..errors import UnsupportedModuleError
from ..layers import stored_weight
from ..tracing import is_registered_leaf
from .functional import fold_bn_weights

__all__ = ["fuse_conv_bn"]

#: layer type -> BatchNorm types it can be folded with (SyncBatchNorm goes with any of them)
_FUSABLE: dict[type[nn.Module], tuple[type[nn.Module], ...]] = {
    nn.Linear: (nn.BatchNorm1d, nn.SyncBatchNorm),
    nn.Conv1d: (nn.BatchNorm1d, nn.SyncBatchNorm),
    nn.Conv2d: (nn.BatchNorm2d, nn.SyncBatchNorm),
    nn.Conv3d: (nn.BatchNorm3d, nn.SyncBatchNorm),
}
_BN_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
)
_PAIR_TYPES = tuple(_FUSABLE) + _BN_TYPES


def _plain_type(m: nn.Module) -> type[nn.Module]:
    """The class of ``m``, or for a plain layer whose weight alone carries a carried form (a
    pruning mask), the plain class under torch's generated ``Parametrized<Class>``."""
    if _carried_weight(m):
        return type(m).__bases__[0]
    return type(m)


def _carried_weight(m: nn.Module) -> bool:
    """``m`` is parametrized on its weight only, by forms that move onto a replacement."""
    params = getattr(m, "parametrizations", None)
    if not params or set(params) != {"weight"}:
        return False
    return forms.carriable(m)


def _check_pair_types(layer: nn.Module, bn: nn.Module, layer_name: str, bn_name: str) -> str | None:
    """Why ``(layer, bn)`` cannot be folded, judged from the modules alone (``None``: it can)."""
    if _plain_type(layer) not in _FUSABLE:
        if isinstance(layer, tuple(_FUSABLE)):
            return (
                f"{layer_name!r} is a {type(layer).__name__}, not a plain Linear/Conv1d/2d/3d "
                "(layers wrapped or subclassed by a compression technique are not fused)"
            )
        return f"{layer_name!r} is a {type(layer).__name__}, not a Linear/Conv1d/Conv2d/Conv3d"
    if type(bn) not in _BN_TYPES:
        return f"{bn_name!r} is a {type(bn).__name__}, not a BatchNorm1d/2d/3d"
    if type(bn) not in _FUSABLE[_plain_type(layer)]:
        return (
            f"{bn_name!r} is a {type(bn).__name__}, which does not normalise the output of a "
            f"{type(layer).__name__}"
        )
    if (_is_parametrized(layer) and not _carried_weight(layer)) or _is_parametrized(bn):
        return (
            "the layer or the BN is parametrized (torch.nn.utils.parametrize) other than by a "
            "pruning mask on the weight alone"
        )
    if _has_hooks(layer) or _has_hooks(bn):
        return "the layer or the BN has forward hooks (e.g. a torch.nn.utils.prune mask)"
    if not layer.weight.is_floating_point():
        return f"{layer_name!r} has a non-floating weight ({layer.weight.dtype})"
    if bn.running_mean is None or bn.running_var is None:
        return f"{bn_name!r} keeps no running statistics (track_running_stats=False)"
    out = layer.weight.shape[0]
    if bn.num_features != out:
        return f"{bn_name!r} has {bn.num_features} channels but {layer_name!r} produces {out}"
    return None


def _is_parametrized(m: nn.Module) -> bool:
    return bool(getattr(m, "parametrizations", None))


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def fuse_conv_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new plain layer computing ``bn(layer(x))`` in eval mode (BatchNorm folded in).

    Args:
        layer: a plain ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` (any groups,
            stride, dilation, padding mode; with or without bias).
        bn: the BatchNorm after it, with running statistics (affine or not).

    Returns:
        A layer of the same class, with a bias, on the same device and dtype, in ``layer``'s
        train/eval mode. ``layer`` and ``bn`` are not modified.

    Raises:
        UnsupportedModuleError: the pair cannot be folded (the message says why).

    Example:
        >>> import torch
        >>> conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4).eval()
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(fuse_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-6)
        True
    """
    reason = _check_pair_types(layer, bn, type(layer).__name__, type(bn).__name__)
    if reason is not None:
        raise UnsupportedModuleError(f"Cannot fold the BatchNorm: {reason}.")
    w, b = fold_bn_weights(
        stored_weight(layer).detach(),
        None if layer.bias is None else layer.bias.detach(),
        bn.running_mean,
        bn.running_var,
        bn.eps,
        None if bn.weight is None else bn.weight.detach(),
        None if bn.bias is None else bn.bias.detach(),
    )
    weight = stored_weight(layer)
    factory = {"device": weight.device, "dtype": weight.dtype}
    new: nn.Module
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, layer.out_features, bias=True, **factory)
    else:
        new = _plain_type(layer)(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=True,
            padding_mode=layer.padding_mode,
            **factory,
        )
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    new.weight.requires_grad_(weight.requires_grad)
    new.bias.requires_grad_(weight.requires_grad)
    new.train(layer.training)
    for carried in forms.carry_over(layer, new):
        if not carried.kept:
            raise UnsupportedModuleError(f"Cannot fold the BatchNorm: {carried.note}.")
    return new


def _is_compressed(m: nn.Module) -> bool:
    """A layer made by a compression family (a registered leaf, or a class with its own registered
    cost), or a parametrized one: left alone, and never traced into."""
    if _plain_type(m) in _PAIR_TYPES:
        return False
    return _is_parametrized(m) or is_registered_leaf(m)
