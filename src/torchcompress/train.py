"""Evaluation and fine-tuning: a plain, honest loop that also runs unchanged under ``torchrun``.

- :func:`evaluate`: top-1 (and top-k) accuracy and mean loss of a model on any iterable of batches,
  under ``torch.no_grad``, restoring every submodule's train/eval mode afterwards.
- :func:`finetune`: optimizer and learning-rate schedule by name (or your own), warmup, gradient
  clipping, regularizer terms, callbacks, an optional teacher for distillation, per-epoch evaluation,
  logging and a progress bar. Launched by ``torchrun`` (or with ``ddp=True``) it wraps the model in
  ``DistributedDataParallel``, shards the data across ranks and averages the metrics.
- :func:`seed_everything`, :class:`Callback`, :class:`TrainState`.

Batches are whatever :mod:`torchcompress.batches` accepts: tensors, ``(inputs, targets)``
tuples/lists, or dicts of keyword arguments (Hugging Face style, ``"labels"`` is the target). Model
outputs may be tensors, tuples (the first element is the logits) or objects/dicts with ``.logits``.

Example:
    >>> import torch, torchcompress as tc
    >>> train, test = tc.data.digits(image_size=8, channels=1)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> model = tc.finetune(model, train, epochs=3, lr=0.1, progress=False)
    >>> tc.evaluate(model, test)["accuracy"] > 0.85
    True
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import random
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    RandomSampler,
    Sampler,
)

from .batches import Batch, batch_size, count_batches, iter_batches, run_model
from .errors import (
    ConfigError,
    DataError,
    DependencyError,
    NumericalError,
    check_range,
)
from .progress import progress_enabled
from .registry import Registry

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "Callback",
    "LambdaCallback",
    "TrainState",
    "evaluate",
    "extract_logits",
    "finetune",
    "seed_everything",
    "training_history",
]

log = logging.getLogger(__name__)

_HISTORY_ATTR = "_torchcompress_train_history"
_IGNORE_INDEX = -100
_HOOKS = (
    "on_train_begin",
    "on_step_begin",
    "on_after_backward",
    "on_step_end",
    "on_epoch_end",
    "on_train_end",
)

LossFn = Callable[[Any, Any], torch.Tensor]
Regularizer = Callable[[nn.Module], torch.Tensor]

# --------------------------------------------------------------------------------------------
# seeding
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int, *, deterministic: bool = False) -> int:
    """Seed Python's ``random``, numpy and torch (CPU and every CUDA device).

    Args:
        seed: the seed (a non-negative int).
        deterministic: also ask torch for deterministic algorithms (``warn_only``: an op without a
            deterministic implementation warns instead of failing) and turn off cuDNN autotuning.

    Returns:
        ``seed``.

    Raises:
        ConfigError: ``seed`` is not a non-negative int.

    Example:
        >>> import torch, torchcompress as tc
        >>> _ = tc.seed_everything(0); a = torch.rand(2)
        >>> _ = tc.seed_everything(0); bool((torch.rand(2) == a).all())
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed_everything: seed must be a non-negative int, got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too, lazily (no CUDA initialisation)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


# --------------------------------------------------------------------------------------------
# optimizers and schedules
# --------------------------------------------------------------------------------------------

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


