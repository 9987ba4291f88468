"""Fine-tuning: :func:`finetune`, a plain, honest training loop that also runs under ``torchrun``.

The arguments are checked and resolved here (device, process group, data shards, number of
epochs and steps, optimizer, scheduler); the loop itself is :class:`~torchcompress.train.loop.Loop`.

Example:
    >>> import torch, torchcompress as tc
    >>> train, test = tc.data.digits(image_size=8, channels=1)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> model = tc.finetune(model, train, epochs=3, lr=0.1, progress=False)
    >>> tc.evaluate(model, test)["accuracy"] > 0.85
    True
"""

from __future__ import annotations

import logging
import math
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..batches import Batch, as_batch, count_batches
from ..errors import ConfigError, DataError, check_range
from ..io import add_history
from ..progress import progress_enabled
from .callbacks import Callback, TrainState, as_callbacks
from .distillation import Distillation, check_distillation, peek_first
from .distributed import env_world_size, setup_dist, shard, unwrap
from .environment import model_device, resolve_device
from .evaluation import check_loss_fn
from .loop import Loop, Regularizer, is_iterator
from .losses import LossFn, is_causal_lm
from .optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, name_of

__all__ = ["finetune"]

log = logging.getLogger(__package__)  # "torchcompress.train", as the docs say


