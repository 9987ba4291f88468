"""Profiler costs of the quantization modules (registered on import): MACs and parameters of the
layer each replaces, and the bytes it really stores."""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from ..costs import LayerCost, register_cost
from .int_layer import IntLayer
from .kmeans import KMeansLayer
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, QuantLayer, QuantLinear

__all__: list[str] = []


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _macs(weight_shape: tuple[int, ...], output: Any) -> int:
    """Multiply-adds of a dense layer: one row of the 2-D weight per output element."""
    n_out = output.numel() if isinstance(output, torch.Tensor) else 0
    return n_out * int(math.prod(weight_shape[1:]))


def _params(weight_shape: tuple[int, ...], bias: torch.Tensor | None) -> int:
    return int(math.prod(weight_shape)) + (bias.numel() if bias is not None else 0)


@register_cost(QuantLinear, QuantConv1d, QuantConv2d)
def _quant_layer_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    m = cast(QuantLayer, module)
    return LayerCost(
        macs=_macs(tuple(m.weight.shape), output),
        params=_params(tuple(m.weight.shape), m.bias),
        bytes=_state_bytes(m),
        note="fake-quant (float weights, simulated integers; tc.convert stores integers)",
    )


@register_cost(IntLayer)
def _int_layer_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    m = cast(IntLayer, module)
    params = _params(m.weight_shape, m.bias)
    w = m.wfmt
    fmt = "float weights" if w is None else f"int{w['bits']} weights"
    if w is not None and w["bits"] <= 4:
        fmt += " (packed)"
    return LayerCost(
        macs=_macs(m.weight_shape, output),
        params=params,
        nonzero_params=params,
        bytes=m.stored_bytes(),
        note=f"{fmt}: {m.kernel_note()}",
    )


@register_cost(KMeansLayer)
def _kmeans_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    m = cast(KMeansLayer, module)
    return LayerCost(
        macs=_macs(m.weight_shape, output),
        params=_params(m.weight_shape, m.bias),
        bytes=_state_bytes(m),
        note=f"{m.bits}-bit codebook: dequantized on the fly",
    )


@register_cost(FakeQuantize)
def _fq_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    return LayerCost(macs=0, params=0, bytes=_state_bytes(module), note="activation quantizer")
