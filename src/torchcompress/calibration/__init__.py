"""One calibration engine: statistics by name, one hook loop, block-by-block runs, all-reduce.

- :data:`STATISTICS` / :class:`Statistic`: what techniques ask for by name (input second moments
  ``xtx``, per-feature ``input_sq`` and ``abs_mean``, per-channel ``channel_sq``, input/output
  ranges, gradients ``grad_abs`` and per-sample ``grad_sq``, ...), one small class each
  (:mod:`~torchcompress.calibration.statistics`);
- :func:`collect`: the one hook loop gathering them for named layers in bounded memory, returning
  one :class:`LayerStats` per layer; :func:`run_batches`: the data loop itself
  (:mod:`~torchcompress.calibration.engine`);
- :class:`SequentialRunner` and :func:`find_blocks`: block-by-block calibration over a model's
  repeated blocks, for GPTQ-style methods (:mod:`~torchcompress.calibration.sequential`);
- under ``torch.distributed`` every statistic is all-reduced so that every rank decides as one
  process would on all the data (:mod:`~torchcompress.calibration.distributed`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress import calibration
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    >>> stats = calibration.collect(model, torch.randn(2, 3, 8, 8), {"0": ["input_sq"]})
    >>> stats["0"]["input_sq"].shape, stats["0"].rows  # per (channel, tap); 2 x 8 x 8 positions
    (torch.Size([3, 3, 3]), 128)
"""

from __future__ import annotations

from .distributed import all_reduce_statistics, is_distributed, world_size
from .engine import Collected, LayerStats, LossFn, collect, run_batches, split_batch
from .sequential import Block, Inputs, SequentialRunner, by_block, find_blocks, next_inputs
from .statistics import STATISTICS, Statistic

__all__ = [
    "STATISTICS",
    "Block",
    "Collected",
    "Inputs",
    "LayerStats",
    "LossFn",
    "SequentialRunner",
    "Statistic",
    "all_reduce_statistics",
    "by_block",
    "collect",
    "find_blocks",
    "is_distributed",
    "next_inputs",
    "run_batches",
    "split_batch",
    "world_size",
]
