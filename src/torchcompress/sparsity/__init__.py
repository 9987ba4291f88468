"""Sparsity and pruning: masks, criteria, patterns, global/layer pruning, schedules, regularizers.

The surface (also as ``tc.<name>``):

- :class:`PruneConfig` and :func:`prune`: mask the weights of Linear and convolution layers
  (unstructured, N:M, whole channels), by magnitude, random, L1/L2 group norms, first-order Taylor,
  Fisher or Wanda scores, per layer, per output row or with one global threshold; calling it again
  re-prunes, keeping what is pruned;
- :func:`sparsegpt` (and :class:`SparseGPTConfig`): one-shot SparseGPT or Wanda pruning of a
  transformer's blocks, one block at a time, with weight reconstruction (SparseGPT);
- :func:`prune_channels` / :class:`ChannelPruneConfig` (:mod:`~torchcompress.sparsity.structured`):
  structured pruning that physically removes channels and attention heads, following the model's
  dependency graph, by a channel ratio or to a MACs/params target; :func:`channel_report`;
- :func:`sparsity_report`: per-layer and overall sparsity;
- :func:`finalize`: bake the masks in (plain modules again), optionally onto torch's 2:4
  semi-structured kernels (:func:`to_semi_structured`, CUDA);
- :class:`SparsitySchedule`, :class:`GradualPruning` (a ``tc.finetune`` callback) and
  :func:`gradual_prune`: gradual pruning during fine-tuning;
- regularizers :class:`L1`, :class:`GroupLasso`, :class:`BNScaleL1`, :class:`Hoyer`,
  :class:`GroupHoyer` (``tc.finetune(..., regularizer=...)``).

Pluggable pieces live in registries: :data:`CRITERIA`, :data:`PATTERNS`, :data:`SCHEDULE_KINDS`,
:data:`~torchcompress.sparsity.functional.NORMALIZATIONS`; the layers that can be pruned are the
kinds of :data:`torchcompress.layers.LAYER_KINDS` (re-exported here), and the statistics
data-driven criteria need come from :data:`torchcompress.calibration.STATISTICS`.

Masks only zero weights: dense kernels run exactly as fast as before (``tc.profile`` reports the
non-zeros and the MACs a sparse kernel would need, and says so). Real speed comes from removing
channels (``tc.prune_channels``) or, for 2:4 on recent NVIDIA GPUs, from semi-structured kernels.

Example:
    >>> import torch, torchcompress as tc
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> data = [(torch.randn(16, 32), torch.randint(0, 10, (16,))) for _ in range(4)]
    >>> _ = tc.prune(model, tc.PruneConfig(sparsity=0.5, criterion="wanda"), data)
    >>> _ = tc.prune(model, tc.PruneConfig(sparsity=0.7, criterion="wanda"), data)  # re-prune
    >>> round(tc.sparsity_report(model).sparsity, 2)
    0.7
    >>> model = tc.finalize(model)
"""

from __future__ import annotations

from ..calibration import LayerStats
from ..layers import LAYER_KINDS, LayerKind, layer_kind
from . import codecs as _codecs  # noqa: F401  (registers the tc.save/tc.load codec)
from .calibration import Target, collect_statistics, default_loss
from .config import PruneConfig
from .criteria import CRITERIA, Criterion
from .masking import Mask, apply_mask, get_mask, is_masked
from .patterns import PATTERNS, Candidates, Pattern
from .pruning import finalize, prune, select_targets
from .regularizers import L1, BNScaleL1, GroupHoyer, GroupLasso, Hoyer, Regularizer
from .report import LayerSparsity, SparsityReport, sparsity_report
from .schedules import SCHEDULE_KINDS, GradualPruning, SparsitySchedule, gradual_prune
from .semi_structured import semi_structured_available, to_semi_structured
from .sparsegpt import SparseGPTConfig, sparsegpt
from .structured import ChannelPruneConfig, ChannelPruneReport, channel_report, prune_channels

__all__ = [
    "CRITERIA",
    "L1",
    "LAYER_KINDS",
    "PATTERNS",
    "SCHEDULE_KINDS",
    "BNScaleL1",
    "Candidates",
    "ChannelPruneConfig",
    "ChannelPruneReport",
    "Criterion",
    "GradualPruning",
    "GroupHoyer",
    "GroupLasso",
    "Hoyer",
    "LayerKind",
    "LayerSparsity",
    "LayerStats",
    "Mask",
    "Pattern",
    "PruneConfig",
    "Regularizer",
    "SparseGPTConfig",
    "SparsityReport",
    "SparsitySchedule",
    "Target",
    "apply_mask",
    "channel_report",
    "collect_statistics",
    "default_loss",
    "finalize",
    "get_mask",
    "gradual_prune",
    "is_masked",
    "layer_kind",
    "prune",
    "prune_channels",
    "select_targets",
    "semi_structured_available",
    "sparsegpt",
    "sparsity_report",
    "to_semi_structured",
]