def _schedule_lambda(name: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    fn = SCHEDULERS.get(name)
    main = max(1, total_steps - warmup_steps)

    def multiplier(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return float(fn(s - warmup_steps, main))

    return multiplier


# --------------------------------------------------------------------------------------------
# callbacks and state
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class TrainState:
    """What :func:`finetune` passes to every :class:`Callback` hook.

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
        metrics: the last :func:`evaluate` result on ``eval_data`` (``None`` before the first).
        history: one record per epoch (see :func:`training_history`).
        stop_training: set it to ``True`` in a hook to end training after the current step.
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
    """Hooks into :func:`finetune`; override the ones you need (each receives the :class:`TrainState`).

    Order within one optimizer step: ``on_step_begin`` -> forward and loss -> backward ->
    ``on_after_backward`` (gradients are ready and, under DDP, averaged; a good place to mask them)
    -> gradient clipping -> optimizer and scheduler step -> ``on_step_end`` (e.g. re-apply masks,
    update a sparsity schedule). ``on_epoch_end`` runs after the epoch's evaluation, so
    ``state.metrics`` is fresh. Set ``state.stop_training = True`` to stop early.

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
            if name not in _HOOKS:
                from .errors import did_you_mean

                raise ConfigError(
                    f"LambdaCallback: unknown hook {name!r}; hooks are {', '.join(_HOOKS)}."
                    f"{did_you_mean(name, _HOOKS)}"
                )
            if not callable(fn):
                raise ConfigError(f"LambdaCallback: {name} must be callable, got {fn!r}.")
            setattr(self, name, fn)


def training_history(model: nn.Module) -> list[dict[str, Any]]:
    """The per-epoch records of the last :func:`finetune` call on ``model``.

    Each record has ``epoch`` (0-based), ``step`` (optimizer steps so far), ``train_loss`` (mean over
    the epoch's steps and ranks), ``lr`` (at the end of the epoch), ``time_s`` (seconds of training,
    evaluation excluded), and, with ``eval_data``, ``eval_accuracy`` / ``eval_loss`` (and
    ``eval_top{k}_accuracy``). The same list is ``state.history`` in callbacks.

    Example:
        >>> import torchcompress as tc
        >>> tc.train.training_history(model)[-1]["eval_accuracy"]   # doctest: +SKIP
        0.97
    """
    return list(getattr(model, _HISTORY_ATTR, []))


# --------------------------------------------------------------------------------------------
# outputs, losses and accuracy
# --------------------------------------------------------------------------------------------


def extract_logits(output: Any) -> torch.Tensor | None:
    """The logits in a model output: the tensor itself, ``output.logits`` (Hugging Face
    ``ModelOutput``), ``output["logits"]``, or the first element of a tuple/list; else ``None``.

    Example:
        >>> import torch
        >>> extract_logits((torch.zeros(2, 3), "aux")).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        v = output.get("logits")
        return v if isinstance(v, torch.Tensor) else None
    if isinstance(output, tuple | list) and output:
        return extract_logits(output[0])
    return None


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).replace('torch.', '')} tensor {tuple(x.shape)}"
    return type(x).__name__


def _class_layout(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Flatten (scores, labels) to ``(M, C)`` and ``(M,)`` for integer labels, or ``None``.

    Accepts class-last logits ``(N, ..., C)`` with labels ``(N, ...)`` (classification, and token
    classification / language modelling as in Hugging Face) and class-second logits ``(N, C, ...)``
    with labels ``(N, ...)`` (the torch convention, e.g. segmentation).
    """
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        return None
    if logits.dim() < 2 or not logits.is_floating_point():
        return None
    if tuple(target.shape) == tuple(logits.shape[:-1]):
        if logits.dim() == 2:  # the common case: nothing to reshape
            return logits, target
        return logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    if logits.dim() > 2 and tuple(target.shape) == (logits.shape[0], *logits.shape[2:]):
        return logits.movedim(1, -1).reshape(-1, logits.shape[1]), target.reshape(-1)
    return None


def _default_loss(
    logits: torch.Tensor | None,
    target: Any,
    *,
    index: int,
    what: str,
    output: Any,
    mean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-entropy: its mean over the labelled positions (``mean``, for training; count ``None``),
    or its sum and the number of labelled positions it sums over (for evaluation)."""
    if logits is None:
        raise DataError(
            f"Batch {index} of {what}: the model returned {_describe(output)}, which holds no logits "
            "(a tensor, a tuple starting with one, or an object with .logits). Pass loss_fn=..."
        )
    if not isinstance(target, torch.Tensor):
        raise DataError(
            f"Batch {index} of {what} has no target tensor (got {_describe(target)}); the default "
            "cross-entropy needs (inputs, targets) batches or dict batches with 'labels' (a single "
            "(inputs, targets) tuple passed as the data is iterated element by element: wrap it in "
            "a list). Pass loss_fn=... for another kind of target."
        )
    target = target.to(logits.device)
    layout = _class_layout(logits, target)
    if layout is not None:
        scores, labels = layout
        if mean and scores is logits:  # (N, C): the plain call, as a hand-written loop makes it
            return F.cross_entropy(scores.float(), labels, ignore_index=_IGNORE_INDEX), None
        loss = F.cross_entropy(scores.float(), labels, ignore_index=_IGNORE_INDEX, reduction="sum")
        count = (labels != _IGNORE_INDEX).sum()
        if mean:  # a batch whose positions are all -100 contributes 0, not NaN
            return loss / count.clamp_min(1), None
        return loss, count
    if target.is_floating_point() and target.shape == logits.shape and logits.dim() == 2:
        if mean:  # soft labels
            return F.cross_entropy(logits.float(), target.float()), None
        loss = F.cross_entropy(logits.float(), target.float(), reduction="sum")
        return loss, torch.tensor(logits.shape[0], device=logits.device)
    raise DataError(
        f"Batch {index} of {what}: cannot take the cross-entropy of the model output "
        f"({_describe(logits)}) against the target ({_describe(target)}); expected logits (N, C) "
        "with integer labels (N,) (or (N, ..., C) with (N, ...)). Pass loss_fn=... for other tasks."
    )


def _model_loss(output: Any, *, index: int, what: str) -> torch.Tensor:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor):
        raise DataError(
            f"Batch {index} of {what}: loss_fn='model' uses the loss the model returns, but its output "
            f"({_describe(output)}) has no .loss; pass dict batches with 'labels' to a model that "
            "computes its loss (e.g. a Hugging Face *For... model)."
        )
    return loss


def _user_loss(loss_fn: LossFn, output: Any, target: Any, *, index: int, what: str) -> torch.Tensor:
    from .errors import TorchCompressError

    try:
        loss = loss_fn(output, target)
    except TorchCompressError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise DataError(
            f"Batch {index} of {what}: loss_fn failed on the model output ({_describe(output)}) and "
            f"target ({_describe(target)}): {e}"
        ) from e
    if not isinstance(loss, torch.Tensor):
        raise DataError(
            f"Batch {index} of {what}: loss_fn returned {_describe(loss)}; it must return a tensor."
        )
    return loss


def _correct_topk(
    logits: torch.Tensor | None, target: Any, ks: Sequence[int], soft_ok: bool
) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """Correct predictions for each k and the number of labelled positions, or ``None``."""
    if logits is None or not isinstance(target, torch.Tensor):
        return None
    target = target.to(logits.device)
    layout = _class_layout(logits, target)
    if layout is None:
        if (
            soft_ok
            and target.is_floating_point()
            and target.shape == logits.shape
            and logits.dim() == 2
        ):
            layout = (logits, target.argmax(dim=1))
        else:
            return None
    scores, labels = layout
    valid = labels != _IGNORE_INDEX
    if tuple(ks) == (1,):
        return [((scores.argmax(dim=-1) == labels) & valid).sum()], valid.sum()
    kmax = min(max(ks), scores.shape[-1])
    top = scores.topk(kmax, dim=-1).indices  # (M, kmax)
    hits = top == labels.unsqueeze(-1)
    out = [(hits[:, : min(k, kmax)].any(dim=-1) & valid).sum() for k in ks]
    return out, valid.sum()


# --------------------------------------------------------------------------------------------
# devices, modes and distributed plumbing
# --------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def _model_device(model: nn.Module) -> torch.device:
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is None:
        return _model_device(model)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device!r} is not a torch device: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available on this machine.")
    if _model_device(model) != dev:
        model.to(dev)
    return dev


class _Modes:
    """Remember every submodule's train/eval flag and put them back (new submodules inherit)."""

    def __init__(self, *models: nn.Module | None) -> None:
        self.models = [m for m in models if m is not None]
        self.saved = {id(mod): mod.training for m in self.models for mod in m.modules()}

    def restore(self) -> None:
        for m in self.models:
            stack: list[tuple[nn.Module, bool]] = [(m, self.saved.get(id(m), m.training))]
            while stack:
                mod, inherited = stack.pop()
                mode = self.saved.get(id(mod), inherited)
                mod.training = mode
                stack.extend((c, mode) for c in mod.children())


class _Dist:
    def __init__(self, active: bool, rank: int = 0, world_size: int = 1) -> None:
        self.active = active and world_size > 1
        self.rank = rank
        self.world_size = world_size if self.active else 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return t
        import torch.distributed as dist

        dev = t.device
        if dist.get_backend() == "gloo" and dev.type != "cpu":
            t = t.cpu()
        elif dist.get_backend() == "nccl" and dev.type != "cuda":
            t = t.cuda()
        dist.all_reduce(t)
        return t.to(dev)


_DESTROY_REGISTERED = False


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _setup_dist(ddp: bool | Mapping[str, Any] | None, device: torch.device) -> _Dist:
    """Resolve ``ddp=``, initialising the process group when launched by torchrun."""
    global _DESTROY_REGISTERED
    if ddp is False:
        return _Dist(False, rank=int(os.environ.get("RANK", "0") or 0))
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    env_world = _env_world_size()
    wanted = (
        ddp is True
        or isinstance(ddp, Mapping)
        or (ddp is None and (env_world > 1 or (initialized and dist.get_world_size() > 1)))
    )
    if not wanted:
        return _Dist(False)
    if not dist.is_available():
        raise DependencyError("ddp=True needs torch.distributed, which this torch build lacks.")
    if not initialized:
        if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
            raise ConfigError(
                "ddp=True, but no process group is initialised and this process was not launched by "
                "torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set). Launch with "
                "`torchrun --nproc_per_node=N script.py` or call "
                "torch.distributed.init_process_group() first."
            )
        backend = "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info(
            "initialised the %s process group: rank %d of %d",
            backend,
            dist.get_rank(),
            dist.get_world_size(),
        )
        if not _DESTROY_REGISTERED:
            atexit.register(_destroy_group)
            _DESTROY_REGISTERED = True
    return _Dist(True, rank=dist.get_rank(), world_size=dist.get_world_size())


def _eval_dist(ddp: bool | None) -> _Dist:
    if ddp is False:
        return _Dist(False)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _Dist(True, rank=dist.get_rank(), world_size=dist.get_world_size())
    if ddp is True and _env_world_size() > 1:
        raise ConfigError(
            "evaluate(ddp=True): no process group is initialised; call tc.finetune (which "
            "initialises it under torchrun) or torch.distributed.init_process_group() first."
        )
    return _Dist(False)


class _StridedSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a data set: an exact, unpadded shard for evaluation."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _StridedBatches:
    """Every ``world``-th batch of an iterable, starting at ``rank`` (optionally truncated)."""

    def __init__(self, data: Any, rank: int, world_size: int, limit: int | None) -> None:
        self.data, self.rank, self.world_size, self.limit = data, rank, world_size, limit

    def __iter__(self) -> Iterator[Any]:
        n = 0
        for i, b in enumerate(_as_iterable(self.data)):
            if self.limit is not None and n >= self.limit:
                return
            if i % self.world_size == self.rank:
                n += 1
                yield b

    def __len__(self) -> int:
        if self.limit is not None:
            return self.limit
        total = count_batches(self.data)
        if total is None:
            raise TypeError("length unknown")
        return len(range(self.rank, total, self.world_size))


def _as_iterable(data: Any) -> Iterable[Any]:
    if isinstance(data, torch.Tensor | Mapping | Batch):
        return [data]
    return data  # type: ignore[no-any-return]


def _rebuild_loader(loader: DataLoader[Any], sampler: Sampler[int]) -> DataLoader[Any]:
    kwargs: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "sampler": sampler,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "drop_last": loader.drop_last,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
        kwargs["multiprocessing_context"] = loader.multiprocessing_context
    return DataLoader(loader.dataset, **kwargs)


def _shard(data: Any, dist_: _Dist, *, train: bool, what: str) -> tuple[Any, Any, bool]:
    """Split ``data`` across ranks: ``(data_for_this_rank, sampler_to_set_epoch, needs_stop_sync)``."""
    if not dist_.active:
        return data, None, False
    from torch.utils.data.distributed import DistributedSampler

    rank, world = dist_.rank, dist_.world_size
    if isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset):
        if isinstance(data.sampler, DistributedSampler):
            return data, data.sampler, False  # already sharded by the caller
        if data.batch_size is not None:
            n = len(data.dataset)  # type: ignore[arg-type]
            if train:
                seed = data.generator.initial_seed() if data.generator is not None else 0
                sampler: Sampler[int] = DistributedSampler(
                    data.dataset,
                    num_replicas=world,
                    rank=rank,
                    shuffle=isinstance(data.sampler, RandomSampler),
                    seed=seed,
                    drop_last=False,
                )
            else:
                sampler = _StridedSampler(n, rank, world)
            log.debug("%s: rank %d takes %d of %d samples", what, rank, len(sampler), n)  # type: ignore[arg-type]
            return _rebuild_loader(data, sampler), sampler, False
    # any other iterable: stride over batches
    total = count_batches(data)
    if total is None:
        return _StridedBatches(data, rank, world, None), None, train
    if train:
        per_rank = total // world
        if per_rank == 0:
            raise DataError(
                f"{what} has {total} batch(es), fewer than the {world} DDP ranks; each rank needs one."
            )
        if total % world:
            log.warning(
                "%s: %d batches do not split evenly over %d ranks; %d are skipped each epoch",
                what,
                total,
                world,
                total % world,
            )
        return _StridedBatches(data, rank, world, per_rank), None, False
    return _StridedBatches(data, rank, world, None), None, False


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _check_topk(topk: Sequence[int]) -> tuple[int, ...]:
    if isinstance(topk, int):
        topk = (topk,)
    ks = tuple(topk)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"topk={topk!r} must be positive ints, e.g. (1, 5).")
    return ks if 1 in ks else (1, *ks)


