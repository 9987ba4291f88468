"""Profiler costs of the quantization modules (registered on import): MACs and parameters of the
layer each replaces (from its :class:`~torchcompress.layers.Geometry`), and the bytes it really
stores."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..costs import LayerCost, register_cost
from ..layers import Geometry
from .int_layer import IntLayer
from .kmeans import KMeansLayer
from .modules import FakeQuantize, QuantizedModule, QuantLayer

__all__: list[str] = []


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _macs(module: QuantizedModule, output: Any) -> int:
    """Multiply-adds of the dense layer the module stands for (:meth:`Geometry.macs`)."""
    if not isinstance(output, torch.Tensor):
        return 0
    geo: Geometry = module.geometry
    return geo.macs(geo.output_positions(output))


def _params(module: QuantizedModule, bias: torch.Tensor | None) -> int:
    return module.geometry.out_features * module.geometry.n + (
        bias.numel() if bias is not None else 0
    )


@register_cost(QuantLayer)
def _quant_layer_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    m = cast(QuantLayer, module)
    return LayerCost(
        macs=_macs(m, output),
        params=_params(m, m.bias),
        bytes=_state_bytes(m),
        note="fake-quant (float weights, simulated integers; tc.convert stores integers)",
    )


@register_cost(IntLayer)
def _int_layer_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    m = cast(IntLayer, module)
    params = _params(m, m.bias)
    w = m.wfmt
    fmt = "float weights" if w is None else f"int{w['bits']} weights"
    if w is not None and w["bits"] <= 4:
        fmt += " (packed)"
    stored = m.stored_bytes()
    cost = LayerCost(
        macs=_macs(m, output),
        params=params,
        bytes=stored,
        note=f"{fmt}: {m.kernel_note()}{_run_time(stored, m.runtime_bytes())}",
    )
    if m.weights_of:  # a later call of a shared layer: its weights are counted once, there
        cost.params = cost.nonzero_params = 0
        cost.note = f"{fmt} of {m.weights_of}: {m.kernel_note()}"
        return cost
    # weights whose integer is the zero point are exact zeros (a pruned layer's, kept by convert)
    return _with_zeros(cost, m.dequantized_weight(), m.bias)


def _run_time(stored: int, held: int) -> str:
    """``"; 1.2 MB in memory at run time"`` where the layer holds more than it stores."""
    if held <= stored:
        return ""
    return f"; {_human(held)} in memory at run time"


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"


def _with_zeros(cost: LayerCost, weight: torch.Tensor, bias: torch.Tensor | None) -> LayerCost:
    """``cost`` with the exact zeros of the stored ``weight`` (and ``bias``) counted: non-zero
    parameters, and the MACs a sparsity-aware kernel would need (a pruned layer's zeros, kept by
    :func:`torchcompress.convert` and by a k-means zero code)."""
    numel, nnz = weight.numel(), int(torch.count_nonzero(weight))
    bias_zeros = 0 if bias is None else int((bias == 0).sum())
    cost.nonzero_params = (cost.params or 0) - (numel - nnz) - bias_zeros
    if numel and nnz < numel:
        # every weight takes part in the same number of MACs: the scaling is exact
        macs = cost.macs
        cost.effective_macs = (
            macs // numel * nnz if macs % numel == 0 else round(macs * nnz / numel)
        )
        cost.note += f"; {1 - nnz / numel:.0%} zero weights"
    return cost


@register_cost(KMeansLayer)
def _kmeans_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    m = cast(KMeansLayer, module)
    stored = _state_bytes(m)
    cost = LayerCost(
        macs=_macs(m, output),
        params=_params(m, m.bias),
        bytes=stored,
        note=f"{m.bits}-bit codebook: {m.runtime_note()}{_run_time(stored, m.runtime_bytes())}",
    )
    return _with_zeros(cost, m.weight, m.bias)


@register_cost(FakeQuantize)
def _fq_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    return LayerCost(macs=0, params=0, bytes=_state_bytes(module), note="activation quantizer")
