"""Pruning criteria: a score per weight (lower scores are pruned first).

A criterion is a small registered class that turns a layer's weight (in the canonical
``(out, in, *kernel)`` layout, see :mod:`torchcompress.layers`) and, for data-driven criteria,
statistics gathered over ``data`` into per-weight scores, and says how a pattern's groups combine
them (``reduce``: ``"sum"`` or ``"l2"``). A criterion names the statistics it needs
(:data:`torchcompress.calibration.STATISTICS`); they are accumulated by the calibration engine,
never stored activations, so memory stays bounded whatever the amount of data.

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
(by name; a new statistic is registered in :data:`torchcompress.calibration.STATISTICS`) and
implement :meth:`Criterion.scores`, then ``CRITERIA.add("name", MyCriterion())``.

Example:
    >>> import torch
    >>> from torchcompress.sparsity.criteria import CRITERIA, LayerStats
    >>> w = torch.tensor([[1.0, -3.0], [0.5, 2.0]])
    >>> CRITERIA.get("magnitude").scores(w, LayerStats(), name="fc", seed=0).tolist()
    [[1.0, 3.0], [0.5, 2.0]]
"""

from __future__ import annotations

import zlib
from typing import ClassVar

import torch

from ..calibration import LayerStats
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
    "need",
]


class Criterion:
    """Base class of pruning criteria.

    Attributes:
        statistics: the names of the statistics the criterion needs from ``data`` (registered in
            :data:`torchcompress.calibration.STATISTICS`, e.g. ``"input_sq"``, ``"grad_abs"``,
            ``"grad_sq"``); empty for data-free criteria.
        reduce: how a group's per-weight scores combine (``"sum"`` or ``"l2"``).
    """

    statistics: ClassVar[tuple[str, ...]] = ()
    reduce: ClassVar[str] = "sum"

    @property
    def needs_data(self) -> bool:
        """Whether the criterion needs ``data``."""
        return bool(self.statistics)

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        """Per-weight scores of the float32 canonical weight ``w`` (same shape).

        Args:
            w: the canonical weight.
            stats: the layer's statistics (``stats["input_sq"]``, ``stats.geometry``, ...).
            name: the layer's qualified name (for messages and seeding).
            seed: the config's seed.
        """
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


def need(stats: LayerStats, statistic: str, name: str, what: str) -> torch.Tensor:
    """``stats[statistic]``, or a :class:`CalibrationError` naming the layer if it saw nothing.

    Args:
        stats: the layer's statistics.
        statistic: the statistic's name.
        name: the layer's qualified name.
        what: what the statistic observes, for the message (``"input"``, ``"gradient"``).
    """
    value = stats.get(statistic)
    if value is None or stats.count(statistic) == 0:
        raise CalibrationError(
            f"Layer {name!r} got no {what} from data: it was not used in the forward passes (or "
            "the loss does not depend on it). Exclude it, or check data and loss_fn."
        )
    return value


class TaylorCriterion(Criterion):
    """First-order Taylor: ``mean over batches of |w · ∂L/∂w|`` (Molchanov et al. 2017, 2019)."""

    statistics = ("grad_abs",)

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        return w.abs() * need(stats, "grad_abs", name, "gradient")


class FisherCriterion(Criterion):
    """Second-order Taylor with the diagonal empirical Fisher: ``½ · F · w²``.

    ``F = mean over samples of (∂L_s/∂w)²`` from per-sample gradients (each batch is split into
    single samples), the Fisher approximation of the Hessian diagonal in Optimal Brain Damage
    (LeCun et al. 1990; Theis et al. 2018).
    """

    statistics = ("grad_sq",)

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        return 0.5 * need(stats, "grad_sq", name, "gradient") * w.pow(2)


class WandaCriterion(Criterion):
    """Wanda: ``|w_ij| · ‖x_j‖₂`` (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs")."""

    statistics = ("input_sq",)

    def scores(self, w: torch.Tensor, stats: LayerStats, *, name: str, seed: int) -> torch.Tensor:
        mean_sq = need(stats, "input_sq", name, "input")
        if stats.geometry is None:
            raise CalibrationError(
                f"Layer {name!r}: Wanda needs the layer's geometry in its stats."
            )
        return w.abs() * stats.geometry.expand_features(mean_sq).sqrt()


CRITERIA.add("magnitude", MagnitudeCriterion())
CRITERIA.add("random", RandomCriterion())
CRITERIA.add("l1", L1Criterion())
CRITERIA.add("l2", L2Criterion())
CRITERIA.add("taylor", TaylorCriterion())
CRITERIA.add("fisher", FisherCriterion())
CRITERIA.add("wanda", WandaCriterion())