def check_pos_int(field: str, value: Any, *, allow_none: bool = True, low: int = 1) -> None:
    """``value`` is an int ``>= low`` (or ``None`` when allowed), else a :class:`ConfigError`."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"finetune: {field} must be an int, got {type(value).__name__} {value!r}."
        )
    check_range(field, value, low, owner="finetune")


def as_regularizers(regularizer: Any) -> list[Regularizer]:
    """``regularizer=`` as a list of callables."""
    if regularizer is None:
        return []
    regs = [regularizer] if callable(regularizer) else list(regularizer)
    for i, r in enumerate(regs):
        if not callable(r):
            raise ConfigError(
                f"regularizer[{i}] is {type(r).__name__}; each regularizer must be a callable "
                "regularizer(model) -> scalar tensor."
            )
    return regs


def finetune(
    model: nn.Module,
    data: Any,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float = 0.01,
    optimizer: str | Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    scheduler: str | Callable[..., Any] | None = "cosine",
    warmup_steps: int = 0,
    loss_fn: LossFn | str | None = None,
    teacher: nn.Module | None = None,
    distill_loss: Callable[[Any, Any, Any], torch.Tensor] | None = None,
    distill: Distillation | None = None,
    regularizer: Regularizer | Sequence[Regularizer] | None = None,
    callbacks: Sequence[Callback] | Callback = (),
    eval_data: Any = None,
    device: torch.device | str | None = None,
    grad_clip: float | None = None,
    progress: bool | None = None,
    ddp: bool | Mapping[str, Any] | None = None,
    log_every: int | None = None,
) -> nn.Module:
    """Train ``model`` on ``data`` with a plain loop, in place, and return it.

    Each optimizer step: forward, loss (``loss_fn``, or with a ``teacher`` the distillation loss),
    plus every ``regularizer(model)`` term, backward, optional gradient-norm clipping, optimizer step,
    scheduler step. The model trains in train mode and comes back with every submodule in the mode it
    came in. Per-epoch records (train loss, learning rate, evaluation on ``eval_data``) are logged
    through :mod:`logging` (``torchcompress.train``), kept in :func:`training_history` and in
    ``state.history``; a progress bar shows when run interactively. The run is also recorded in the
    model's compression history (:func:`torchcompress.io.history`), so :func:`torchcompress.save`
    keeps it.

    **Distributed.** Launched by ``torchrun`` (``WORLD_SIZE > 1``) or with ``ddp=True``, the process
    group is initialised if needed (``nccl`` for a CUDA model, ``gloo`` on CPU), the model is wrapped
    in ``DistributedDataParallel`` (a CUDA model goes to ``cuda:LOCAL_RANK``), a DataLoader's data set
    is sharded with a ``DistributedSampler`` (the loader is rebuilt with the same batch size, collate
    function and workers; its epoch is set every epoch), other iterables are split batch by batch,
    losses and metrics are averaged across ranks and only rank 0 logs and shows progress. The same
    script runs unchanged on one process. The batch size is per rank.

    Args:
        model: the model to train (in place).
        data: any iterable of batches (see :mod:`torchcompress.batches`); a DataLoader is usual.
        epochs: passes over ``data``. Default: 1, or, when ``steps`` is given, as many as it takes.
        steps: stop after this many optimizer steps (with ``epochs`` too, whichever comes first).
        lr: base learning rate.
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"`` (see :data:`OPTIMIZERS`; ``momentum`` is Adam's
            beta1), a factory ``factory(params, lr=lr)`` such as ``torch.optim.RMSprop`` or a
            ``functools.partial`` of one, or a ready ``Optimizer`` over the model's parameters
            (then ``lr``, ``momentum`` and ``weight_decay`` are its own).
        momentum: SGD momentum (Adam's beta1).
        weight_decay: L2 weight decay (decoupled for AdamW).
        scheduler: per-step learning-rate schedule: ``"cosine"`` (to zero), ``"linear"`` (to zero),
            ``"step"`` (x0.1 at 50% and 75% of the steps), ``"constant"``/``None`` (see
            :data:`SCHEDULERS`), or a factory ``scheduler(optimizer, total_steps)`` returning an
            object with ``step()``, stepped once per optimizer step.
        warmup_steps: linear warmup from ``lr / warmup_steps`` to ``lr`` over this many steps
            (named schedulers only).
        loss_fn: ``None`` for cross-entropy on the logits (for a Hugging Face causal language
            model, on the next token, as its own loss: see :func:`evaluate`), ``"model"`` for the
            ``.loss`` a model returns given dict batches with ``"labels"``, or
            ``loss_fn(output, target) -> Tensor``.
        teacher: a teacher model for distillation: run in eval mode under ``no_grad`` on each batch
            and never updated (a teacher in train mode is put in eval mode, with a warning, and
            its modes are restored at the end).
        distill_loss: ``distill_loss(student_output, teacher_output, target) -> Tensor``: the
            simple form of distillation (the loop runs the teacher on each batch).
        distill: a distillation object (:class:`~torchcompress.train.distillation.Distillation`:
            ``attach``, ``parameters``, ``loss``, ``detach``), such as ``tc.distill.kd()`` or
            ``tc.distill.Distiller([...])``: any weighted mix of losses on the logits and on
            named modules of both models, learned adapters (trained with the model), a teacher
            output cache. With ``teacher``, one of ``distill`` or ``distill_loss`` is required; the
            training loss is then the distillation loss, plus ``loss_fn(output, target)`` only if
            ``loss_fn`` is given explicitly (the hard labels belong in the distillation mix:
            ``"kd"``'s ``alpha``, or a ``"ce"`` term).
        regularizer: ``regularizer(model) -> scalar Tensor`` (or a list of them), added to the loss
            (e.g. a sparsity or low-rank penalty). It receives the unwrapped model.
        callbacks: :class:`Callback` objects (hook order: see :class:`Callback`).
        eval_data: evaluated with :func:`evaluate` after every epoch (and at the end of a partial one).
        device: train there (the model is moved, in place); default: the model's device.
        grad_clip: clip the total gradient norm to this value.
        progress: show a progress bar (default: when stderr is a terminal; rank 0 only).
        ddp: ``None``: DDP when launched with several ranks; ``True``: require it; ``False``: never;
            or a dict of ``DistributedDataParallel`` keyword arguments (implies ``True``), e.g.
            ``{"find_unused_parameters": True}``.
        log_every: log the running loss every this many steps (default: about 10 times per epoch).

    Returns:
        ``model`` (never the DDP wrapper), trained, in the train/eval mode it came in.

    Raises:
        ConfigError: an argument out of range, an unknown optimizer or scheduler name (the message
            lists the choices), a teacher without ``distill``/``distill_loss`` (or the reverse, or
            both), a ``distill`` object without the protocol's methods, a model without trainable
            parameters, or ``ddp=True`` outside a distributed launch.
        DataError: ``data`` is empty, a batch does not fit the model (the message names the batch),
            a batch has no target for the loss, or a label is out of range for the model's output
            (the message names the batch, the label and the number of classes).
        NumericalError: the loss became NaN or infinite (the message names the step).

    Example:
        >>> import torch, torchcompress as tc
        >>> train, test = tc.data.digits(batch_size=64, image_size=8, channels=1)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> model = tc.finetune(model, train, epochs=2, lr=0.05, eval_data=test, progress=False)
        >>> tc.train.training_history(model)[-1]["eval_accuracy"] > 0.85
        True
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"finetune: model must be an nn.Module, got {type(model).__name__}.")
    check_pos_int("epochs", epochs)
    check_pos_int("steps", steps)
    check_pos_int("warmup_steps", warmup_steps, allow_none=False, low=0)
    check_pos_int("log_every", log_every)
    check_range("lr", lr, 0.0, low_inclusive=False, owner="finetune")
    if not math.isfinite(lr):
        raise ConfigError(f"finetune: lr={lr!r} must be finite.")
    check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False, owner="finetune")
    check_range("weight_decay", weight_decay, 0.0, owner="finetune")
    if grad_clip is not None:
        check_range("grad_clip", grad_clip, 0.0, low_inclusive=False, owner="finetune")
    if isinstance(optimizer, str):
        OPTIMIZERS.get(optimizer)
    if isinstance(scheduler, str):
        SCHEDULERS.get(scheduler)
    check_loss_fn(loss_fn)
    if distill is not None and distill_loss is not None:
        raise ConfigError(
            "finetune: pass distill= (a distillation object) or distill_loss= (a function), not both."
        )
    if teacher is not None and distill_loss is None and distill is None:
        raise ConfigError(
            "finetune: teacher= needs distill_loss=fn(student_output, teacher_output, target) or "
            "distill=tc.distill.kd() (or another tc.distill.Distiller); without it the teacher "
            "would be ignored."
        )
    if distill_loss is not None and teacher is None:
        raise ConfigError("finetune: distill_loss= needs teacher=, the model to distil from.")
    if distill is not None and teacher is None:
        raise ConfigError("finetune: distill= needs teacher=, the model to distil from.")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ConfigError(f"finetune: teacher must be an nn.Module, got {type(teacher).__name__}.")
    if distill_loss is not None and not callable(distill_loss):
        raise ConfigError("finetune: distill_loss must be callable.")
    if distill is not None:
        check_distillation(distill)
    if ddp is not None and not isinstance(ddp, bool | Mapping):
        raise ConfigError(f"finetune: ddp must be None, True, False or a dict, got {ddp!r}.")
    cbs = as_callbacks(callbacks)
    regs = as_regularizers(regularizer)
    if data is None:
        raise DataError("finetune: data is None; pass a DataLoader or an iterable of batches.")

    model = unwrap(model)
    example = None
    if distill is not None:  # before sharding: a one-shot iterator gets its first batch back
        example, data = peek_first(data)
    if (
        device is None
        and ddp is not False
        and env_world_size() > 1
        and model_device(model).type == "cuda"
        and "LOCAL_RANK" in os.environ
    ):
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    dev = resolve_device(model, device)
    dist_ = setup_dist(ddp, dev)
    train_data, sampler, stop_sync = shard(data, dist_, train=True, what="data")
    one_shot = not isinstance(data, torch.Tensor | Mapping | Batch) and is_iterator(data)
    n_epochs, total_steps = plan(train_data, epochs, steps, one_shot=one_shot, data=data)
    if total_steps is not None and warmup_steps >= total_steps > 0:
        log.warning(
            "warmup_steps=%d covers all %d steps: the learning rate never leaves the warmup",
            warmup_steps,
            total_steps,
        )

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(
            f"finetune: {type(model).__name__} has no trainable parameters (all have "
            "requires_grad=False)."
        )
    if distill is not None:
        distill.attach(
            model,
            typing.cast(nn.Module, teacher),
            as_batch(example, pass_labels=loss_fn == "model").to(dev),
        )
    try:
        extra: list[torch.nn.Parameter] = []
        if distill is not None:
            own = {id(p) for p in params}
            extra = [p for p in distill.parameters() if p.requires_grad and id(p) not in own]
        opt = build_optimizer(
            optimizer, params, lr=lr, momentum=momentum, weight_decay=weight_decay, extra=extra
        )
        sched = build_scheduler(scheduler, opt, total_steps=total_steps, warmup_steps=warmup_steps)
        state = TrainState(
            model=model,
            optimizer=opt,
            scheduler=sched,
            total_steps=total_steps,
            rank=dist_.rank,
            world_size=dist_.world_size,
            device=dev,
        )
        per_epoch = None if one_shot else count_batches(train_data)
        loop = Loop(
            state,
            dist_,
            train_data=train_data,
            sampler=sampler,
            stop_sync=stop_sync,
            n_epochs=n_epochs,
            steps=steps,
            one_shot=one_shot,
            params=params + extra,
            extra_params=extra,
            loss_fn=loss_fn,
            teacher=teacher if distill is None else None,
            distill_loss=distill_loss,
            distill=distill,
            regs=regs,
            callbacks=cbs,
            eval_data=eval_data,
            grad_clip=grad_clip,
            log_every=log_every or (max(1, per_epoch // 10) if per_epoch else 50),
            ddp_kwargs=dict(ddp) if isinstance(ddp, Mapping) else {},
            causal=loss_fn is None and is_causal_lm(model),
        )
        if dist_.rank == 0:
            log.info(
                "finetune: %s on %s, %s epoch(s), %s steps, optimizer %s, lr %g, scheduler %s%s%s",
                type(model).__name__,
                dev,
                n_epochs if n_epochs is not None else "?",
                total_steps if total_steps is not None else "?",
                name_of(optimizer),
                lr,
                name_of(scheduler) if scheduler is not None else "constant",
                f", DDP over {dist_.world_size} ranks" if dist_.active else "",
                f", distilling ({name_of(distill)})" if distill is not None else "",
            )
        loop.run(show=progress_enabled(progress) and dist_.rank == 0)
    finally:
        if distill is not None:
            distill.detach()

    add_history(
        model,
        "finetune",
        {
            "epochs": len(state.history),
            "steps": state.step,
            "lr": lr,
            "optimizer": name_of(optimizer),
            "scheduler": name_of(scheduler) if scheduler is not None else "constant",
            "warmup_steps": warmup_steps,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "grad_clip": grad_clip,
            "world_size": dist_.world_size,
            "distilled": teacher is not None,
            **({"distill": distill_record(distill)} if distill is not None else {}),
        },
    )
    return model


def plan(
    train_data: Any, epochs: int | None, steps: int | None, *, one_shot: bool, data: Any
) -> tuple[int | None, int | None]:
    """``(epochs, total optimizer steps)``; ``None`` where the data's length is unknown."""
    per_epoch = None if one_shot else count_batches(train_data)
    n_epochs: int | None
    if epochs is not None:
        n_epochs = epochs
    elif steps is None or one_shot:
        n_epochs = 1
    elif per_epoch:
        n_epochs = math.ceil(steps / per_epoch)
    else:
        n_epochs = None  # a re-iterable of unknown length: as many passes as `steps` needs
    if one_shot and n_epochs > 1:
        raise ConfigError(
            f"finetune: data is a one-shot iterator ({type(data).__name__}), which cannot be "
            f"iterated for {n_epochs} epochs; pass a DataLoader or a list of batches."
        )
    if per_epoch is not None and n_epochs is not None:
        planned = per_epoch * n_epochs
        return n_epochs, (min(planned, steps) if steps is not None else planned)
    return n_epochs, steps


def distill_record(distill: Any) -> Any:
    """What the history keeps of ``distill=``: its ``to_dict()`` when it has one, else its name."""
    to_dict = getattr(distill, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict()
        except Exception:  # a record is never worth failing the run over
            pass
    return name_of(distill)
