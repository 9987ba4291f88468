"""Building quantized layers: target selection, fake-quant layers and their quantizers, ranges.

The helpers every quantization verb shares (:func:`torchcompress.quantize`,
:func:`torchcompress.prepare_qat`, :func:`torchcompress.kmeans_quantize`, the graph planner and
:func:`torchcompress.convert`); the verbs import them, never the other way round.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import forms
from ..errors import CompressionStateError, ConfigError, NumericalError, UnsupportedModuleError
from ..layers import (
    LAYER_KINDS,
    Geometry,
    canonical_weight,
    layer_kind,
    supported_types,
)
from ..select import read_by_parent, select_modules, set_module
from . import functional as QF
from .geometry import describe, geometry_of
from .modules import FakeQuantize, QuantizedModule, QuantLayer, quant_layer_class
from .spec import IntSpec, QuantConfig

__all__ = [
    "build_quant_layer",
    "carry_forms",
    "check_targets",
    "finalize_for_convert",
    "forward_restored_on_error",
    "integer_ranges",
    "make_activation_quant",
    "quantizable_types",
    "refuse_if_done",
    "select_quant_targets",
    "source_name",
    "take_over_parameters",
    "token_inputs",
]

log = logging.getLogger(__name__)


def quantizable_types(model: nn.Module | None = None) -> tuple[type[nn.Module], ...]:
    """The layer types the quantization verbs handle: those of every registered layer kind
    (:func:`torchcompress.layers.supported_types`; with ``model``, every class of it one accepts)."""
    return supported_types(model)


def token_inputs(geometry: Geometry) -> bool:
    """Whether the layer maps the last dimension of its input (per-token activation scales apply)."""
    return not geometry.kernel_size


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

    Layers of every registered layer kind (Linear, convolutions, HF Conv1D, kinds registered from
    outside) picked by ``include``/``exclude``, leaving out layers that are already quantized and
    children whose parent reads their weights directly.
    """
    return select_modules(
        model,
        include,
        exclude,
        types=quantizable_types(model),
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
    """The fake-quant replacement of ``old`` (a layer of any registered kind) for ``config``.

    The original parameters are taken over (a weight stored in another layout, such as HF
    ``Conv1D``'s ``(in, out)``, is copied in the canonical layout), and a pruning mask moves onto
    the new layer (:func:`take_over_parameters`). Weight ranges are computed here
    (the weight is observed once); activation quantizers are left observing, to be calibrated
    (static), or are dynamic.

    Raises:
        ConfigError: ``old`` is not a layer of a registered kind, or the group size does not
            divide the layer's input dimension.
        NumericalError: the weight holds NaN or Inf.
    """
    if layer_kind(old) is None:
        raise ConfigError(
            f"{name!r}: cannot quantize a {type(old).__name__} (not a layer of a registered kind: "
            f"{', '.join(repr(n) for n in LAYER_KINDS.names())})."
        )
    geo = geometry_of(old, name)
    check_targets([(name, old)], config)
    # "meta": no throw-away allocation; the original parameters are taken over
    layer = quant_layer_class(geo).from_geometry(geo, device="meta", source=source_name(old))

    def layout(t: torch.Tensor) -> torch.Tensor:  # old's stored layout -> the canonical one
        return canonical_weight(old, t, name=name)

    take_over_parameters(old, layer, layout, bias=geo.bias)
    wr, ar = integer_ranges(config, reduce)
    rows, cols = layer.weight_shape2d
    if config.weight is not None:
        ws = config.weight
        wq = FakeQuantize(
            ws,
            role="weight",
            observer=config.weight_observer_spec,
            quant_min=wr[0],  # type: ignore[index]
            quant_max=wr[1],  # type: ignore[index]
            shape=(rows, cols),
            name=name,
        ).to(layer.weight.device)
        # the effective weight (a pruning mask applied: the masked weight is quantized)
        wq.observe(canonical_weight(old, name=name).detach().reshape(rows, cols))
        wq.calibrate()
        wq.observer.reset()  # type: ignore[union-attr]
        layer.weight_quant = wq
    if config.activation is not None and with_input_quant:
        layer.input_quant = make_activation_quant(config, name, geometry=geo, arange=ar).to(
            layer.weight.device
        )
    carry_forms(old, layer, layout, name=name)  # last: the layer's structure as loading builds it
    return layer


def refuse_if_done(model: nn.Module, verb: str, exclude: Any) -> None:
    """For a quantization verb that found no layer to replace: raise if the layers it would reach
    are already in the form it makes (a second :func:`torchcompress.quantize` of a quantized model
    has nothing to do; saying so beats a silent no-op).

    Raises:
        CompressionStateError: naming those layers, and what to do instead.
    """
    made = forms.VERBS.get(verb).makes
    done = [n for n, f in forms.layer_forms(model, exclude=exclude).items() if made in f]
    if done:
        shown = ", ".join(repr(n) for n in done[:8]) + (", ..." if len(done) > 8 else "")
        raise CompressionStateError(
            f"tc.{verb}: every layer of {type(model).__name__} it reaches is already {made} "
            f"({shown}); nothing was changed. To {verb} with another config, start again from the "
            "float model."
        )


def check_targets(targets: Sequence[tuple[str, nn.Module]], config: QuantConfig) -> None:
    """Raise once for every target ``config`` cannot quantize, before anything changes.

    Raises:
        NumericalError: weights holding NaN or Inf (every such layer named).
        ConfigError: a weight group size that does not divide a layer's input dimension (every
            such layer named, with its input dimension).
    """
    bad = [(n, m) for n, m in targets if not bool(torch.isfinite(m.weight.detach()).all())]
    if bad:
        raise NumericalError(
            f"The weight{'s' if len(bad) > 1 else ''} of "
            f"{', '.join(f'{n!r} ({describe(m)})' for n, m in bad)} hold{'' if len(bad) > 1 else 's'}"
            " NaN or Inf; they cannot be quantized. Fix or reinitialise them (a diverged training, "
            "a float16 overflow), or exclude these layers."
        )
    ws = config.weight
    if ws is None or ws.group_size is None:
        return
    misfits = []
    for name, old in targets:
        geo = geometry_of(old, name)
        cols = math.prod(geo.weight_shape[1:])
        if cols % ws.group_size:
            misfits.append(f"{name!r} ({describe(old)}: {cols} inputs per output channel)")
    if misfits:
        raise ConfigError(
            f"IntSpec.group_size={ws.group_size} does not divide the input dimension of "
            f"{'; '.join(misfits)}. Pick a group size that divides "
            f"{'them' if len(misfits) > 1 else 'it'}, or exclude "
            f"{'these layers' if len(misfits) > 1 else 'the layer'}."
        )


def source_name(module: nn.Module) -> str:
    """The class name of the layer ``module`` is (``"Linear"`` for a masked ``Linear`` too)."""
    return parametrize.type_before_parametrizations(module).__name__


def _stored(module: nn.Module, tensor: str) -> Any:
    """The tensor ``module`` stores as ``tensor`` (a parametrized tensor's ``original``)."""
    if parametrize.is_parametrized(module, tensor):
        return module.parametrizations[tensor].original  # type: ignore[index]
    return getattr(module, tensor, None)


def take_over_parameters(
    old: nn.Module,
    new: nn.Module,
    layout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    bias: bool = True,
) -> None:
    """Give ``new`` (a quantized layer) the ``weight`` and ``bias`` of ``old``, the layer it
    replaces.

    A weight stored in ``new``'s layout is taken over as the same parameter; ``layout`` maps one in
    another layout (HF ``Conv1D``'s ``(in, out)``) to ``new``'s, as a new parameter. When ``old`` is
    in a form that moves onto a replacement (a pruning mask, see
    :func:`torchcompress.forms.carry_over`), ``new`` takes over the stored originals, and
    :func:`carry_forms` (called once ``new`` is complete) carries the form onto it: the masked
    weight is what gets quantized, and the mask keeps applying while it trains (``old`` may itself
    be quantized, as a fake-quant layer becoming a QAT one). Otherwise the effective tensors are
    taken over.
    """
    carry = bool(forms.carried_forms(old))
    to_new = layout or (lambda t: t)
    w = _stored(old, "weight") if carry else old.weight
    canonical = to_new(w)
    if canonical is w and isinstance(w, nn.Parameter):
        new.weight = w  # stored in new's layout: the same parameter
    else:
        new.weight = nn.Parameter(canonical.detach().contiguous(), requires_grad=w.requires_grad)
    b = _stored(old, "bias") if carry else getattr(old, "bias", None)
    if not bias or b is None:
        new.bias = None
    elif isinstance(b, nn.Parameter):
        new.bias = b
    else:
        new.bias = nn.Parameter(b.detach().clone(), requires_grad=b.requires_grad)


def carry_forms(
    old: nn.Module,
    new: nn.Module,
    layout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    name: str = "",
) -> list[forms.Carried]:
    """Carry the forms of ``old`` that move onto a replacement (a pruning mask) onto ``new``, which
    took over its parameters (:func:`take_over_parameters`); ``layout`` maps ``old``'s weight
    layout to ``new``'s. What a carrier could not keep is logged as a warning.

    Returns:
        What became of those forms (one :class:`~torchcompress.forms.Carried` each).
    """
    if not forms.carried_forms(old):
        return []
    to_new = layout or (lambda t: t)
    carried = forms.carry_over(old, new, lambda t_name, t: to_new(t) if t_name == "weight" else t)
    for c in carried:
        if not c.kept:
            log.warning("%s: %s", name or type(old).__name__, c.note)
    return carried


def make_activation_quant(
    config: QuantConfig,
    name: str,
    *,
    geometry: Geometry | None = None,
    arange: tuple[int, int] | None = None,
    spec: IntSpec | None = None,
) -> FakeQuantize:
    """An activation quantizer for ``config`` (observing if static, dynamic otherwise), for the
    input of a layer of ``geometry`` (``None``: a map over the last dimension, as a Linear)."""
    a = spec or config.activation
    if a is None:
        raise ConfigError(f"{name!r}: the config quantizes no activation.")
    if a.granularity == "token" and geometry is not None and not token_inputs(geometry):
        log.warning(
            "%s is a %s layer with a %d-D kernel: per-token activation scales apply to maps over "
            "the last dimension (Linear inputs); using one dynamic scale per tensor for it.",
            name,
            geometry.kind,
            geometry.spatial_dims,
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
