"""The training loop of :func:`~torchcompress.train.finetune`: epochs, steps, logging, evaluation.

One :class:`Loop` per call: each optimizer step is forward, loss (task, distillation,
regularizers), a reduction across ranks (for logging, and so that a NaN on any rank stops every
rank before the backward), backward, clipping, optimizer and scheduler step, with the callback
hooks in between; each epoch ends with the buffers synchronised across ranks, an evaluation and
a record in the history.

Example:
    >>> import torch, torchcompress as tc
    >>> model = torch.nn.Linear(4, 2)
    >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))] * 3
    >>> tc.train.training_history(tc.finetune(model, data, progress=False))[-1]["step"]
    3
"""

from __future__ import annotations

import logging
import math
import time
import typing
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..batches import Batch, iter_batches, run_model
from ..errors import ConfigError, DataError, NumericalError
from .callbacks import HISTORY_ATTR, TrainState, call_hooks
from .distributed import Dist
from .environment import Modes, model_device, progress_bar, to_device
from .evaluation import evaluate
from .losses import LabelCheck, describe, extract_logits, model_loss, task_loss, user_loss
from .optim import name_of

__all__: list[str] = []

log = logging.getLogger(__package__)  # "torchcompress.train", as the docs say

Regularizer = Callable[[nn.Module], torch.Tensor]


