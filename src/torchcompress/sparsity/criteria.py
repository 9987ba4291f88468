"""Pruning criteria: a score per weight (lower scores are pruned first).

A criterion is a small registered class that turns a layer's weight (in the canonical
``(out, in, *kernel)`` layout, see :mod:`torchcompress.sparsity.layers`) and, for data-driven
criteria, statistics gathered over ``data`` into per-weight scores, and says how a pattern's groups
combine them (``reduce``: ``"sum"`` or ``"l2"``). Statistics are accumulated, never stored
activations, so memory stays bounded whatever the amount of data (see
:mod:`torchcompress.sparsity.calibration`).

============  =====================================================  ===========================
name          score of weight ``w``                                  reference
============  =====================================================  ===========================
magnitude     ``|w|``                                                Han et al. 2015
random        uniform, seeded                                        baseline
l1            ``|w|``, groups summed: the group's L1 norm            Li et al. 2017
l2            ``w²``, groups: square root of the sum (L2 norm)       Li et al. 2017
taylor        ``mean_b |w · ∂L_b/∂w|`` over batches ``b``             Molchanov et al. 2017/2019
fisher        ``½ · F · w²``, ``F = mean_s (∂L_s/∂w)²`` per sample    LeCun et al. 1990 (OBD);
                                                                     Theis et al. 2018
wanda         ``|w| · ‖x_j‖₂`` (input feature ``j`` of ``w``)        Sun et al. 2023
============  =====================================================  ===========================

Wanda's norm is taken over every row the layer sees (tokens, or im2col rows of a convolution,
following its padding, stride, dilation and groups) and divided by √rows, so the scale does not
depend on how much data is passed (the ranking within a layer is unchanged by that factor).

Adding a criterion is one class: subclass :class:`Criterion`, declare the ``statistics`` it needs
and implement :meth:`Criterion.scores`, then ``CRITERIA.add("name", MyCriterion())``.

Example:
    >>> import torch
    >>> from torchcompress.sparsity.criteria import CRITERIA, LayerStats
    >>> w = torch.tensor([[1.0, -3.0], [0.5, 2.0]])
    >>> CRITERIA.get("magnitude").scores(w, LayerStats(), name="fc", seed=0).tolist()
    [[1.0, 3.0], [0.5, 2.0]]
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import CalibrationError
from ..registry import Registry

__all__ = [
    "CRITERIA",
    "Criterion",
    "FisherCriterion",
    "L1Criterion",
    "L2Criterion",
    "LayerStats",
    "MagnitudeCriterion",
    "RandomCriterion",
    "TaylorCriterion",
    "WandaCriterion",
]


@dataclass
class LayerStats:
    """Statistics of one layer gathered over ``data`` (canonical weight shape unless noted).

    Attributes:
        input_sq: sum over rows of each input feature squared, already broadcast to the canonical
            weight shape (Wanda).
        rows: rows (tokens / im2col rows) seen.
        grad_abs: sum over batches of ``|∂L_b/∂w|`` (Taylor).
        batches: batches seen with a gradient.
        grad_sq: sum over samples of ``(∂L_s/∂w)²`` (empirical Fisher).
        samples: samples seen with a gradient.
    """

    input_sq: torch.Tensor | None = None
    rows: int = 0
    grad_abs: torch.Tensor | None = None
    batches: int = 0
    grad_sq: torch.Tensor | None = None
    samples: int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class Criterion:
    """Base class of pruning criteria.

    Attributes:
        statistics: the statistics the criterion needs from ``data``: any of ``"input_sq"``,
            ``"grad_abs"``, ``"grad_sq"`` (empty for data-free criteria).
        reduce: how a group's per-weight scores combine (``"sum"`` or ``"l2"``).
    """

    statistics: ClassVar[tuple[str, ...]] = ()
    reduce: ClassVar[str] = "sum"

    @property
    def needs_data(self) -> bool:
        """Whether the criterion needs ``data``."""
        return bool(self.statistics)

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        """Per-weight scores of the float32 canonical weight ``w`` (same shape)."""
        raise NotImplementedError


CRITERIA: Registry[Criterion] = Registry("pruning criterion")


class MagnitudeCriterion(Criterion):
    """``|w|`` (Han et al. 2015, "Learning both Weights and Connections")."""

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        return w.abs()


class L1Criterion(MagnitudeCriterion):
    """``|w|``; a group's score is its L1 norm (Li et al. 2017, "Pruning Filters")."""


class L2Criterion(Criterion):
    """``w²`` per weight; a group's score is its L2 norm (Li et al. 2017)."""

    reduce = "l2"

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        return w.pow(2)


class RandomCriterion(Criterion):
    """Uniform random scores, seeded by ``seed`` and the layer name (identical on every rank)."""

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        g = torch.Generator(device="cpu")
        g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1))
        return torch.rand(w.shape, generator=g, dtype=torch.float32).to(w.device)


def _need(stat: torch.Tensor | None, count: int, name: str, what: str) -> torch.Tensor:
    if stat is None or count == 0:
        raise CalibrationError(
            f"Layer {name!r} got no {what} from data: it was not used in the forward passes (or "
            "the loss does not depend on it). Exclude it, or check data and loss_fn."
        )
    return stat


class TaylorCriterion(Criterion):
    """First-order Taylor: ``mean over batches of |w · ∂L/∂w|`` (Molchanov et al. 2017, 2019)."""

    statistics = ("grad_abs",)

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        g = _need(stats.grad_abs, stats.batches, name, "gradient")
        return w.abs() * (g / stats.batches)


class FisherCriterion(Criterion):
    """Second-order Taylor with the diagonal empirical Fisher: ``½ · F · w²``.

    ``F = mean over samples of (∂L_s/∂w)²`` from per-sample gradients (each batch is split into
    single samples), the Fisher approximation of the Hessian diagonal in Optimal Brain Damage
    (LeCun et al. 1990; Theis et al. 2018).
    """

    statistics = ("grad_sq",)

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        f = _need(stats.grad_sq, stats.samples, name, "gradient")
        return 0.5 * (f / stats.samples) * w.pow(2)


class WandaCriterion(Criterion):
    """Wanda: ``|w_ij| · ‖x_j‖₂`` (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs")."""

    statistics = ("input_sq",)

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        sq = _need(stats.input_sq, stats.rows, name, "input")
        return w.abs() * (sq / stats.rows).sqrt()


CRITERIA.add("magnitude", MagnitudeCriterion())
CRITERIA.add("random", RandomCriterion())
CRITERIA.add("l1", L1Criterion())
CRITERIA.add("l2", L2Criterion())
CRITERIA.add("taylor", TaylorCriterion())
CRITERIA.add("fisher", FisherCriterion())
CRITERIA.add("wanda", WandaCriterion())
