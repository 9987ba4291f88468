"""``rank="auto"``: one global rank allocation across all targeted layers under a budget.

Every layer's options are its ranks ``r_min, r_min + step, ..., r_max`` (multiples of ``round_to``,
``r_max`` the largest rank still strictly cheaper than the dense layer) or *staying dense*. Keeping
singular value ``i`` of a layer costs ``groups*(m+n)`` params (times the layer's output positions for
a FLOPs budget) and brings its share of the layer's energy (``objective="energy"``: ``s_i^2`` over the
layer's total, so every layer counts alike; for the whitened method this is the fraction of the
layer's output energy it preserves) or its absolute ``s_i^2`` (``objective="error"``: for the
whitened method, the squared output error it removes).

The allocator is a greedy on marginal benefit per unit of cost (the multiple-choice knapsack's
convex relaxation, exact when the budget falls on a step boundary, since each layer's gains
decrease with rank): all layers start at ``r_min``; the step with the best benefit/cost that still
fits is taken, repeatedly, until no step fits. A layer's last step, from ``r_max`` to dense, costs
exactly the difference and brings back all its remaining energy, so "which layers stay dense" is
accounted for exactly, not guessed. The achieved cost is at most the budget and short of it by less
than the largest single step (one rank of one layer). A budget below the cheapest allocation
(``r_min`` everywhere it can be factorized, dense elsewhere) is an error, never a silent rank 1.

Example:
    >>> import torch
    >>> from torchcompress.layers import Geometry
    >>> from torchcompress.lowrank.allocation import allocate
    >>> from torchcompress.lowrank.rank_rules import LayerSpectrum
    >>> geo = Geometry("linear", 64, 64)
    >>> peaked = LayerSpectrum("a", geo, torch.logspace(0, -3, 64).unsqueeze(0))
    >>> flat = LayerSpectrum("b", geo, torch.ones(1, 64))
    >>> alloc = allocate([peaked, flat], budget=0.5)
    >>> alloc.ranks["a"] < alloc.ranks["b"], alloc.ratio <= 0.5
    (True, True)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, check_choice
from . import functional as F
from .rank_rules import RANK_RULES, Decision, LayerSpectrum, RankRule, round_rank

__all__ = ["Allocation", "AutoRank", "allocate"]


@dataclass
class Allocation:
    """The result of :func:`allocate`.

    Attributes:
        ranks: layer name -> rank, or ``None`` for layers that stay dense.
        reasons: layer name -> why it stays dense (only for dense layers).
        cost: the achieved cost of the targeted layers (params with biases, or MACs per batch).
        dense_cost: their cost if all stayed dense.
        budget_cost: the cost allowed (``budget * dense_cost``).
        kind: ``"params"`` or ``"flops"``.
    """

    ranks: dict[str, int | None]
    reasons: dict[str, str] = field(default_factory=dict)
    cost: float = 0.0
    dense_cost: float = 0.0
    budget_cost: float = 0.0
    kind: str = "params"

    @property
    def ratio(self) -> float:
        """Achieved cost over dense cost."""
        return self.cost / self.dense_cost if self.dense_cost else 1.0


@dataclass
class _Layer:
    spec: LayerSpectrum
    unit: float  # cost of one rank
    dense: float  # cost when dense (without the bias, which is constant)
    fixed: float  # bias params (constant either way)
    gains: list[float]  # benefit of singular value i
    r_min: int = 0
    r_max: int = 0  # 0: must stay dense
    rank: int | None = None
    reason: str = ""


def _layer(
    spec: LayerSpectrum,
    kind: str,
    objective: str,
    step: int,
    min_rank: int,
    min_features: int,
    min_saving: float,
) -> _Layer:
    g = spec.geometry
    if kind == "flops":
        if spec.positions is None:
            raise ConfigError(
                f"budget_kind='flops' needs the input size of layer {spec.name!r}; pass calib_data."
            )
        scale = float(spec.positions)
        fixed = 0.0
    else:
        scale = 1.0
        fixed = float(g.groups * g.m) if g.bias else 0.0
    unit = scale * g.groups * (g.m + g.n)
    dense = scale * g.groups * g.m * g.n
    s2 = (spec.singular_values.double() ** 2).reshape(-1, spec.singular_values.shape[-1]).sum(0)
    s2 = s2[: spec.full_rank]
    if objective == "energy":
        total = float(s2.sum())
        s2 = s2 / total if total > 0 else torch.zeros_like(s2)
    lay = _Layer(spec, unit, dense, fixed, [float(v) for v in s2])
    if min(g.m, g.n) < min_features:
        lay.reason = f"smaller than min_features={min_features}"
        return lay
    lay.r_min = round_rank(min_rank, step, "up")
    # largest multiple of step, within the spectrum, strictly cheaper (by min_saving) than dense
    limit = (1.0 - min_saving) * dense
    r_max = min(spec.full_rank, math.ceil(limit / unit) - 1 if unit else 0)
    while r_max > 0 and r_max * unit >= limit:  # guard float edge cases
        r_max -= 1
    lay.r_max = (r_max // step) * step
    if lay.r_max < lay.r_min:
        lay.r_max = 0
        lay.reason = (
            "this layer cannot be factorized more cheaply (break-even rank 0)"
            if F.break_even(g) == 0
            else f"no rank >= min_rank={lay.r_min} (step {step}) is cheaper than dense"
        )
    return lay


def allocate(
    layers: Sequence[LayerSpectrum],
    budget: float,
    *,
    kind: str = "params",
    objective: str = "energy",
    min_rank: int = 1,
    round_to: int = 1,
    min_features: int = 0,
    min_saving: float = 0.0,
    keep_dense: Mapping[str, str] | None = None,
) -> Allocation:
    """Choose every layer's rank (or dense) to keep the most benefit within ``budget``.

    Args:
        layers: the targeted layers with their spectra (and ``positions`` for a FLOPs budget).
        budget: fraction in (0, 1] of the layers' dense cost the result may have.
        kind: ``"params"`` (weights + biases) or ``"flops"`` (MACs at the calibration sizes).
        objective: ``"energy"`` (per-layer fractions) or ``"error"`` (absolute ``s^2``).
        min_rank: smallest rank of a factorized layer.
        round_to: ranks are multiples of this.
        min_features: layers with ``min(out, in) <`` this stay dense.
        min_saving: a factorized layer must save at least this fraction of its cost.
        keep_dense: layers that must stay dense (name -> reason); they count in the budget.

    Raises:
        ConfigError: the budget is below the cheapest possible allocation (the message gives the
            smallest feasible budget), or a FLOPs budget lacks input sizes.
    """
    if not 0 < budget <= 1:
        raise ConfigError(f"budget={budget!r} must lie in (0, 1].")
    lays = [
        _layer(s, kind, objective, round_to, min_rank, min_features, min_saving) for s in layers
    ]
    for lay in lays:
        if keep_dense and lay.spec.name in keep_dense:
            lay.r_max = 0
            lay.reason = keep_dense[lay.spec.name]
    dense_total = sum(lay.dense + lay.fixed for lay in lays)
    allowed = budget * dense_total
    cost = 0.0
    for lay in lays:
        if lay.r_max:
            lay.rank = lay.r_min
            cost += lay.r_min * lay.unit + lay.fixed
        else:
            cost += lay.dense + lay.fixed
    if cost > allowed * (1 + 1e-12):
        dense_names = [lay.spec.name for lay in lays if not lay.r_max]
        hint = (
            f" {len(dense_names)} layer(s) cannot be factorized and stay dense"
            f" (e.g. {', '.join(repr(n) for n in dense_names[:3])}); exclude them to lower the floor."
            if dense_names
            else ""
        )
        raise ConfigError(
            f"budget={budget:g} of the targeted layers' {kind} is infeasible: the cheapest allocation "
            f"(rank {round_rank(min_rank, round_to, 'up')} in every factorizable layer) keeps "
            f"{cost / dense_total:.4f}x. Raise budget to at least {math.ceil(cost / dense_total * 1e4) / 1e4:g}, "
            f"lower min_rank/round_to, or exclude layers.{hint}"
        )

    # heap of next steps: (-benefit/cost, tie, layer index)
    def next_step(i: int) -> tuple[float, float] | None:
        lay = lays[i]
        r = lay.rank
        if r is None:
            return None
        if r < lay.r_max:
            hi = r + round_to
            return sum(lay.gains[r:hi]), round_to * lay.unit
        # r == r_max: the last step is to dense
        return sum(lay.gains[r:]), lay.dense - r * lay.unit

    heap: list[tuple[float, int, float, float]] = []
    for i in range(len(lays)):
        st = next_step(i)
        if st is not None:
            gain, dc = st
            heapq.heappush(heap, (-gain / dc, i, gain, dc))
    while heap:
        _, i, gain, dc = heapq.heappop(heap)
        if cost + dc > allowed * (1 + 1e-12):
            continue  # this layer's later steps are only reachable through this one
        cost += dc
        lay = lays[i]
        if lay.rank is not None and lay.rank < lay.r_max:
            lay.rank += round_to
        else:
            lay.rank = None
            lay.reason = "the allocation keeps it dense (its last step to dense was worth its cost)"
            continue
        st = next_step(i)
        if st is not None:
            gain, dc = st
            heapq.heappush(heap, (-gain / dc, i, gain, dc))
    return Allocation(
        ranks={lay.spec.name: lay.rank for lay in lays},
        reasons={lay.spec.name: lay.reason for lay in lays if lay.rank is None},
        cost=cost,
        dense_cost=dense_total,
        budget_cost=allowed,
        kind=kind,
    )


@RANK_RULES.register("auto")
class AutoRank(RankRule):
    """``rank="auto"``: one global allocation (:func:`allocate`) under a params or FLOPs budget.

    Args:
        value: unused (the target is ``budget``).
        budget: the fraction in (0, 1] of the targeted layers' dense cost to keep.
        kind: ``"params"`` or ``"flops"`` (MACs at the calibration input sizes).
        objective: ``"energy"`` or ``"error"`` (see :func:`allocate`).
    """

    per_layer = False
    rounding = "down"
    data_reason = "budget_kind='flops' counts MACs at each layer's input size (one batch is enough)"

    def __init__(
        self,
        value: float | int | None = None,
        *,
        budget: float = 1.0,
        kind: str = "params",
        objective: str = "energy",
    ) -> None:
        super().__init__(value)
        self.budget, self.kind, self.objective = budget, kind, objective
        self.counts = kind  # type: ignore[misc]

    @classmethod
    def from_config(cls, config: Any) -> AutoRank:
        return cls(budget=float(config.budget), kind=config.budget_kind, objective=config.objective)

    @classmethod
    def check_config(cls, config: Any) -> None:
        owner = type(config).__name__
        if config.budget is None:
            raise ConfigError(
                f"{owner}(rank='auto') needs budget=, the fraction of the targeted layers' "
                f"dense {config.budget_kind} to keep, e.g. budget=0.6."
            )
        if config.value is not None:
            raise ConfigError(
                f"{owner}(rank='auto') takes its target from budget=, not value= "
                f"(got value={config.value!r})."
            )
        check_choice("budget_kind", config.budget_kind, ("params", "flops"), owner=owner)

    @property
    def needs_data(self) -> bool:
        return self.kind == "flops"

    def describe(self) -> str:
        return f"auto: {self.kind} budget {self.budget:g}x ({self.objective})"

    def decide(self, layer: LayerSpectrum, **options: Any) -> Decision:
        return self.decide_all([layer], **options)[layer.name]

    def decide_all(
        self,
        layers: Sequence[LayerSpectrum],
        *,
        min_rank: int = 1,
        round_to: int = 1,
        min_features: int = 0,
        min_saving: float = 0.0,
        keep_dense: Mapping[str, str] | None = None,
    ) -> dict[str, Decision]:
        alloc = allocate(
            layers,
            self.budget,
            kind=self.kind,
            objective=self.objective,
            min_rank=min_rank,
            round_to=round_to,
            min_features=min_features,
            min_saving=min_saving,
            keep_dense=keep_dense,
        )
        keep = dict(keep_dense or {})
        return {
            name: Decision(r, keep.get(name) or alloc.reasons.get(name, ""))
            for name, r in alloc.ranks.items()
        }