class Loop:
    """The training loop of :func:`~torchcompress.train.finetune` (one instance per call)."""

    def __init__(
        self,
        state: TrainState,
        dist_: Dist,
        *,
        train_data: Any,
        sampler: Any,
        stop_sync: bool,
        n_epochs: int | None,
        steps: int | None,
        one_shot: bool,
        params: list[torch.nn.Parameter],
        loss_fn: Any,
        teacher: nn.Module | None,
        distill_loss: Callable[[Any, Any, Any], torch.Tensor] | None,
        regs: list[Regularizer],
        callbacks: list[Any],
        eval_data: Any,
        grad_clip: float | None,
        log_every: int,
        ddp_kwargs: dict[str, Any],
        causal: bool = False,
        distill: Any = None,
        extra_params: list[torch.nn.Parameter] | None = None,
    ) -> None:
        self.state, self.dist = state, dist_
        self.causal = causal
        self.train_data, self.sampler, self.stop_sync = train_data, sampler, stop_sync
        self.n_epochs, self.steps, self.one_shot = n_epochs, steps, one_shot
        self.params, self.loss_fn, self.regs = params, loss_fn, regs
        self.teacher, self.distill_loss, self.distill = teacher, distill_loss, distill
        self.extra_params = list(extra_params or [])
        self.teacher_dev = model_device(teacher) if teacher is not None else None
        self.callbacks, self.eval_data = callbacks, eval_data
        self.grad_clip, self.log_every = grad_clip, log_every
        self.level = logging.INFO if dist_.rank == 0 else logging.DEBUG
        self.model = state.model
        self.train_model: nn.Module = self.model
        if dist_.active:
            from torch.nn.parallel import DistributedDataParallel

            dev = state.device
            if dev.type == "cuda":
                ddp_kwargs.setdefault("device_ids", [dev.index if dev.index is not None else 0])
            self.train_model = DistributedDataParallel(self.model, **ddp_kwargs)
            dist_.broadcast(self.extra_params)  # learned parts outside the model start equal
        self.bar: Any = None

    def run(self, *, show: bool) -> None:
        state = self.state
        modes = Modes(self.model, self.teacher)
        self.bar = progress_bar(show, state.total_steps, "finetune")
        try:
            self.model.train()
            if self.teacher is not None:
                if any(m.training for m in self.teacher.modules()):
                    log.warning(
                        "finetune: the teacher %s was in train mode; it runs in eval mode while "
                        "distilling (BatchNorm statistics and dropout frozen) and its modes are "
                        "restored afterwards",
                        type(self.teacher).__name__,
                    )
                self.teacher.eval()
            call_hooks(self.callbacks, "on_train_begin", state)
            epoch = 0
            while self.n_epochs is None or epoch < self.n_epochs:
                state.epoch = epoch
                finished = self._epoch(epoch)
                if finished or state.stop_training:
                    break
                epoch += 1
            call_hooks(self.callbacks, "on_train_end", state)
        finally:
            modes.restore()
            if self.bar is not None:
                self.bar.close()
            state.batch = None
            state.output = None

    def _batches(self) -> Iterator[Batch | None]:
        """This epoch's batches; under DDP with data of unknown length, stop when any rank runs out."""
        source = iter_batches(
            self.train_data,
            device=self.state.device,
            pass_labels=self.loss_fn == "model",
            what="data",
        )
        while True:
            batch = next(source, None)
            if self.stop_sync:
                have = torch.tensor([0.0 if batch is None else 1.0])
                if self.dist.all_reduce_sum(have).item() < self.dist.world_size - 0.5:
                    return
            if batch is None:
                return
            yield batch

    def _epoch(self, epoch: int) -> bool:
        """Run one epoch; return whether training is over."""
        state = self.state
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum, n_steps = 0.0, 0
        finished = False
        for i, batch in enumerate(self._batches()):
            state.epoch_step, state.batch = i, batch
            loss_sum += self._step(epoch, i, batch)
            n_steps += 1
            if state.stop_training or (
                state.total_steps is not None and state.step >= state.total_steps
            ):
                finished = True
                break
        state.output = None
        if n_steps == 0:
            raise DataError(f"data yielded no batch in epoch {epoch}.")
        if self.one_shot:
            if self.steps is not None and state.step < self.steps:
                log.warning(
                    "data ran out after %d of steps=%d; pass a DataLoader or a list to train "
                    "for more than one pass",
                    state.step,
                    self.steps,
                )
            finished = True
        self._end_epoch(epoch, loss_sum / n_steps, time.perf_counter() - t0)
        return finished or state.stop_training

    def _step(self, epoch: int, index: int, batch: Batch) -> float:
        state, opt = self.state, self.state.optimizer
        call_hooks(self.callbacks, "on_step_begin", state)
        opt.zero_grad(set_to_none=True)
        loss, parts, check = step_loss(
            self.train_model,
            self.model,
            batch,
            index=index,
            loss_fn=self.loss_fn,
            teacher=self.teacher,
            teacher_dev=self.teacher_dev,
            distill_loss=self.distill_loss,
            regs=self.regs,
            state=state,
            causal=self.causal,
            distill=self.distill,
        )
        # One reduction per step: the loss for logging, and a NaN (or a label out of range) on
        # any rank stops every rank before the backward (where DDP would otherwise wait for the
        # rank that raised).
        names = [n for n in parts if len(parts) > 1]  # a lone part is the total itself
        flags = [check.bad.float()] if check is not None else []
        vals = torch.stack([loss.detach().float(), *(parts[n].float() for n in names), *flags])
        if self.dist.active:
            vals = self.dist.all_reduce_sum(vals) / self.dist.world_size
        values = vals.tolist()
        if check is not None and values.pop() > 0:
            if int(check.bad):
                raise check.error(f"Batch {index} of data")
            raise DataError(
                f"finetune: at step {state.step} a batch on another rank has a label out of "
                "range for the model's output; labels must be in 0..classes-1, or -100."
            )
        if not math.isfinite(values[0]):
            raise NumericalError(
                f"finetune: the loss is {values[0]} at step {state.step} (epoch {epoch}, batch "
                f"{index}). Lower lr (now {state.lr:g}), set grad_clip=, or check the data and the "
                "model for NaN/Inf."
            )
        loss.backward()
        if self.extra_params and self.dist.active:
            self.dist.average_grads(self.extra_params)
        call_hooks(self.callbacks, "on_after_backward", state)
        if self.grad_clip is not None:
            state.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        step_lr = state.lr
        opt.step()
        state.scheduler.step()
        state.step += 1
        state.loss = values[0]
        state.losses = dict(zip(names, values[1:])) if names else {n: values[0] for n in parts}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{state.loss:.4f}", lr=f"{step_lr:.3g}", refresh=False)
        if state.step % self.log_every == 0:
            total = f"/{state.total_steps}" if state.total_steps else ""
            log.log(
                self.level,
                "step %d%s epoch %d: loss %.4f, lr %.4g",
                state.step,
                total,
                epoch,
                state.loss,
                step_lr,
            )
        call_hooks(self.callbacks, "on_step_end", state)
        return state.loss

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics drift apart in the last step)."""
        if not self.dist.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for b in self.model.buffers():
                if dist.get_backend() == "gloo" and b.device.type != "cpu":
                    tmp = b.cpu()
                    dist.broadcast(tmp, 0)
                    b.copy_(tmp)
                else:
                    dist.broadcast(b, 0)

    def _end_epoch(self, epoch: int, train_loss: float, seconds: float) -> None:
        state = self.state
        self._sync_buffers()
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": state.step,
            "train_loss": train_loss,
            "lr": state.lr,
        }
        if self.eval_data is not None:
            metrics = evaluate(
                self.model,
                self.eval_data,
                loss_fn=self.loss_fn,
                progress=False,
                ddp=None if self.dist.active else False,
            )
            self.model.train()
            state.metrics = metrics
            for k, v in metrics.items():
                if k not in ("samples", "batches"):
                    record[f"eval_{k}"] = v
        record["time_s"] = seconds
        state.history.append(record)
        object.__setattr__(self.model, HISTORY_ATTR, state.history)
        evals = "".join(
            f", {k} {v:.4f}"
            for k, v in record.items()
            if k.startswith("eval_") and isinstance(v, float)
        )
        log.log(
            self.level,
            "epoch %d%s: train loss %.4f%s (%.1f s)",
            epoch,
            f"/{self.n_epochs}" if self.n_epochs else "",
            train_loss,
            evals,
            seconds,
        )
        call_hooks(self.callbacks, "on_epoch_end", state)


def is_iterator(data: Any) -> bool:
    # Not `iter(data) is data`: iterating a shuffled DataLoader draws from its generator, which
    # would change the order of the batches the training then sees.
    return isinstance(data, Iterator)


def step_loss(
    train_model: nn.Module,
    model: nn.Module,
    batch: Batch,
    *,
    index: int,
    loss_fn: Any,
    teacher: nn.Module | None,
    teacher_dev: torch.device | None,
    distill_loss: Callable[[Any, Any, Any], torch.Tensor] | None,
    regs: list[Regularizer],
    state: TrainState,
    causal: bool = False,
    distill: Any = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], LabelCheck | None]:
    """Forward one batch: the total loss, its (detached) components, and the label check.

    The check (see :func:`~torchcompress.train.losses.cross_entropy`) is ``None`` unless the
    default loss ran off the CPU.
    """
    output = run_model(train_model, batch, index=index, what="data")
    state.output = output
    parts: dict[str, torch.Tensor] = {}
    total: torch.Tensor | None = None
    check: LabelCheck | None = None
    if distill is not None:
        total = distillation_loss(distill, output, batch, index=index, parts=parts)
    if teacher is not None and distill_loss is not None:
        tb = batch.to(teacher_dev) if teacher_dev is not None else batch
        with torch.no_grad():
            t_out = run_model(teacher, tb, index=index, what="data (teacher)")
        if teacher_dev is not None and teacher_dev != state.device:
            t_out = to_device(t_out, state.device)
        d = distill_loss(output, t_out, batch.target)
        if not isinstance(d, torch.Tensor) or d.numel() != 1:
            raise DataError(
                f"Batch {index} of data: distill_loss returned {describe(d)}; it must return a "
                "scalar tensor."
            )
        d = d.reshape(())
        parts["distill"] = d.detach()
        total = d
    if (teacher is None and distill is None) or loss_fn is not None:
        if loss_fn is None:
            task, _, check = task_loss(
                extract_logits(output),
                batch.target,
                index=index,
                what="data",
                output=output,
                mean=True,
                causal=causal,
            )
        elif loss_fn == "model":
            task = model_loss(output, index=index, what="data")
        else:
            task = user_loss(loss_fn, output, batch.target, index=index, what="data")
        if task.dim():
            task = task.mean() if task.numel() != 1 else task.reshape(())
        parts["task"] = task.detach()
        total = task if total is None else total + task
    if regs:
        reg_total: torch.Tensor | None = None
        for j, r in enumerate(regs):
            v = r(model)
            if not isinstance(v, torch.Tensor) or v.numel() != 1:
                raise ConfigError(
                    f"regularizer[{j}] ({name_of(r)}) returned {describe(v)}; it must return a "
                    "scalar tensor."
                )
            v = v.reshape(()).to(state.device)
            reg_total = v if reg_total is None else reg_total + v
        reg_total = typing.cast(torch.Tensor, reg_total)
        parts["regularizer"] = reg_total.detach()
        total = reg_total if total is None else total + reg_total
    return typing.cast(torch.Tensor, total), parts, check


def distillation_loss(
    distill: Any, output: Any, batch: Batch, *, index: int, parts: dict[str, torch.Tensor]
) -> torch.Tensor:
    """``distill.loss(output, batch)`` checked; its total and components go into ``parts``."""
    got = distill.loss(output, batch)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise ConfigError(
            f"{name_of(distill)}.loss returned {describe(got)}; it must return (loss, components)."
        )
    d, comps = got
    if not isinstance(d, torch.Tensor) or d.numel() != 1:
        raise DataError(
            f"Batch {index} of data: {name_of(distill)}.loss returned {describe(d)} as the loss; "
            "it must be a scalar tensor."
        )
    d = d.reshape(())
    parts["distill"] = d.detach()
    for name, v in dict(comps or {}).items():
        v = torch.as_tensor(v, device=d.device).detach()
        if v.numel() == 1:
            parts[f"distill.{name}"] = v.reshape(()).to(d.dtype)
    return d
