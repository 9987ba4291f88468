"""Running the loops under ``torchrun``: the process group, DDP wrappers, and data sharding.

:func:`~torchcompress.train.finetune` and :func:`~torchcompress.train.evaluate` call these so
that one script runs unchanged on one process or on several: the process group is initialised
from torchrun's environment, a DataLoader's data set is split with a sampler (exactly, without
padding, for evaluation), other iterables are split batch by batch, and sums are all-reduced.

Example:
    >>> from torchcompress.train.distributed import Dist
    >>> Dist(False).world_size
    1
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Sampler

from ..batches import Batch, count_batches
from ..errors import ConfigError, DataError, DependencyError

__all__: list[str] = []

log = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


class Dist:
    """This process's place in the run: whether DDP is active, its rank and the world size."""

    def __init__(self, active: bool, rank: int = 0, world_size: int = 1) -> None:
        self.active = active and world_size > 1
        self.rank = rank
        self.world_size = world_size if self.active else 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (``t`` itself without DDP), on ``t``'s device."""
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

    def broadcast(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        """Give every rank rank ``src``'s values of ``tensors`` (in place; nothing without DDP)."""
        if not self.active or not tensors:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in tensors:
                if dist.get_backend() == "gloo" and t.device.type != "cpu":
                    tmp = t.detach().cpu()
                    dist.broadcast(tmp, src)
                    t.copy_(tmp)
                else:
                    dist.broadcast(t.data, src)

    def average_grads(self, params: list[torch.Tensor]) -> None:
        """Average the gradients of ``params`` over the ranks (a missing gradient counts as 0)."""
        if not self.active or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = self.all_reduce_sum(flat) / self.world_size
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n


_DESTROY_REGISTERED = False


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (torchrun sets it), 1 when absent or malformed."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup_dist(ddp: bool | Mapping[str, Any] | None, device: torch.device) -> Dist:
    """Resolve ``ddp=``, initialising the process group when launched by torchrun."""
    global _DESTROY_REGISTERED
    if ddp is False:
        return Dist(False, rank=int(os.environ.get("RANK", "0") or 0))
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    env_world = env_world_size()
    wanted = (
        ddp is True
        or isinstance(ddp, Mapping)
        or (ddp is None and (env_world > 1 or (initialized and dist.get_world_size() > 1)))
    )
    if not wanted:
        return Dist(False)
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
    return Dist(True, rank=dist.get_rank(), world_size=dist.get_world_size())


def eval_dist(ddp: bool | None) -> Dist:
    """Resolve ``evaluate(ddp=)``: reduce over the initialised group unless ``ddp=False``."""
    if ddp is False:
        return Dist(False)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Dist(True, rank=dist.get_rank(), world_size=dist.get_world_size())
    if ddp is True and env_world_size() > 1:
        raise ConfigError(
            "evaluate(ddp=True): no process group is initialised; call tc.finetune (which "
            "initialises it under torchrun) or torch.distributed.init_process_group() first."
        )
    return Dist(False)


class StridedSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a data set: an exact, unpadded shard for evaluation."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class StridedBatches:
    """Every ``world``-th batch of an iterable, starting at ``rank`` (optionally truncated)."""

    def __init__(self, data: Any, rank: int, world_size: int, limit: int | None) -> None:
        self.data, self.rank, self.world_size, self.limit = data, rank, world_size, limit

    def __iter__(self) -> Iterator[Any]:
        n = 0
        for i, b in enumerate(as_iterable(self.data)):
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


def as_iterable(data: Any) -> Iterable[Any]:
    """A single tensor, dict or Batch is one batch; anything else is iterated."""
    if isinstance(data, torch.Tensor | Mapping | Batch):
        return [data]
    return data  # type: ignore[no-any-return]


def rebuild_loader(loader: DataLoader[Any], sampler: Sampler[int]) -> DataLoader[Any]:
    """The same DataLoader (batch size, collate function, workers) over ``sampler``."""
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


def shard(data: Any, dist_: Dist, *, train: bool, what: str) -> tuple[Any, Any, bool]:
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
                sampler = StridedSampler(n, rank, world)
            log.debug("%s: rank %d takes %d of %d samples", what, rank, len(sampler), n)  # type: ignore[arg-type]
            return rebuild_loader(data, sampler), sampler, False
    # any other iterable: stride over batches
    total = count_batches(data)
    if total is None:
        return StridedBatches(data, rank, world, None), None, train
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
        return StridedBatches(data, rank, world, per_rank), None, False
    return StridedBatches(data, rank, world, None), None, False
