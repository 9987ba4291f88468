"""Which units go: per-group (local) or global allocation, limits, rounding, and the cost model.

- :func:`allocate`: for a channel ``ratio``, the units each group loses: ``scope="local"`` takes
  ``floor(ratio * units)`` of the lowest-scoring units of every group; ``scope="global"`` ranks the
  units of all groups together (scores average 1 in every group, see
  :mod:`~torchcompress.sparsity.structured.importance`) and removes the lowest until ``ratio`` of
  all channels are gone. No group loses more than ``max_ratio`` of its units, and with
  ``round_to`` every group keeps a multiple of ``round_to`` channels (the nearest one, never
  fewer than ``round_to``; a group narrower than that stays whole).
- :class:`CostModel`: MACs and parameters of the pruned model for any allocation, without touching
  the model: every counted op's MACs scale with the kept fraction of the channels along each of its
  dimensions that shrink; parameters are counted exactly. :func:`search_ratio` finds the smallest
  ratio whose cost meets a target; :func:`refine` then gives back the most important removed units,
  one rounding step at a time, while the target still holds (so the cost lands within one step of
  it).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.batches import example_batch
    >>> from torchcompress.sparsity.structured.builder import analyse
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> a = analyse(model, example_batch(model, torch.randn(1, 4)))
    >>> scores = [torch.arange(16, dtype=torch.float64)]
    >>> removed = allocate(a.groups, scores, 0.5, scope="local", max_ratio=0.9, round_to=None)
    >>> sorted(removed[0])
    [0, 1, 2, 3, 4, 5, 6, 7]
    >>> cost = CostModel(a, model, macs=4 * 16 + 16 * 2)
    >>> cost.macs(a.groups, removed), cost.params(a.groups, removed)
    (48, 58)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import ConfigError
from .builder import Analysis
from .graph import Group, Ids

__all__ = ["CostModel", "allocate", "refine", "search_ratio", "step_of"]


def step_of(group: Group, round_to: int | None) -> int:
    """Units per rounding step: ``round_to`` channels in units of the group's width."""
    if not round_to or round_to <= 1:
        return 1
    return round_to // math.gcd(round_to, group.width)


def _limit(group: Group, k: int, max_ratio: float, round_to: int | None) -> int:
    n = len(group.units)
    cap = math.floor(max_ratio * n + 1e-9)
    k = max(0, min(k, cap))
    step = step_of(group, round_to)
    if step > 1 and k > 0:
        kept = max(step, math.floor((n - k) / step + 0.5) * step)
        while n - kept > cap:
            kept += step
        k = max(0, n - kept)
    if k >= n:
        raise ConfigError(
            f"Pruning would remove every channel of group {group.name!r} ({n} units); lower the "
            "ratio or max_ratio, or protect its layers with ignore=."
        )
    return k


def allocate(
    groups: Sequence[Group],
    scores: Sequence[Tensor],
    ratio: float,
    *,
    scope: str,
    max_ratio: float,
    round_to: int | None,
    orders: Sequence[list[int]] | None = None,
) -> list[list[int]]:
    """The units each group loses (indices into ``group.units``), lowest scores first.

    Args:
        groups: the groups.
        scores: one score per unit of each group.
        ratio: the channel ratio.
        scope: ``"local"`` or ``"global"``.
        max_ratio: the largest fraction of a group's units that may go.
        round_to: channel counts kept at multiples of this.
        orders: the units of each group sorted by score (computed when not given).

    Raises:
        ConfigError: a group would lose every unit.
    """
    if orders is None:
        orders = [torch.argsort(s, stable=True).tolist() for s in scores]
    if scope == "local":
        counts = [
            _limit(g, math.floor(ratio * len(g.units) + 1e-9), max_ratio, round_to) for g in groups
        ]
    else:
        widths = [g.width for g in groups]
        total = sum(len(g.units) * w for g, w in zip(groups, widths))
        budget = ratio * total - 1e-9
        caps = [min(math.floor(max_ratio * len(g.units) + 1e-9), len(g.units) - 1) for g in groups]
        ranked = sorted(
            (float(s[u]), gi, pos)
            for gi, (s, order) in enumerate(zip(scores, orders))
            for pos, u in enumerate(order)
        )
        counts = [0] * len(groups)
        pruned = 0.0
        for _, gi, pos in ranked:
            if pruned >= budget:
                break
            if pos == counts[gi] and counts[gi] < caps[gi]:
                counts[gi] += 1
                pruned += widths[gi]
        counts = [_limit(g, k, max_ratio, round_to) if k else 0 for g, k in zip(groups, counts)]
    return [order[:k] for order, k in zip(orders, counts)]


