"""Optimizers and learning-rate schedules by name, for :func:`~torchcompress.train.finetune`.

:data:`OPTIMIZERS` and :data:`SCHEDULERS` are registries: a new optimizer or schedule is one
registered function, then usable by name (``finetune(..., optimizer="mine")``).

Example:
    >>> from torchcompress.train import OPTIMIZERS, SCHEDULERS
    >>> OPTIMIZERS.names(), SCHEDULERS.names()
    (['sgd', 'adam', 'adamw'], ['constant', 'cosine', 'linear', 'step'])
    >>> SCHEDULERS.get("cosine")(50, 100)
    0.5
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import Registry

log = logging.getLogger(__package__)  # "torchcompress.train"

__all__ = ["OPTIMIZERS", "SCHEDULERS"]

#: Optimizers by name: ``factory(params, *, lr, momentum, weight_decay) -> torch.optim.Optimizer``.
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")

#: Learning-rate schedules by name: ``fn(t, total) -> multiplier`` of the base learning rate at the
#: ``t``-th optimizer step after warmup, of ``total`` such steps.
SCHEDULERS: Registry[Callable[[int, int], float]] = Registry("scheduler")


@OPTIMIZERS.register("sgd")
def _sgd(
    params: Iterable[torch.Tensor], *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(
    params: Iterable[torch.Tensor], *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(
    params: Iterable[torch.Tensor], *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


@SCHEDULERS.register("constant")
def _constant(t: int, total: int) -> float:
    return 1.0


@SCHEDULERS.register("cosine")
def _cosine(t: int, total: int) -> float:
    """Cosine annealing to zero (Loshchilov & Hutter, "SGDR", ICLR 2017), without restarts."""
    return 0.5 * (1.0 + math.cos(math.pi * min(t, total) / max(1, total)))


@SCHEDULERS.register("linear")
def _linear(t: int, total: int) -> float:
    return max(0.0, 1.0 - t / max(1, total))


@SCHEDULERS.register("step")
def _step(t: int, total: int) -> float:
    """x0.1 at 50% and again at 75% of the steps (the CIFAR ResNet schedule of He et al. 2016)."""
    frac = t / max(1, total)
    return 0.1 ** ((frac >= 0.5) + (frac >= 0.75))


def schedule_lambda(name: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The multiplier per optimizer step of schedule ``name`` after a linear warmup."""
    fn = SCHEDULERS.get(name)
    main = max(1, total_steps - warmup_steps)

    def multiplier(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return float(fn(s - warmup_steps, main))

    return multiplier


def name_of(obj: Any) -> str:
    """A name for an optimizer/scheduler argument (for logs and the history)."""
    if isinstance(obj, str):
        return obj
    return getattr(obj, "__name__", None) or type(obj).__name__


def build_optimizer(
    optimizer: Any,
    params: list[torch.nn.Parameter],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    extra: list[torch.nn.Parameter] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``finetune(optimizer=...)`` asks for: a name, a factory or a ready one.

    ``extra``: parameters trained alongside the model's (a distillation's adapters); a ready
    optimizer that lacks them gets them as a new parameter group with its defaults.
    """
    extra = list(extra or [])
    if isinstance(optimizer, torch.optim.Optimizer):
        have = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [p for p in extra if id(p) not in have]
        if missing:
            log.info("finetune: %d distillation parameter(s) added to the optimizer", len(missing))
            optimizer.add_param_group({"params": missing})
        return optimizer
    if isinstance(optimizer, str):
        factory = OPTIMIZERS.get(optimizer)
        return factory(params + extra, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if callable(optimizer):
        opt = optimizer(params + extra, lr=lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer factory {name_of(optimizer)} returned {type(opt).__name__}, not a "
                "torch.optim.Optimizer."
            )
        return opt
    raise ConfigError(
        f"optimizer must be a name ({', '.join(repr(n) for n in OPTIMIZERS.names())}), a factory "
        f"factory(params, lr=...) such as torch.optim.RMSprop, or an Optimizer; got {optimizer!r}."
    )


def build_scheduler(
    scheduler: Any,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int | None,
    warmup_steps: int,
) -> Any:
    """The per-step scheduler ``finetune(scheduler=...)`` asks for: a name, ``None`` or a factory."""
    if scheduler is None:
        scheduler = "constant"
    if isinstance(scheduler, str):
        SCHEDULERS.get(scheduler)  # unknown name -> ConfigError listing the choices
        if total_steps is None and scheduler != "constant":
            raise ConfigError(
                f"scheduler={scheduler!r} needs the number of steps, but the data has no len(); pass "
                "steps=, data with a length (a DataLoader or a list), or scheduler='constant'."
            )
        fn = schedule_lambda(scheduler, total_steps or max(warmup_steps, 1), warmup_steps)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
    if callable(scheduler):
        if warmup_steps:
            raise ConfigError(
                "warmup_steps applies to the named schedulers only; build the warmup into your "
                "scheduler factory (e.g. torch.optim.lr_scheduler.SequentialLR) or use a named one."
            )
        sched = scheduler(optimizer, total_steps)
        if not callable(getattr(sched, "step", None)):
            raise ConfigError(
                f"scheduler factory {name_of(scheduler)} returned {type(sched).__name__}, which has "
                "no step() method."
            )
        return sched
    raise ConfigError(
        f"scheduler must be a name ({', '.join(repr(n) for n in SCHEDULERS.names())}), None, or a "
        f"factory scheduler(optimizer, total_steps) -> LRScheduler; got {scheduler!r}."
    )
