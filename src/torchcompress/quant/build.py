"""Building quantized layers: target selection, fake-quant layers and their quantizers, ranges.

The helpers every quantization verb shares (:func:`torchcompress.quantize`,
:func:`torchcompress.prepare_qat`, :func:`torchcompress.kmeans_quantize`, the graph planner and
:func:`torchcompress.convert`); the verbs import them, never the other way round.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, NumericalError, UnsupportedModuleError
from ..select import read_by_parent, select_modules, set_module
from . import functional as QF
from . import kinds
from .kinds import quantizable_types
from .modules import FakeQuantize, QuantizedModule, QuantLayer, quant_layer_class
from .spec import IntSpec, QuantConfig

__all__ = [
    "build_quant_layer",
    "finalize_for_convert",
    "forward_restored_on_error",
    "integer_ranges",
    "make_activation_quant",
    "quantizable_types",
    "select_quant_targets",
]

log = logging.getLogger(__name__)


def _not_read_by_parent(
    model: nn.Module, include: str | Sequence[str] | None, family: str
) -> Callable[[str, nn.Module], bool]:
    """A selection predicate leaving out the children whose parent reads their weights directly
    (``nn.MultiheadAttention.out_proj``): a quantized replacement would never run.

    Raises:
        UnsupportedModuleError: such a child is named exactly in ``include``.
    """
    owned = read_by_parent(model)
    named = [include] if isinstance(include, str) else list(include or [])
    for name in named:
        if name in owned:
            raise UnsupportedModuleError(
                f"{owned[name]}, so a {family} replacement would never run. Remove it from include=."
            )
    skipped = sorted(owned)
    if skipped:
        log.info("%s: left in float (read by their parent): %s", family, ", ".join(skipped))
    return lambda name, _module: name not in owned


def select_quant_targets(
    model: nn.Module, include: str | Sequence[str] | None, exclude: Any, family: str
) -> list[tuple[str, nn.Module]]:
    """The layers a quantization verb (``quantize``, ``prepare_qat``, ``kmeans_quantize``) replaces.

    Linear, Conv1d, Conv2d and HF Conv1D picked by ``include``/``exclude``, leaving out layers
    that are already quantized and children whose parent reads their weights directly.
    """
    return select_modules(
        model,
        include,
        exclude,
        types=quantizable_types(),
        predicate=_not_read_by_parent(model, include, family),
        skip_types=(QuantizedModule,),
        family=family,
    )


@contextlib.contextmanager
def forward_restored_on_error(model: nn.Module) -> Iterator[None]:
    """Put back the model's instance-level ``forward`` (graph mode binds one) if the block fails."""
    bound = model.__dict__.get("forward")
    try:
        yield
    except BaseException:
        if bound is None:
            model.__dict__.pop("forward", None)
        else:
            model.__dict__["forward"] = bound
        raise


def integer_ranges(
    config: QuantConfig, reduce: str
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Integer ranges ``(weights, activations)`` of ``config`` after ``reduce_range`` (resolved)."""
    w, a = config.weight, config.activation
    wr = (w.qmin, w.qmax) if w is not None else None
    ar = (a.qmin, a.qmax) if a is not None else None
    pair = w is not None and a is not None and w.bits == 8 and a.bits == 8 and w.signed
    if pair and reduce == "weight":
        wr = QF.qrange(7, True)
    elif pair and reduce == "activation":
        ar = QF.qrange(7, a.signed)  # type: ignore[union-attr]
    return wr, ar


def build_quant_layer(
    old: nn.Module,
    name: str,
    config: QuantConfig,
    *,
    reduce: str = "none",
    with_input_quant: bool = True,
) -> QuantLayer:
    """The fake-quant replacement of ``old`` (Linear, Conv1d, Conv2d or HF Conv1D) for ``config``.

    The original parameters are taken over (HF ``Conv1D``'s weight transposed). Weight ranges are
    computed here (the weight is observed once); activation quantizers are left observing, to be
    calibrated (static), or are dynamic.

    Raises:
        ConfigError: the group size does not divide the layer's input dimension.
        NumericalError: the weight holds NaN or Inf.
    """
    kind = kinds.kind_of(old)
    if kind is None:
        raise ConfigError(f"{name!r}: cannot quantize a {type(old).__name__}.")
    # "meta": no throw-away allocation; the original parameters are taken over
    layer = quant_layer_class(kind.runs_as)(
        **kind.geometry(old), bias=old.bias is not None, device="meta"
    )
    layer.source = kind.source
    layer.weight = kind.canonical_weight(old)
    layer.bias = old.bias
    if not bool(torch.isfinite(layer.weight.detach()).all()):
        raise NumericalError(
            f"The weight of {name!r} ({kinds.describe(old)}) holds NaN or Inf; it cannot be "
            "quantized."
        )
    wr, ar = integer_ranges(config, reduce)
    rows, cols = layer.weight_shape2d
    if config.weight is not None:
        ws = config.weight
        if ws.group_size is not None and cols % ws.group_size:
            raise ConfigError(
                f"IntSpec.group_size={ws.group_size} does not divide the input dimension of "
                f"{name!r} ({kinds.describe(old)}: {cols} inputs per output channel). Pick a "
                f"divisor of {cols}, or exclude the layer."
            )
        wq = FakeQuantize(
            ws,
            role="weight",
            observer=config.weight_observer_spec,
            quant_min=wr[0],  # type: ignore[index]
            quant_max=wr[1],  # type: ignore[index]
            shape=(rows, cols),
            name=name,
        ).to(layer.weight.device)
        wq.observe(layer.weight.detach().reshape(rows, cols))
        wq.calibrate()
        wq.observer.reset()  # type: ignore[union-attr]
        layer.weight_quant = wq
    if config.activation is not None and with_input_quant:
        layer.input_quant = make_activation_quant(config, name, kind=layer.kind, arange=ar).to(
            layer.weight.device
        )
    return layer


def make_activation_quant(
    config: QuantConfig,
    name: str,
    *,
    kind: str = "linear",
    arange: tuple[int, int] | None = None,
    spec: IntSpec | None = None,
) -> FakeQuantize:
    """An activation quantizer for ``config`` (observing if static, dynamic otherwise), for the
    input of a layer of ``kind``."""
    a = spec or config.activation
    if a is None:
        raise ConfigError(f"{name!r}: the config quantizes no activation.")
    if a.granularity == "token" and not kinds.runs_as(kind).token_inputs:
        log.warning(
            "%s is a %s: per-token activation scales apply to Linear inputs; "
            "using one dynamic scale per tensor for it.",
            name,
            kind,
        )
        a = a.replace(granularity="tensor")
    lo, hi = arange if arange is not None else (a.qmin, a.qmax)
    fq = FakeQuantize(
        a,
        role="activation",
        observer=config.observer_spec,
        dynamic=config.mode == "dynamic",
        quant_min=lo,
        quant_max=hi,
        name=name,
    )
    if not fq.dynamic:
        fq.observing, fq.enabled = True, False
    return fq


def finalize_for_convert(model: nn.Module) -> None:
    """Make every fake-quant layer plain before :func:`torchcompress.convert` (called by it).

    Each layer's :meth:`~torchcompress.quant.modules.QuantLayer.finalized` form replaces it:
    quantization-aware training layers become fake-quant layers (folded conv+BN layers with the
    folded weight and bias), and weight ranges that follow the weights are recomputed.
    """
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]:
        new = m.finalized()
        if new is not m:
            set_module(model, name, new)
