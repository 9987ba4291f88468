"""Structured pruning that physically removes channels and heads: :func:`prune_channels`.

- :func:`prune_channels` / :class:`ChannelPruneConfig`: by a channel ``ratio`` or to a MACs or
  params ``target``; local or global ranking; ``round_to``; protected layers (``ignore=``);
- the dependency graph (:mod:`~torchcompress.sparsity.structured.graph`,
  :mod:`~torchcompress.sparsity.structured.builder`), built on one recorded forward of the shared
  :class:`~torchcompress.tracing.Recorder`: module handlers (:data:`HANDLERS`) for layers, norms,
  embeddings and attention, and one rule per op category (:data:`OP_RULES`) for everything between
  them;
- criteria (:data:`IMPORTANCE`): ``l1``, ``l2``, ``bn_scale``, ``taylor`` (data and a loss, through
  the calibration engine), ``random``;
- :func:`channel_report`: what went, group by group; ``tc.save``/``tc.load`` restore the pruned
  shapes into a freshly built model (:mod:`~torchcompress.sparsity.structured.codecs`).

Example:
    >>> import torch, torchcompress as tc
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
    ...                       nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    >>> _ = tc.prune_channels(model, torch.randn(1, 3, 8, 8), 0.5)
    >>> model[0].out_channels, model[1].num_features, model[4].in_features
    (8, 8, 288)
"""

from __future__ import annotations

from . import attention as _attention  # noqa: F401  (registers the attention handlers)
from . import codecs as _codecs  # noqa: F401  (registers the tc.save/tc.load codec)
from .allocation import CostModel, allocate
from .builder import Analysis, analyse
from .channel_pruning import prune_channels
from .config import ChannelPruneConfig
from .context import Context
from .graph import ChannelGraph, Group, Member, Unit
from .handlers import HANDLERS, ModuleHandler, ParameterHandler, WeightLayerHandler, handler_for
from .importance import IMPORTANCE, ChannelImportance, ScoreContext
from .report import ChannelPruneReport, GroupReport, channel_report
from .rules import OP_RULES

__all__ = [
    "HANDLERS",
    "IMPORTANCE",
    "OP_RULES",
    "Analysis",
    "ChannelGraph",
    "ChannelImportance",
    "ChannelPruneConfig",
    "ChannelPruneReport",
    "Context",
    "CostModel",
    "Group",
    "GroupReport",
    "Member",
    "ModuleHandler",
    "ParameterHandler",
    "ScoreContext",
    "Unit",
    "WeightLayerHandler",
    "allocate",
    "analyse",
    "channel_report",
    "handler_for",
    "prune_channels",
]
