"""Calibration under ``torch.distributed``: every rank ends with the statistics of all the data.

When a process group is initialised with more than one rank, :func:`all_reduce_statistics` combines
each statistic's accumulator across ranks with its own reduction (sum, min or max) and sums every
count, in one fixed order (layers and statistics sorted by name) so that the collective calls
match on every rank. Each rank then finalises the same numbers, and every decision taken from them
(masks, ranks, scales) is identical on all ranks and equal to what one process would decide on all
of the data: exactly for minima, maxima and counts; for sums up to floating-point rounding, since
the partial sums of the ranks are added in a different order than one process adds the batches.

Example:
    >>> from torchcompress.calibration.distributed import world_size
    >>> world_size()  # no process group: one process
    1
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .statistics import Statistic

__all__ = ["all_reduce_counts", "all_reduce_statistics", "is_distributed", "world_size"]

_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one rank is running."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def all_reduce_counts(counts: Sequence[int], device: torch.device | None = None) -> list[int]:
    """Sum integer counts over ranks (one collective call); unchanged in one process."""
    if not is_distributed():
        return list(counts)
    t = torch.tensor(list(counts), dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t)
    return [int(v) for v in t.tolist()]


def all_reduce_statistics(stats: Sequence[Statistic]) -> None:
    """Combine ``stats`` across ranks in place, in the given order (the same on every rank).

    Each accumulator is reduced with its statistic's reduction; the counts are summed. Does
    nothing in one process.
    """
    if not is_distributed():
        return
    dist = torch.distributed
    for st in stats:
        acc = st.acc.contiguous()
        dist.all_reduce(acc, op=getattr(dist.ReduceOp, _OPS[st.reduction]))
        st.acc = acc
    device = stats[0].acc.device if stats else None
    for st, n in zip(stats, all_reduce_counts([st.count for st in stats], device)):
        st.count = n
