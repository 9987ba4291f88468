"""What a training callback sees and implements: :class:`TrainState`, :class:`Callback`.

This is the light part of :mod:`torchcompress.train`, the one the families import (QAT's freezing
callbacks, gradual pruning, low-rank thresholding): it depends on torch and the ground floor only,
not on the loop.

Example:
    >>> from torchcompress.train.callbacks import LambdaCallback
    >>> steps = []
    >>> cb = LambdaCallback(on_step_end=lambda state: steps.append(state.step))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..batches import Batch
from ..errors import ConfigError, did_you_mean

__all__ = ["HOOKS", "Callback", "LambdaCallback", "TrainState", "training_history"]

#: The hook names of a :class:`Callback`, in the order a training run first calls them.
HOOKS: tuple[str, ...] = (
    "on_train_begin",
    "on_step_begin",
    "on_after_backward",
    "on_step_end",
    "on_epoch_end",
    "on_train_end",
)

# where finetune keeps the per-epoch records on the model (see training_history)
HISTORY_ATTR = "_torchcompress_train_history"


@dataclasses.dataclass(eq=False)
class TrainState:
    """What :func:`~torchcompress.train.finetune` passes to every :class:`Callback` hook.

    Attributes:
        model: the model being trained (unwrapped: never the DDP wrapper).
        optimizer: the optimizer.
        scheduler: the learning-rate scheduler (a ``torch.optim.lr_scheduler`` object).
        step: optimizer steps taken so far.
        epoch: the current epoch (0-based).
        total_steps: optimizer steps planned (``None`` when the data's length is unknown).
        loss: total loss of the last step (averaged across ranks under DDP).
        rank: this process's rank (0 without DDP).
        world_size: number of processes (1 without DDP).
        device: where the model and batches are.
        epoch_step: index of the current batch within the epoch.
        batch: the current :class:`~torchcompress.batches.Batch`.
        output: the model's output for the current batch (after the forward).
        losses: components of the last step's loss (``"task"``, ``"distill"``, ``"regularizer"``),
            averaged across ranks.
        grad_norm: total gradient norm before clipping (only when ``grad_clip`` is set).
        metrics: the last :func:`~torchcompress.train.evaluate` result on ``eval_data`` (``None``
            before the first).
        history: one record per epoch (see :func:`training_history`).
        stop_training: set it to ``True`` in a hook to end training after the current step.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 2)
        >>> state = TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1), None)
        >>> state.lr, state.is_main
        (0.1, True)
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: int = 0
    epoch: int = 0
    total_steps: int | None = None
    loss: float = float("nan")
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    epoch_step: int = 0
    batch: Batch | None = None
    output: Any = None
    losses: dict[str, float] = dataclasses.field(default_factory=dict)
    grad_norm: float | None = None
    metrics: dict[str, Any] | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stop_training: bool = False

    @property
    def lr(self) -> float:
        """The learning rate of the optimizer's first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that logs and shows progress)."""
        return self.rank == 0


class Callback:
    """Hooks into :func:`~torchcompress.train.finetune`; override the ones you need.

    Each hook receives the :class:`TrainState`. Order within one optimizer step:
    ``on_step_begin`` -> forward and loss -> backward -> ``on_after_backward`` (gradients are ready
    and, under DDP, averaged; a good place to mask them) -> gradient clipping -> optimizer and
    scheduler step -> ``on_step_end`` (e.g. re-apply masks, update a sparsity schedule).
    ``on_epoch_end`` runs after the epoch's evaluation, so ``state.metrics`` is fresh. Set
    ``state.stop_training = True`` to stop early.

    Example:
        >>> import logging
        >>> class LogLoss(Callback):
        ...     def on_epoch_end(self, state):
        ...         loss = state.history[-1]["train_loss"]
        ...         logging.getLogger("train").info("epoch %d: loss %.2f", state.epoch, loss)
    """

    def on_train_begin(self, state: TrainState) -> None:
        """Before the first step (optimizer and scheduler are built)."""

    def on_step_begin(self, state: TrainState) -> None:
        """Before the forward of a step (``state.batch`` is set)."""

    def on_after_backward(self, state: TrainState) -> None:
        """After the backward, before clipping and the optimizer step."""

    def on_step_end(self, state: TrainState) -> None:
        """After the optimizer and scheduler step (``state.step`` counts it)."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After an epoch (and its evaluation on ``eval_data``)."""

    def on_train_end(self, state: TrainState) -> None:
        """After training, before the model's modes are restored."""


class LambdaCallback(Callback):
    """A :class:`Callback` from plain functions, e.g. ``LambdaCallback(on_step_end=fn)``.

    Args:
        **hooks: hook name -> ``fn(state)``.

    Raises:
        ConfigError: an unknown hook name.

    Example:
        >>> steps = []
        >>> cb = LambdaCallback(on_step_end=lambda s: steps.append(s.step))
    """

    def __init__(self, **hooks: Callable[[TrainState], None]) -> None:
        for name, fn in hooks.items():
            if name not in HOOKS:
                raise ConfigError(
                    f"LambdaCallback: unknown hook {name!r}; hooks are {', '.join(HOOKS)}."
                    f"{did_you_mean(name, HOOKS)}"
                )
            if not callable(fn):
                raise ConfigError(f"LambdaCallback: {name} must be callable, got {fn!r}.")
            setattr(self, name, fn)


def as_callbacks(callbacks: Any) -> list[Any]:
    """``callbacks=`` as a list, checking that each has at least one hook (duck typing allowed)."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or any(hasattr(callbacks, h) for h in HOOKS):
        return [callbacks]
    try:
        cbs = list(callbacks)
    except TypeError:
        raise ConfigError(
            f"callbacks must be a list of Callback objects, got {type(callbacks).__name__}."
        ) from None
    for i, cb in enumerate(cbs):
        if not isinstance(cb, Callback) and not any(callable(getattr(cb, h, None)) for h in HOOKS):
            raise ConfigError(
                f"callbacks[{i}] ({type(cb).__name__}) has none of the hooks {', '.join(HOOKS)}; "
                "subclass tc.train.Callback or use tc.train.LambdaCallback(on_step_end=fn)."
            )
    return cbs


def call_hooks(callbacks: list[Any], hook: str, state: TrainState) -> None:
    """Call ``hook`` on every callback that has it, in order."""
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)


def training_history(model: nn.Module) -> list[dict[str, Any]]:
    """The per-epoch records of the last :func:`~torchcompress.train.finetune` call on ``model``.

    Each record has ``epoch`` (0-based), ``step`` (optimizer steps so far), ``train_loss`` (mean over
    the epoch's steps and ranks), ``lr`` (at the end of the epoch), ``time_s`` (seconds of training,
    evaluation excluded), and, with ``eval_data``, ``eval_accuracy`` / ``eval_loss`` (and
    ``eval_top{k}_accuracy``). The same list is ``state.history`` in callbacks.

    Example:
        >>> import torchcompress as tc
        >>> tc.train.training_history(model)[-1]["eval_accuracy"]   # doctest: +SKIP
        0.97
    """
    return list(getattr(model, HISTORY_ATTR, []))
