"""Sparsity schedules and gradual (iterative) pruning during fine-tuning.

:class:`SparsitySchedule` gives the target sparsity at each training step; :class:`GradualPruning`
is a :func:`torchcompress.finetune` callback that re-prunes the model to that target every
``frequency`` steps (weights already pruned stay pruned), and :func:`gradual_prune` runs the whole
prune-while-training loop in one call. Under ``torchrun`` every rank prunes at the same steps; the
statistics of data-driven criteria are all-reduced and the masks broadcast from rank 0, so the masks
are identical on every rank.

The kinds (``p`` is the progress from ``start_step`` to ``end_step``, in ``[0, 1]``, evaluated at
the last update step):

==============  ==============================================================================
``constant``    ``final`` from ``start_step`` on (one-shot, then fine-tune)
``linear``      ``initial + (final - initial) * p``
``cubic``       ``final + (initial - final) * (1 - p)**3`` (Zhu & Gupta 2017, "To prune, or not
                to prune"); fast at first, slow near the end
``exponential`` the density falls geometrically: ``1 - (1 - initial)**(1-p) * (1 - final)**p``
                (each update removes the same fraction of the remaining weights, as in
                iterative magnitude pruning)
``cosine``      ``initial + (final - initial) * (1 - cos(pi * p)) / 2``
==============  ==============================================================================

Before ``start_step`` the target is 0 (nothing pruned).

Example:
    >>> from torchcompress.sparsity import SparsitySchedule
    >>> s = SparsitySchedule("cubic", initial=0.0, final=0.8, start_step=0, end_step=100, frequency=10)
    >>> s(0), round(s(50), 4), s(100), s(1000)
    (0.0, 0.7, 0.8, 0.8)
    >>> s.should_update(10), s.should_update(15)
    (True, False)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import Config
from ..errors import ConfigError, DataError, check_choice, check_range
from ..registry import Registry
from ..train.callbacks import Callback
from .config import PruneConfig

__all__ = ["SCHEDULE_KINDS", "GradualPruning", "SparsitySchedule", "gradual_prune"]

log = logging.getLogger(__name__)

#: schedule kind -> ``f(progress, initial, final) -> sparsity``
SCHEDULE_KINDS: Registry[Callable[[float, float, float], float]] = Registry("sparsity schedule")


@SCHEDULE_KINDS.register("constant")
def _constant(p: float, s_i: float, s_f: float) -> float:
    return s_f


@SCHEDULE_KINDS.register("linear")
def _linear(p: float, s_i: float, s_f: float) -> float:
    return s_i + (s_f - s_i) * p


@SCHEDULE_KINDS.register("cubic")
def _cubic(p: float, s_i: float, s_f: float) -> float:
    return s_f + (s_i - s_f) * (1.0 - p) ** 3


@SCHEDULE_KINDS.register("exponential")
def _exponential(p: float, s_i: float, s_f: float) -> float:
    return 1.0 - (1.0 - s_i) ** (1.0 - p) * (1.0 - s_f) ** p


@SCHEDULE_KINDS.register("cosine")
def _cosine(p: float, s_i: float, s_f: float) -> float:
    return s_i + (s_f - s_i) * (1.0 - math.cos(math.pi * p)) / 2.0


@dataclass(frozen=True)
class SparsitySchedule(Config):
    """Target sparsity as a function of the training step.

    Args:
        kind: ``"constant"``, ``"linear"``, ``"cubic"`` (Zhu & Gupta 2017), ``"exponential"`` or
            ``"cosine"`` (or a name registered in :data:`SCHEDULE_KINDS`).
        initial: sparsity at ``start_step``.
        final: sparsity from ``end_step`` on.
        start_step: first step at which the model is pruned.
        end_step: step at which ``final`` is reached (``None``: the end of training, taken from
            the trainer's total steps).
        frequency: steps between mask updates (Δt in Zhu & Gupta); the target changes only at
            update steps (``start_step + k * frequency``, and ``end_step``).

    Example:
        >>> SparsitySchedule("linear", initial=0.2, final=0.6, start_step=10, end_step=30)(20)
        0.4
    """

    kind: str = "cubic"
    initial: float = 0.0
    final: float = 0.5
    start_step: int = 0
    end_step: int | None = None
    frequency: int = 1

    def validate(self) -> None:
        owner = "SparsitySchedule"
        check_choice("kind", self.kind, SCHEDULE_KINDS.names(), owner=owner)
        check_range("initial", self.initial, 0.0, 1.0, high_inclusive=False, owner=owner)
        check_range("final", self.final, 0.0, 1.0, high_inclusive=False, owner=owner)
        if self.initial > self.final:
            raise ConfigError(
                f"{owner}: initial={self.initial} is above final={self.final}; schedules only "
                "increase sparsity (pruned weights stay pruned)."
            )
        for field in ("start_step", "frequency"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{owner}.{field} must be an int, got {v!r}.")
        if self.start_step < 0:
            raise ConfigError(f"{owner}.start_step must be >= 0, got {self.start_step}.")
        if self.frequency < 1:
            raise ConfigError(f"{owner}.frequency must be >= 1, got {self.frequency}.")
        if self.end_step is not None:
            if isinstance(self.end_step, bool) or not isinstance(self.end_step, int):
                raise ConfigError(
                    f"{owner}.end_step must be an int or None, got {self.end_step!r}."
                )
            if self.end_step < self.start_step:
                raise ConfigError(
                    f"{owner}: end_step={self.end_step} is before start_step={self.start_step}."
                )

    def _end(self, total_steps: int | None) -> int:
        if self.end_step is not None:
            return self.end_step
        if total_steps is None:
            raise ConfigError(
                "SparsitySchedule(end_step=None) ends with training; pass total_steps (the trainer "
                "does) or set end_step."
            )
        return max(int(total_steps), self.start_step)

    def resolved(self, total_steps: int | None) -> SparsitySchedule:
        """A copy with ``end_step`` filled in from ``total_steps`` when it was ``None``."""
        return self if self.end_step is not None else self.replace(end_step=self._end(total_steps))

    def __call__(self, step: int, total_steps: int | None = None) -> float:
        """The target sparsity at ``step`` (0 before ``start_step``)."""
        if step < self.start_step:
            return 0.0
        end = self._end(total_steps)
        if step >= end:
            p = 1.0
        else:
            q = self.start_step + ((step - self.start_step) // self.frequency) * self.frequency
            p = (q - self.start_step) / (end - self.start_step)
        s = SCHEDULE_KINDS.get(self.kind)(p, self.initial, self.final)
        return float(min(max(s, 0.0), self.final))

    def should_update(self, step: int, total_steps: int | None = None) -> bool:
        """Whether the masks are updated at ``step``."""
        end = self._end(total_steps)
        if step < self.start_step or step > end:
            return False
        return (step - self.start_step) % self.frequency == 0 or step == end

    def update_steps(self, total_steps: int | None = None) -> list[int]:
        """Every step at which the masks are updated."""
        end = self._end(total_steps)
        steps = list(range(self.start_step, end + 1, self.frequency))
        if not steps or steps[-1] != end:
            steps.append(end)
        return steps


class GradualPruning(Callback):
    """Callback for :func:`torchcompress.finetune` that prunes along a :class:`SparsitySchedule`.

    At the start of training and after every optimizer step it counts, when the schedule says so,
    it calls :func:`torchcompress.prune` on the trainer's (unwrapped) model with
    ``config.replace(sparsity=schedule(step))``; masks only grow (pruned weights stay pruned).

    Args:
        schedule: the target sparsity per step.
        config: pattern, criterion, scope, ... (its ``sparsity`` is set by the schedule).
        data: batches for data-driven criteria (scored afresh at every update).
        loss_fn: loss for ``taylor``/``fisher`` (default cross-entropy).
        include, exclude, overrides: as for :func:`torchcompress.prune`.

    Attributes:
        applied: ``(step, sparsity)`` of every update made.

    Example:
        >>> import torchcompress as tc
        >>> cb = tc.sparsity.GradualPruning(tc.SparsitySchedule("cubic", final=0.9, frequency=50))
        >>> tc.finetune(model, train_loader, epochs=5, callbacks=[cb])            # doctest: +SKIP
    """

    def __init__(
        self,
        schedule: SparsitySchedule,
        config: PruneConfig | None = None,
        data: Any = None,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(schedule, SparsitySchedule):
            raise ConfigError(
                f"schedule must be a SparsitySchedule, got {type(schedule).__name__}."
            )
        self.schedule = schedule
        self.config = config or PruneConfig()
        self.config.replace(sparsity=schedule.final)  # fails early if the pattern cannot reach it
        from .criteria import CRITERIA

        if CRITERIA.get(self.config.criterion).needs_data and data is None:
            raise DataError(
                f"GradualPruning with criterion={self.config.criterion!r} needs data= (calibration "
                "batches scored at each update)."
            )
        self.data = data
        self.loss_fn = loss_fn
        self.include, self.exclude, self.overrides = include, exclude, overrides
        self.step = 0
        self.total_steps: int | None = None
        self.applied: list[tuple[int, float]] = []

    def _model(self, state: Any) -> nn.Module:
        model = getattr(state, "model", None)
        while hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module  # DDP / DataParallel wrappers
        if not isinstance(model, nn.Module):
            raise ConfigError("GradualPruning needs a trainer state with a .model.")
        return model

    def _maybe_prune(self, state: Any) -> None:
        if not self.schedule.should_update(self.step, self.total_steps):
            return
        target = self.schedule(self.step, self.total_steps)
        last = self.applied[-1][1] if self.applied else 0.0
        if target <= 0.0 or target <= last:
            return
        from .pruning import prune

        prune(
            self._model(state),
            self.config.replace(sparsity=target),
            self.data,
            self.loss_fn,
            include=self.include,
            exclude=self.exclude,
            overrides=self.overrides,
            progress=False,
        )
        self.applied.append((self.step, target))
        log.info("gradual pruning: step %d, sparsity %.4f", self.step, target)

    def on_train_begin(self, state: Any) -> None:
        """Reset the step count and prune to the schedule's value at step 0."""
        self.step = 0
        self.applied = []
        total = getattr(state, "total_steps", None)
        self.total_steps = int(total) if total is not None else None
        self._maybe_prune(state)

    def on_step_end(self, state: Any) -> None:
        """Count the step and re-prune when the schedule updates."""
        self.step += 1
        self._maybe_prune(state)


def gradual_prune(
    model: nn.Module,
    data: Any,
    schedule: SparsitySchedule,
    config: PruneConfig | None = None,
    *,
    calib_data: Any = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    **finetune_kwargs: Any,
) -> nn.Module:
    """Fine-tune ``model`` on ``data`` while pruning it along ``schedule`` (Zhu & Gupta style).

    A thin wrapper over :func:`torchcompress.finetune` with a :class:`GradualPruning` callback.

    Args:
        model: the model (pruned in place).
        data: training batches.
        schedule: target sparsity per optimizer step.
        config: pattern, criterion, scope, ... of each pruning step.
        calib_data: batches for data-driven criteria (default: ``data``).
        loss_fn: the training loss (also used by ``taylor``/``fisher``).
        include, exclude, overrides: as for :func:`torchcompress.prune`.
        **finetune_kwargs: passed to :func:`torchcompress.finetune` (``epochs``, ``lr``, ...).

    Returns:
        ``model``, pruned to ``schedule.final`` if training reached ``end_step``.
    """
    from ..train import finetune

    cb = GradualPruning(
        schedule,
        config,
        calib_data if calib_data is not None else data,
        loss_fn,
        include=include,
        exclude=exclude,
        overrides=overrides,
    )
    callbacks = [*finetune_kwargs.pop("callbacks", ()), cb]
    return finetune(model, data, loss_fn=loss_fn, callbacks=callbacks, **finetune_kwargs)