def _check_loss_fn(loss_fn: Any) -> None:
    if loss_fn is None or loss_fn == "model" or callable(loss_fn):
        return
    raise ConfigError(
        f"loss_fn must be None (cross-entropy), 'model' (the loss the model returns) or a callable "
        f"loss_fn(output, target), got {loss_fn!r}."
    )


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: LossFn | str | None = None,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    progress: bool | None = None,
    topk: Sequence[int] = (1,),
    ddp: bool | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy and mean loss of ``model`` on ``data``, without gradients.

    The model runs in eval mode under ``torch.no_grad``; afterwards every submodule is back in the
    train/eval mode it was in. Accuracy counts ``argmax(logits) == target`` over every labelled
    position (positions labelled -100 are ignored, as in Hugging Face); it is ``None`` when the output
    holds no class scores for the targets (e.g. regression). The loss is the mean per labelled
    position for the default cross-entropy, and the batch-size-weighted mean of ``loss_fn`` otherwise
    (``loss_fn`` returning a batch mean, as torch losses do by default).

    Under DDP (a process group of several ranks is initialised, e.g. inside ``torchrun`` after
    :func:`finetune`), every rank evaluates its own share of ``data`` (a DataLoader's data set is split
    exactly, without padding) and the counts are all-reduced, so every rank returns the metrics of
    the whole data set. Every rank must call it.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        data: any iterable of batches (see :mod:`torchcompress.batches`).
        loss_fn: ``None`` for cross-entropy on the logits, ``"model"`` for the ``.loss`` the model
            returns when dict batches carry ``"labels"`` (accuracy is then not computed), or a
            callable ``loss_fn(output, target) -> Tensor``.
        device: run there (the model is moved, in place); default: the model's device.
        max_batches: evaluate at most this many batches (per rank under DDP).
        progress: show a progress bar (default: when stderr is a terminal; rank 0 only).
        topk: also report ``top{k}_accuracy`` for these k (e.g. ``(1, 5)``).
        ddp: ``False`` to evaluate each rank's data locally without reduction.

    Returns:
        ``{"accuracy": float | None, "loss": float | None, "samples": int, "batches": int}`` plus
        ``"top{k}_accuracy"`` for each k > 1 in ``topk``.

    Raises:
        DataError: ``data`` is empty, a batch does not fit the model, or a batch has no target.
        ConfigError: a bad argument.

    Example:
        >>> import torch, torchcompress as tc
        >>> model = torch.nn.Linear(4, 3)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> r = tc.evaluate(model, data)
        >>> sorted(r), r["samples"]
        (['accuracy', 'batches', 'loss', 'samples'], 8)
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"evaluate: model must be an nn.Module, got {type(model).__name__}.")
    _check_loss_fn(loss_fn)
    ks = _check_topk(topk)
    if max_batches is not None:
        if isinstance(max_batches, bool) or not isinstance(max_batches, int):
            raise ConfigError(f"max_batches must be an int, got {max_batches!r}.")
        check_range("max_batches", max_batches, 1)
    model = _unwrap(model)
    dev = _resolve_device(model, device)
    dist_ = _eval_dist(ddp)
    local, _, _ = _shard(data, dist_, train=False, what="data")
    n_total = count_batches(local)
    if n_total is not None and max_batches is not None:
        n_total = min(n_total, max_batches)
    show = progress_enabled(progress) and dist_.rank == 0

    # per-batch tensors, summed once at the end (no host sync, few ops per batch)
    loss_sums: list[torch.Tensor] = []
    loss_counts: list[torch.Tensor] = []
    counted: list[torch.Tensor] = []
    correct: list[list[torch.Tensor]] = [[] for _ in ks]
    samples = batches = 0
    accuracy_possible = loss_fn != "model"
    modes = _Modes(model)
    bar = _bar(show, n_total, "evaluate")
    try:
        model.eval()
        with torch.no_grad():
            # under DDP a rank's share may be empty (fewer batches than ranks): that is no error
            empty_share = dist_.active and n_total == 0
            source: Iterator[Batch] = (
                iter(())
                if empty_share
                else iter_batches(
                    local,
                    max_batches=max_batches,
                    device=dev,
                    pass_labels=loss_fn == "model",
                    what="data",
                )
            )
            for i, batch in enumerate(source):
                if batch.target is None and loss_fn != "model":
                    raise DataError(
                        f"Batch {i} of data has no target; evaluate needs (inputs, targets) batches "
                        "or dict batches with 'labels'. (A single (inputs, targets) tuple passed as "
                        "the data is iterated element by element: wrap it in a list.)"
                    )
                output = run_model(model, batch, index=i, what="data")
                logits = extract_logits(output)
                bs = batch_size(batch)
                if loss_fn is None:
                    s, c = _default_loss(logits, batch.target, index=i, what="data", output=output)
                    loss_sums.append(s.detach().double())
                    loss_counts.append(typing.cast(torch.Tensor, c).double())
                else:
                    if loss_fn == "model":
                        v = _model_loss(output, index=i, what="data")
                    else:
                        v = _user_loss(loss_fn, output, batch.target, index=i, what="data")  # type: ignore[arg-type]
                    v = v.detach().double()
                    if v.numel() == 1:  # a batch mean: weight it by the batch size
                        loss_sums.append(v.reshape(()) * bs)
                        loss_counts.append(torch.tensor(float(bs), dtype=torch.float64, device=dev))
                    else:  # reduction="none": every element counts
                        loss_sums.append(v.sum())
                        loss_counts.append(
                            torch.tensor(float(v.numel()), dtype=torch.float64, device=dev)
                        )
                if accuracy_possible:
                    acc = _correct_topk(logits, batch.target, ks, soft_ok=loss_fn is None)
                    if acc is None:
                        accuracy_possible = False
                    else:
                        for j, cj in enumerate(acc[0]):
                            correct[j].append(cj)
                        counted.append(acc[1])
                samples += bs
                batches += 1
                if bar is not None:
                    bar.update(1)
    finally:
        modes.restore()
        if bar is not None:
            bar.close()
    flags = torch.tensor(
        [float(accuracy_possible), samples, batches], dtype=torch.float64, device=dev
    )

    def total(xs: list[torch.Tensor]) -> torch.Tensor:
        if not xs:
            return torch.zeros((), dtype=torch.float64, device=dev)
        return torch.stack(xs).to(device=dev, dtype=torch.float64).sum()

    sums = [total(loss_sums), total(loss_counts), total(counted), *(total(c) for c in correct)]
    stats = torch.stack([*sums, *flags])
    stats = dist_.all_reduce_sum(stats).tolist()
    loss_sum_v, loss_count_v, counted_v = stats[0], stats[1], stats[2]
    correct_v = stats[3 : 3 + len(ks)]
    acc_ok_ranks, samples_v, batches_v = stats[3 + len(ks) :]
    if batches_v == 0:
        raise DataError("data yielded no batch on any rank; it must hold at least one batch.")
    acc_ok = acc_ok_ranks >= dist_.world_size - 0.5 and counted_v > 0
    result: dict[str, Any] = {
        "accuracy": correct_v[0] / counted_v if acc_ok else None,
        "loss": loss_sum_v / loss_count_v if loss_count_v > 0 else None,
        "samples": round(samples_v),
        "batches": round(batches_v),
    }
    for k, cv in zip(ks, correct_v):
        if k != 1:
            result[f"top{k}_accuracy"] = cv / counted_v if acc_ok else None
    return result


