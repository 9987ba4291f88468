"""Save/load and profiler support for the factorized layers.

Importing :mod:`torchcompress.lowrank` registers:

- an :class:`~torchcompress.io.ModuleCodec` per factorized layer type, so :func:`torchcompress.save`
  records each layer's shape and rank and :func:`torchcompress.load` rebuilds it in a fresh model
  before loading the tensors (the factors are plain parameters of the ``first``/``second`` children);
- a :func:`~torchcompress.costs.register_cost` function per type, so :func:`torchcompress.profile`
  counts a factorized layer at its real cost: ``r*(in+out)`` MACs per token for a Linear,
  ``groups*r*(out/g + in/g*k*k)`` per output position for a convolution, and the params it holds.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..costs import LayerCost, register_cost
from ..io import ModuleCodec, register_codec
from ..select import module_device_dtype
from .modules import LowRankConv1d, LowRankConv2d, LowRankLinear, LowRankModule, _LowRankConvNd

__all__ = ["LowRankConvCodec", "LowRankLinearCodec"]


def _place(new: nn.Module, current: nn.Module) -> nn.Module:
    device, dtype = module_device_dtype(current)
    if device is not None:
        new = new.to(device=device)
    if dtype is not None:
        new = new.to(dtype=dtype)
    new.train(current.training)
    return new


class LowRankLinearCodec(ModuleCodec):
    """Rebuilds a :class:`~torchcompress.lowrank.LowRankLinear` (shape, rank, bias)."""

    name = "lowrank_linear"

    def matches(self, module: nn.Module) -> bool:
        return type(module) is LowRankLinear

    def encode(self, module: nn.Module) -> dict[str, Any]:
        m: LowRankLinear = module  # type: ignore[assignment]
        return {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "rank": m.rank,
            "bias": m.bias is not None,
        }

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        if type(current) is LowRankLinear and self.encode(current) == spec:
            return current
        return _place(LowRankLinear(**spec), current)


class LowRankConvCodec(ModuleCodec):
    """Rebuilds a :class:`~torchcompress.lowrank.LowRankConv1d` / ``LowRankConv2d``."""

    name = "lowrank_conv"

    def matches(self, module: nn.Module) -> bool:
        return type(module) in (LowRankConv1d, LowRankConv2d)

    def encode(self, module: nn.Module) -> dict[str, Any]:
        m: _LowRankConvNd = module  # type: ignore[assignment]
        return {"dims": m._dims, **m.conv_kwargs()}

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        if type(current) in (LowRankConv1d, LowRankConv2d) and self.encode(current) == spec:
            return current
        kw = dict(spec)
        dims = kw.pop("dims")
        cls = LowRankConv1d if dims == 1 else LowRankConv2d
        for k in ("kernel_size", "stride", "dilation"):
            kw[k] = tuple(kw[k])
        if not isinstance(kw["padding"], str):
            kw["padding"] = tuple(kw["padding"])
        return _place(cls(**kw), current)


register_codec(LowRankLinearCodec())
register_codec(LowRankConvCodec())


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@register_cost(LowRankLinear)
def _lowrank_linear_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    m: LowRankLinear = module  # type: ignore[assignment]
    x = args[0] if args else next(iter(kwargs.values()))
    tokens = x.numel() // m.in_features
    macs = tokens * m.rank * (m.in_features + m.out_features)
    dense = m.in_features * m.out_features
    return LayerCost(
        macs=macs,
        params=_params(m),
        note=f"low-rank r={m.rank} ({m.rank * (m.in_features + m.out_features) / dense:.2f}x dense MACs)",
        counts_children=True,
    )


@register_cost(LowRankConv1d, LowRankConv2d)
def _lowrank_conv_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    m: _LowRankConvNd = module  # type: ignore[assignment]
    positions = output.numel() // m.out_channels
    g = m.groups
    n_g = (m.in_channels // g) * int(m.first.weight[0, 0].numel())
    m_g = m.out_channels // g
    per_pos = g * m.rank * (n_g + m_g)
    return LayerCost(
        macs=positions * per_pos,
        params=_params(m),
        note=f"low-rank r={m.rank}{f'/group (g={g})' if g > 1 else ''} ({per_pos / (g * m_g * n_g):.2f}x dense MACs)",
        counts_children=True,
    )


def _is_lowrank(module: nn.Module) -> bool:
    return isinstance(module, LowRankModule)
