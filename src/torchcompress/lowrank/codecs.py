"""Save/load and profiler support for the factorized layers.

Importing :mod:`torchcompress.lowrank` registers:

- an :class:`~torchcompress.io.ModuleCodec` per factorized layer type, so :func:`torchcompress.save`
  records each layer's shape and rank and :func:`torchcompress.load` rebuilds it in a fresh model
  before loading the tensors (the factors are plain parameters of the ``first``/``second`` children);
- a :func:`~torchcompress.costs.register_cost` function, so :func:`torchcompress.profile` counts a
  factorized layer at its real cost, from the :class:`~torchcompress.layers.Geometry` of the dense
  map it represents: ``r*(in+out)`` MACs per token for a Linear, ``groups*r*(out/g + in/g*k*k)``
  per output position for a convolution, and the params it holds.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..costs import LayerCost, register_cost
from ..io import ModuleCodec, register_codec
from ..select import module_device_dtype
from . import functional as F
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


@register_cost(LowRankLinear, LowRankConv1d, LowRankConv2d)
def _lowrank_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    """``groups * r * (m + n)`` MACs per output position of the dense map the layer represents."""
    m: LowRankModule = module  # type: ignore[assignment]
    geo = m.dense_geometry()
    per_position = F.macs_per_position(geo, m.rank)
    g = geo.groups
    return LayerCost(
        macs=geo.output_positions(output) * per_position,
        params=F.params_at(geo, m.rank),
        note=f"low-rank r={m.rank}{f'/group (g={g})' if g > 1 else ''} "
        f"({per_position / geo.macs(1):.2f}x dense MACs)",
        counts_children=True,
    )


def _is_lowrank(module: nn.Module) -> bool:
    return isinstance(module, LowRankModule)