def _bar(show: bool, total: int | None, desc: str) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------


def _check_pos_int(field: str, value: Any, *, allow_none: bool = True, low: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"finetune: {field} must be an int, got {type(value).__name__} {value!r}."
        )
    check_range(field, value, low, owner="finetune")


def _as_callbacks(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback) or any(hasattr(callbacks, h) for h in _HOOKS):
        return [callbacks]
    try:
        cbs = list(callbacks)
    except TypeError:
        raise ConfigError(
            f"callbacks must be a list of Callback objects, got {type(callbacks).__name__}."
        ) from None
    for i, cb in enumerate(cbs):
        if not isinstance(cb, Callback) and not any(callable(getattr(cb, h, None)) for h in _HOOKS):
            raise ConfigError(
                f"callbacks[{i}] ({type(cb).__name__}) has none of the hooks {', '.join(_HOOKS)}; "
                "subclass tc.train.Callback or use tc.train.LambdaCallback(on_step_end=fn)."
            )
    return cbs


def _as_regularizers(regularizer: Any) -> list[Regularizer]:
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


def _name_of(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    return getattr(obj, "__name__", None) or type(obj).__name__


def _build_optimizer(
    optimizer: Any,
    params: list[torch.nn.Parameter],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        factory = OPTIMIZERS.get(optimizer)
        return factory(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if callable(optimizer):
        opt = optimizer(params, lr=lr)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer factory {_name_of(optimizer)} returned {type(opt).__name__}, not a "
                "torch.optim.Optimizer."
            )
        return opt
    raise ConfigError(
        f"optimizer must be a name ({', '.join(repr(n) for n in OPTIMIZERS.names())}), a factory "
        f"factory(params, lr=...) such as torch.optim.RMSprop, or an Optimizer; got {optimizer!r}."
    )


def _build_scheduler(
    scheduler: Any,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int | None,
    warmup_steps: int,
) -> Any:
    if scheduler is None:
        scheduler = "constant"
    if isinstance(scheduler, str):
        SCHEDULERS.get(scheduler)  # unknown name -> ConfigError listing the choices
        if total_steps is None and scheduler != "constant":
            raise ConfigError(
                f"scheduler={scheduler!r} needs the number of steps, but the data has no len(); pass "
                "steps=, data with a length (a DataLoader or a list), or scheduler='constant'."
            )
        fn = _schedule_lambda(scheduler, total_steps or max(warmup_steps, 1), warmup_steps)
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
                f"scheduler factory {_name_of(scheduler)} returned {type(sched).__name__}, which has "
                "no step() method."
            )
        return sched
    raise ConfigError(
        f"scheduler must be a name ({', '.join(repr(n) for n in SCHEDULERS.names())}), None, or a "
        f"factory scheduler(optimizer, total_steps) -> LRScheduler; got {scheduler!r}."
    )


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_to_device(o, device) for o in obj))
    if isinstance(obj, tuple | list):
        return type(obj)(_to_device(o, device) for o in obj)
    if isinstance(obj, Mapping):
        moved = {k: _to_device(v, device) for k, v in obj.items()}
        try:
            return type(obj)(**moved)
        except TypeError:
            return moved
    return obj


