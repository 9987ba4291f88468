"""Low-rank factorization: SVD, activation-aware SVD (ASVD), whitened SVD (SVD-LLM), rank rules,
one global rank allocation under a budget, and low-rank training.

A Linear ``W`` (``out x in``) becomes two Linears ``second @ first`` of rank ``r``; a Conv becomes
``r`` filters of its kernel followed by a 1x1 conv (per group). A layer is only factorized where that
is cheaper: ``r*(out+in) < out*in``.

- :class:`LowRankConfig` (``tc.LowRankConfig``): the rank rule (fixed, rank ratio, energy, params
  ratio, FLOPs ratio, ``"auto"`` under a params/FLOPs budget) and the method (``"svd"``,
  ``"activation_aware"``, ``"whitened"``).
- :func:`factorize` (``tc.factorize``), :func:`merge_lowrank` (``tc.merge_lowrank``),
  :func:`retruncate`, :func:`lowrank_report`.
- :class:`LowRankLinear`, :class:`LowRankConv1d`, :class:`LowRankConv2d`: the factorized layers
  (saved and loaded by :func:`torchcompress.save`/:func:`torchcompress.load`, counted at their real
  cost by :func:`torchcompress.profile`).
- Low-rank training: :class:`SingularValueRegularizer`, :func:`proximal_step`,
  :class:`SVTCallback`, :func:`train_lowrank`.
- Extension points: :data:`RANK_RULES`, :data:`METHODS`, :data:`SV_PENALTIES`; the maths in
  :mod:`torchcompress.lowrank.functional`; the allocator :func:`allocate`.

Example:
    >>> import torch, torchcompress as tc
    >>> model = tc.models.create("resnet20")
    >>> x = torch.randn(8, 3, 32, 32)
    >>> cfg = tc.LowRankConfig(rank="auto", budget=0.6, budget_kind="flops")
    >>> model = tc.factorize(model, cfg, calib_data=x)
    >>> rep = tc.lowrank.lowrank_report(model)
    >>> 0.59 < rep.macs_ratio <= 0.6
    True
"""

from __future__ import annotations

from . import codecs as _codecs  # noqa: F401  (registers save/load codecs and profiler costs)
from . import functional
from .allocation import Allocation, allocate
from .config import LowRankConfig
from .factorizing import factorize, merge_lowrank, retruncate
from .methods import METHODS, FactorizationMethod
from .modules import LowRankConv1d, LowRankConv2d, LowRankLinear, LowRankModule
from .rank_rules import RANK_RULES, LayerSpectrum, RankRule
from .regularizers import (
    SV_PENALTIES,
    SingularValueRegularizer,
    SVTCallback,
    proximal_step,
    singular_values,
    train_lowrank,
)
from .report import LayerReport, LowRankReport, lowrank_report

__all__ = [
    "METHODS",
    "RANK_RULES",
    "SV_PENALTIES",
    "Allocation",
    "FactorizationMethod",
    "LayerReport",
    "LayerSpectrum",
    "LowRankConfig",
    "LowRankConv1d",
    "LowRankConv2d",
    "LowRankLinear",
    "LowRankModule",
    "LowRankReport",
    "RankRule",
    "SVTCallback",
    "SingularValueRegularizer",
    "allocate",
    "factorize",
    "functional",
    "lowrank_report",
    "merge_lowrank",
    "proximal_step",
    "retruncate",
    "singular_values",
    "train_lowrank",
]
