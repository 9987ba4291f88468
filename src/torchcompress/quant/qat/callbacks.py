"""Training-time helpers of quantization-aware training: freezing BatchNorm statistics and
observers (functions and :func:`torchcompress.finetune` callbacks), PACT's regularizer, and
:func:`requantize` (changing bit widths mid-training)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ... import io
from ...errors import CompressionStateError, ConfigError
from ...select import module_device_dtype
from ...train.callbacks import Callback, TrainState
from ..build import integer_ranges
from ..hardware import resolve_reduce_range
from ..spec import QuantConfig
from .conv_bn import _QuantConvBnNd
from .quantizers import PACTQuantize, QATQuantizer

__all__ = [
    "FreezeBNStats",
    "FreezeObservers",
    "PACTRegularizer",
    "freeze_bn_stats",
    "freeze_observers",
    "pact_regularizer",
    "qat_quantizers",
    "requantize",
    "unfreeze_bn_stats",
    "unfreeze_observers",
]


def qat_quantizers(model: nn.Module) -> Iterator[tuple[str, QATQuantizer]]:
    """``(name, quantizer)`` for every QAT quantizer (STE, LSQ, PACT, ...) of ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, QATQuantizer):
            yield name, m


def freeze_observers(model: nn.Module) -> nn.Module:
    """Stop updating the ranges that follow the data (STE's weights and activations keep their
    current range).

    Example:
        >>> import torch, torchcompress as tc
        >>> m = tc.prepare_qat(torch.nn.Sequential(torch.nn.Linear(4, 4)), method="ste")
        >>> _ = tc.quant.freeze_observers(m)
    """
    for _, fq in qat_quantizers(model):
        if fq.tracks_ranges:
            fq.observing = False
    return model


def unfreeze_observers(model: nn.Module) -> nn.Module:
    """Resume updating the ranges that follow the data (STE's) at every training step."""
    for _, fq in qat_quantizers(model):
        if fq.tracks_ranges:
            fq.observing = True
    return model


def freeze_bn_stats(model: nn.Module) -> nn.Module:
    """Folded conv+BN layers use (and stop updating) their running statistics.

    After this the training-mode forward of every :class:`~torchcompress.quant.qat.QuantConvBn2d`
    computes exactly what the converted layer computes (Krishnamoorthi 2018 freezes the
    statistics for the last part of training).

    Example:
        >>> import torch, torchcompress as tc
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> m = tc.prepare_qat(m, method="ste", graph="layer", calib_data=[torch.randn(2, 3, 8, 8)])
        >>> bool(tc.quant.freeze_bn_stats(m)[0].stats_frozen)
        True
    """
    for m in model.modules():
        if isinstance(m, _QuantConvBnNd):
            m.stats_frozen.fill_(True)
    return model


def unfreeze_bn_stats(model: nn.Module) -> nn.Module:
    """Folded conv+BN layers normalise with batch statistics again while training."""
    for m in model.modules():
        if isinstance(m, _QuantConvBnNd):
            m.stats_frozen.fill_(False)
    return model


class FreezeBNStats(Callback):
    """A :func:`torchcompress.finetune` callback: :func:`freeze_bn_stats` after ``after_steps`` steps.

    Args:
        after_steps: optimizer steps before freezing.

    Example:
        >>> cb = FreezeBNStats(after_steps=200)
    """

    def __init__(self, after_steps: int) -> None:
        if isinstance(after_steps, bool) or not isinstance(after_steps, int) or after_steps < 0:
            raise ConfigError(
                f"FreezeBNStats.after_steps must be an int >= 0, got {after_steps!r}."
            )
        self.after_steps = after_steps

    def on_train_begin(self, state: TrainState) -> None:
        if self.after_steps == 0:
            freeze_bn_stats(state.model)

    def on_step_end(self, state: TrainState) -> None:
        if state.step >= self.after_steps:
            freeze_bn_stats(state.model)


class FreezeObservers(Callback):
    """A :func:`torchcompress.finetune` callback: :func:`freeze_observers` after ``after_steps`` steps.

    Args:
        after_steps: optimizer steps before freezing.

    Example:
        >>> cb = FreezeObservers(after_steps=300)
    """

    def __init__(self, after_steps: int) -> None:
        if isinstance(after_steps, bool) or not isinstance(after_steps, int) or after_steps < 0:
            raise ConfigError(
                f"FreezeObservers.after_steps must be an int >= 0, got {after_steps!r}."
            )
        self.after_steps = after_steps

    def on_train_begin(self, state: TrainState) -> None:
        if self.after_steps == 0:
            freeze_observers(state.model)

    def on_step_end(self, state: TrainState) -> None:
        if state.step >= self.after_steps:
            freeze_observers(state.model)