def _call(callbacks: list[Any], hook: str, state: TrainState) -> None:
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None:
            fn(state)


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

    Each optimizer step: forward, loss (``loss_fn``, or with a ``teacher`` the ``distill_loss``),
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
        loss_fn: ``None`` for cross-entropy on the logits, ``"model"`` for the ``.loss`` a model
            returns given dict batches with ``"labels"``, or ``loss_fn(output, target) -> Tensor``.
        teacher: a teacher model for distillation: run in eval mode under ``no_grad`` on each batch.
        distill_loss: ``distill_loss(student_output, teacher_output, target) -> Tensor``, required
            with ``teacher`` (see :mod:`torchcompress.distill`); the training loss is then this,
            plus ``loss_fn(output, target)`` only if ``loss_fn`` is given explicitly.
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
            lists the choices), a teacher without ``distill_loss``, a model without trainable
            parameters, or ``ddp=True`` outside a distributed launch.
        DataError: ``data`` is empty, a batch does not fit the model (the message names the batch),
            or a batch has no target for the loss.
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
    _check_pos_int("epochs", epochs)
    _check_pos_int("steps", steps)
    _check_pos_int("warmup_steps", warmup_steps, allow_none=False, low=0)
    _check_pos_int("log_every", log_every)
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
    _check_loss_fn(loss_fn)
    if teacher is not None and distill_loss is None:
        raise ConfigError(
            "finetune: teacher= needs distill_loss=fn(student_output, teacher_output, target), e.g. a "
            "loss from tc.distill; without it the teacher would be ignored."
        )
    if distill_loss is not None and teacher is None:
        raise ConfigError("finetune: distill_loss= needs teacher=, the model to distil from.")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ConfigError(f"finetune: teacher must be an nn.Module, got {type(teacher).__name__}.")
    if distill_loss is not None and not callable(distill_loss):
        raise ConfigError("finetune: distill_loss must be callable.")
    if ddp is not None and not isinstance(ddp, bool | Mapping):
        raise ConfigError(f"finetune: ddp must be None, True, False or a dict, got {ddp!r}.")
    cbs = _as_callbacks(callbacks)
    regs = _as_regularizers(regularizer)
    if data is None:
        raise DataError("finetune: data is None; pass a DataLoader or an iterable of batches.")

    model = _unwrap(model)
    if (
        device is None
        and ddp is not False
        and _env_world_size() > 1
        and _model_device(model).type == "cuda"
        and "LOCAL_RANK" in os.environ
    ):
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    dev = _resolve_device(model, device)
    dist_ = _setup_dist(ddp, dev)
    train_data, sampler, stop_sync = _shard(data, dist_, train=True, what="data")
    one_shot = not isinstance(data, torch.Tensor | Mapping | Batch) and _is_iterator(data)
    n_epochs, total_steps = _plan(train_data, epochs, steps, one_shot=one_shot, data=data)
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
    opt = _build_optimizer(optimizer, params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = _build_scheduler(scheduler, opt, total_steps=total_steps, warmup_steps=warmup_steps)
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
    loop = _Loop(
        state,
        dist_,
        train_data=train_data,
        sampler=sampler,
        stop_sync=stop_sync,
        n_epochs=n_epochs,
        steps=steps,
        one_shot=one_shot,
        params=params,
        loss_fn=loss_fn,
        teacher=teacher,
        distill_loss=distill_loss,
        regs=regs,
        callbacks=cbs,
        eval_data=eval_data,
        grad_clip=grad_clip,
        log_every=log_every or (max(1, per_epoch // 10) if per_epoch else 50),
        ddp_kwargs=dict(ddp) if isinstance(ddp, Mapping) else {},
    )
    if dist_.rank == 0:
        log.info(
            "finetune: %s on %s, %s epoch(s), %s steps, optimizer %s, lr %g, scheduler %s%s",
            type(model).__name__,
            dev,
            n_epochs if n_epochs is not None else "?",
            total_steps if total_steps is not None else "?",
            _name_of(optimizer),
            lr,
            _name_of(scheduler) if scheduler is not None else "constant",
            f", DDP over {dist_.world_size} ranks" if dist_.active else "",
        )
    loop.run(show=progress_enabled(progress) and dist_.rank == 0)

    from .io import add_history

    add_history(
        model,
        "finetune",
        {
            "epochs": len(state.history),
            "steps": state.step,
            "lr": lr,
            "optimizer": _name_of(optimizer),
            "scheduler": _name_of(scheduler) if scheduler is not None else "constant",
            "warmup_steps": warmup_steps,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "grad_clip": grad_clip,
            "world_size": dist_.world_size,
            "distilled": teacher is not None,
        },
    )
    return model


def _plan(
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


class _Loop:
    """The training loop of :func:`finetune` (one instance per call)."""

    def __init__(
        self,
        state: TrainState,
        dist_: _Dist,
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
    ) -> None:
        self.state, self.dist = state, dist_
        self.train_data, self.sampler, self.stop_sync = train_data, sampler, stop_sync
        self.n_epochs, self.steps, self.one_shot = n_epochs, steps, one_shot
        self.params, self.loss_fn, self.regs = params, loss_fn, regs
        self.teacher, self.distill_loss = teacher, distill_loss
        self.teacher_dev = _model_device(teacher) if teacher is not None else None
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
        self.bar: Any = None

    def run(self, *, show: bool) -> None:
        state = self.state
        modes = _Modes(self.model, self.teacher)
        self.bar = _bar(show, state.total_steps, "finetune")
        try:
            self.model.train()
            if self.teacher is not None:
                self.teacher.eval()
            _call(self.callbacks, "on_train_begin", state)
            epoch = 0
            while self.n_epochs is None or epoch < self.n_epochs:
                state.epoch = epoch
                finished = self._epoch(epoch)
                if finished or state.stop_training:
                    break
                epoch += 1
            _call(self.callbacks, "on_train_end", state)
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
        _call(self.callbacks, "on_step_begin", state)
        opt.zero_grad(set_to_none=True)
        loss, parts = _step_loss(
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
        )
        # One reduction per step: the loss for logging, and a NaN on any rank stops every rank
        # before the backward (where DDP would otherwise wait for the rank that raised).
        names = [n for n in parts if len(parts) > 1]  # a lone part is the total itself
        vals = torch.stack([loss.detach().float(), *(parts[n].float() for n in names)])
        if self.dist.active:
            vals = self.dist.all_reduce_sum(vals) / self.dist.world_size
        values = vals.tolist()
        if not math.isfinite(values[0]):
            raise NumericalError(
                f"finetune: the loss is {values[0]} at step {state.step} (epoch {epoch}, batch "
                f"{index}). Lower lr (now {state.lr:g}), set grad_clip=, or check the data and the "
                "model for NaN/Inf."
            )
        loss.backward()
        _call(self.callbacks, "on_after_backward", state)
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
        _call(self.callbacks, "on_step_end", state)
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
        object.__setattr__(self.model, _HISTORY_ATTR, state.history)
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
        _call(self.callbacks, "on_epoch_end", state)


def _is_iterator(data: Any) -> bool:
    # Not `iter(data) is data`: iterating a shuffled DataLoader draws from its generator, which
    # would change the order of the batches the training then sees.
    return isinstance(data, Iterator)


def _step_loss(
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward one batch and return the total loss and its (detached) components."""
    output = run_model(train_model, batch, index=index, what="data")
    state.output = output
    parts: dict[str, torch.Tensor] = {}
    total: torch.Tensor | None = None
    if teacher is not None and distill_loss is not None:
        tb = batch.to(teacher_dev) if teacher_dev is not None else batch
        with torch.no_grad():
            t_out = run_model(teacher, tb, index=index, what="data (teacher)")
        if teacher_dev is not None and teacher_dev != state.device:
            t_out = _to_device(t_out, state.device)
        d = distill_loss(output, t_out, batch.target)
        if not isinstance(d, torch.Tensor) or d.numel() != 1:
            raise DataError(
                f"Batch {index} of data: distill_loss returned {_describe(d)}; it must return a "
                "scalar tensor."
            )
        d = d.reshape(())
        parts["distill"] = d.detach()
        total = d
    if teacher is None or loss_fn is not None:
        if loss_fn is None:
            task, _ = _default_loss(
                extract_logits(output),
                batch.target,
                index=index,
                what="data",
                output=output,
                mean=True,
            )
        elif loss_fn == "model":
            task = _model_loss(output, index=index, what="data")
        else:
            task = _user_loss(loss_fn, output, batch.target, index=index, what="data")
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
                    f"regularizer[{j}] ({_name_of(r)}) returned {_describe(v)}; it must return a "
                    "scalar tensor."
                )
            v = v.reshape(()).to(state.device)
            reg_total = v if reg_total is None else reg_total + v
        reg_total = typing.cast(torch.Tensor, reg_total)
        parts["regularizer"] = reg_total.detach()
        total = reg_total if total is None else total + reg_total
    return typing.cast(torch.Tensor, total), parts