class CostModel:
    """MACs and parameters of the model after removing some units (see the module docstring).

    Args:
        analysis: the dependency graph and the counted ops.
        model: the model (for the parameter counts).
        macs: the unpruned model's MACs as ``tc.profile`` counts them (ops the graph does not count
            stay as they are).
    """

    def __init__(self, analysis: Analysis, model: nn.Module, macs: int) -> None:
        self.graph = analysis.graph
        self.base_macs = int(macs)
        self._roots: dict[int, np.ndarray] = {}
        self.terms = [(m, [self._root_array(f) for f in fs]) for m, fs in analysis.costs]
        names = {n for n, _ in model.named_parameters()}
        self.base_params = sum(p.numel() for p in model.parameters())
        self.tensors: dict[str, tuple[tuple[int, ...], dict[int, np.ndarray]]] = {}
        for (key, dim), ids in analysis.graph.bindings.items():
            if key in names:
                shape = tuple(model.get_parameter(key).shape)
                self.tensors.setdefault(key, (shape, {}))[1][dim] = self._root_array(ids)

    def _root_array(self, ids: Ids) -> np.ndarray:
        cached = self._roots.get(id(ids))
        if cached is None:
            cached = np.fromiter((self.graph.find(i) for i in ids.tolist()), np.int64, len(ids))
            self._roots[id(ids)] = cached
        return cached

    def _gone(self, groups: Sequence[Group], removed: Sequence[Sequence[int]]) -> np.ndarray | None:
        roots = [g.units[u].root for g, us in zip(groups, removed) for u in us]
        if not roots:
            return None
        mask = np.zeros(len(self.graph), dtype=bool)
        mask[roots] = True
        return mask

    def macs(self, groups: Sequence[Group], removed: Sequence[Sequence[int]]) -> int:
        """MACs after removing ``removed[i]`` units of ``groups[i]``."""
        gone = self._gone(groups, removed)
        if gone is None:
            return self.base_macs
        saved = 0.0
        for macs, factors in self.terms:
            kept = 1.0
            for roots in factors:
                kept *= 1.0 - float(gone[roots].mean())
            saved += macs * (1.0 - kept)
        return round(self.base_macs - saved)

    def params(self, groups: Sequence[Group], removed: Sequence[Sequence[int]]) -> int:
        """Parameters after removing ``removed[i]`` units of ``groups[i]``."""
        gone = self._gone(groups, removed)
        total = self.base_params
        if gone is None:
            return total
        for shape, dims in self.tensors.values():
            new = list(shape)
            for d, roots in dims.items():
                new[d] = int((~gone[roots]).sum())
            total -= math.prod(shape) - math.prod(new)
        return int(total)


def search_ratio(
    cost: Callable[[float], int], goal: float, high: float, *, steps: int = 40
) -> tuple[float, int]:
    """The smallest ratio in ``[0, high]`` whose ``cost`` is at most ``goal``: ``(ratio, cost)``.

    ``cost`` must not increase with the ratio. Bisection down to the point where the allocation no
    longer changes.

    Raises:
        ConfigError: even ``high`` costs more than ``goal``.
    """
    c_high = cost(high)
    if c_high > goal:
        raise ConfigError(f"unreachable: {c_high} > {goal}")
    lo, hi, best = 0.0, high, c_high
    if cost(0.0) <= goal:
        return 0.0, cost(0.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        c = cost(mid)
        if c <= goal:
            hi, best = mid, c
        else:
            lo = mid
        if hi - lo < 1e-5:
            break
    return hi, best


def refine(
    groups: Sequence[Group],
    scores: Sequence[Tensor],
    removed: Sequence[Sequence[int]],
    cost: Callable[[list[list[int]]], int],
    goal: float,
    round_to: int | None,
    *,
    max_evaluations: int = 2000,
) -> list[list[int]]:
    """Give back removed units, best first, one rounding step at a time, while ``cost <= goal``.

    ``removed[i]`` must list group ``i``'s units lowest score first (as :func:`allocate` does).
    """
    current = [list(r) for r in removed]
    evaluations = 0
    improved = True
    while improved and evaluations < max_evaluations:
        improved = False
        candidates = []
        for gi, g in enumerate(groups):
            k = len(current[gi])
            if k:
                back = min(step_of(g, round_to), k)
                candidates.append((float(scores[gi][current[gi][k - 1]]), gi, back))
        for _, gi, back in sorted(candidates, reverse=True):
            trial = list(current)
            trial[gi] = current[gi][: len(current[gi]) - back]
            evaluations += 1
            if cost(trial) <= goal:
                current = trial
                improved = True
            if evaluations >= max_evaluations:
                break
    return current