class PACTRegularizer:
    """PACT's L2 penalty ``weight / 2 * sum(alpha^2)`` over the clipping values of a model.

    Callable as ``regularizer(model) -> scalar Tensor`` for ``tc.finetune(..., regularizer=...)``.

    Args:
        weight: the coefficient (the paper's ``lambda_alpha``; it uses the weight decay, e.g. 2e-4).

    Example:
        >>> import torch
        >>> reg = PACTRegularizer(1e-3)
        >>> float(reg(torch.nn.Linear(2, 2)))  # no PACT quantizer: zero
        0.0
    """

    def __init__(self, weight: float = 2e-4) -> None:
        if not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(f"PACTRegularizer.weight must be a number >= 0, got {weight!r}.")
        self.weight = float(weight)

    def __call__(self, model: nn.Module) -> Tensor:
        alphas = [m.alpha for m in model.modules() if isinstance(m, PACTQuantize)]
        if not alphas:
            p = next(iter(model.parameters()), None)
            return torch.zeros((), device=p.device if p is not None else None)
        return 0.5 * self.weight * sum((a.float() ** 2).sum() for a in alphas)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"PACTRegularizer(weight={self.weight})"


def pact_regularizer(weight: float = 2e-4) -> PACTRegularizer:
    """The L2 penalty on PACT's clipping values, for ``tc.finetune(regularizer=...)``.

    Example:
        >>> import torchcompress as tc
        >>> reg = tc.quant.pact_regularizer(1e-4)
    """
    return PACTRegularizer(weight)


def requantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Change the bit widths of a QAT model mid-training, keeping what was learned.

    Only the bit widths (and ``reduce_range``) may change; the granularities, symmetry and
    signedness must stay. LSQ step sizes (and offsets) and STE ranges are rescaled so that the
    real clipping range is kept on the new integer range; PACT's ``alpha`` is kept (its steps
    become ``alpha / (2^b - 1)``); folded BatchNorms and every weight are untouched. Observers keep
    their kind and options; STE observers restart their statistics from the rescaled range.

    Args:
        model: a model from :func:`prepare_qat`; modified in place.
        config: the new formats.

    Returns:
        ``model``.

    Raises:
        CompressionStateError: ``model`` has no QAT quantizer.
        ConfigError: ``config`` changes more than the bit widths, or drops weight/activation quantization.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = tc.prepare_qat(torch.nn.Sequential(torch.nn.Linear(8, 8)), method="ste",
        ...                    config=tc.QuantConfig(activation=None))
        >>> m = tc.quant.requantize(m, tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), activation=None))
        >>> m[0].weight_quant.spec.bits
        4
    """
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config)
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"requantize() takes a QuantConfig, got {type(config).__name__}.")
    fqs = list(qat_quantizers(model))
    if not fqs:
        raise CompressionStateError(
            f"{type(model).__name__} has no quantization-aware training quantizer; call "
            "tc.prepare_qat first."
        )
    device, _ = module_device_dtype(model)
    reduce = resolve_reduce_range(config.reduce_range, device)
    wr, ar = integer_ranges(config, reduce)
    plan = []
    for name, fq in fqs:
        new_spec = config.weight if fq.role == "weight" else config.activation
        if new_spec is None:
            raise ConfigError(
                f"requantize cannot drop {fq.role} quantization ({name!r} is quantized); only bit "
                "widths change. Prepare the float model again instead."
            )
        old = fq.spec
        changed = [k for k in fq.requantize_keeps if getattr(old, k) != getattr(new_spec, k)]
        if changed:
            raise ConfigError(
                f"requantize only changes bit widths, but the new {fq.role} IntSpec changes "
                f"{', '.join(changed)} of {name!r} ({old.short()} -> {new_spec.short()})."
            )
        plan.append((fq, fq.requantized_range(new_spec, wr if fq.role == "weight" else ar)))
    for fq, (spec, qmin, qmax) in plan:
        fq.requantize(spec, qmin, qmax)
    io.add_history(model, "requantize", config.to_dict())
    return model
