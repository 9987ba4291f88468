"""Allocation of removed units per group, the cost model and the target search."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import example_batch
from torchcompress.errors import ConfigError
from torchcompress.sparsity.structured import CostModel, allocate, analyse
from torchcompress.sparsity.structured.allocation import refine, search_ratio, step_of
from torchcompress.sparsity.structured.surgery import apply_pruning
from torchcompress.testing import TinyCNN

from .models import MHANet


def test_costs_match_the_profile() -> None:
    m = TinyCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    a = analyse(m, example_batch(m, x))
    terms = sum(macs for macs, _ in a.costs)
    assert terms == tc.profile(m, x).total_macs


def test_allocate_local_floor_and_order() -> None:
    m = TinyCNN().eval()
    a = analyse(m, tc.batches.example_batch(m, torch.randn(1, 3, 8, 8)))
    scores = [torch.arange(len(g.units), 0, -1, dtype=torch.float64) for g in a.groups]
    removed = allocate(a.groups, scores, 0.3, scope="local", max_ratio=0.9, round_to=None)
    assert removed == [[7, 6], [15, 14, 13, 12]]  # floor(0.3 n), lowest scores first


def _analysis(model: nn.Module, x: torch.Tensor):
    return analyse(model, example_batch(model, x))


def test_step_of_counts_units_per_rounding_step() -> None:
    m = TinyCNN().eval()
    g = _analysis(m, torch.randn(1, 3, 8, 8)).groups[0]  # single channels: width 1
    assert (step_of(g, None), step_of(g, 1), step_of(g, 8)) == (1, 1, 8)
    heads = MHANet().eval()
    ag = [g for g in _analysis(heads, torch.randn(2, 5, 6)).groups if g.width > 1]
    assert ag and ag[0].width == 4  # 4 heads of 4 channels
    assert step_of(ag[0], 8) == 2 and step_of(ag[0], 4) == 1 and step_of(ag[0], 3) == 3


def test_round_to_keeps_multiples_in_allocate() -> None:
    m = TinyCNN().eval()
    a = _analysis(m, torch.randn(1, 3, 8, 8))
    scores = [torch.arange(len(g.units), dtype=torch.float64) for g in a.groups]
    removed = allocate(a.groups, scores, 0.4, scope="local", max_ratio=0.9, round_to=4)
    kept = [len(g.units) - len(r) for g, r in zip(a.groups, removed)]
    assert kept == [
        4,
        12,
    ]  # 8 - 3 = 5 -> 4 (nearest multiple), 16 - 6 = 10 -> 12 (a tie keeps more)
    assert removed[0] == [0, 1, 2, 3]  # lowest scores first
    removed = allocate(a.groups, scores, 0.3, scope="local", max_ratio=0.9, round_to=4)
    assert [len(r) for r in removed] == [0, 4]  # 8 - 2 = 6: a tie, 8 kept; 16 - 4 = 12


def test_global_allocate_ranks_across_groups_within_caps() -> None:
    m = TinyCNN().eval()
    a = _analysis(m, torch.randn(1, 3, 8, 8))
    # group 0's units all score below group 1's: a global ranking takes them first, up to the cap
    scores = [torch.full((8,), 0.1, dtype=torch.float64), torch.ones(16, dtype=torch.float64)]
    removed = allocate(a.groups, scores, 0.25, scope="global", max_ratio=0.5, round_to=None)
    assert [len(r) for r in removed] == [4, 2]  # 6 of 24 channels: 4 (the cap) + 2
    removed = allocate(a.groups, scores, 0.25, scope="local", max_ratio=0.5, round_to=None)
    assert [len(r) for r in removed] == [2, 4]


def test_removing_every_unit_is_an_error_naming_the_group() -> None:
    m = TinyCNN().eval()
    a = _analysis(m, torch.randn(1, 3, 8, 8))
    scores = [torch.ones(len(g.units), dtype=torch.float64) for g in a.groups]
    with pytest.raises(ConfigError, match="every channel of group 'conv1'"):
        allocate(a.groups, scores, 1.0, scope="local", max_ratio=1.0, round_to=None)


def test_cost_model_predicts_the_pruned_model_exactly() -> None:
    torch.manual_seed(0)
    m = tc.models.resnet.CifarResNet(20, shortcut="B").eval()
    x = torch.randn(1, 3, 32, 32)
    a = _analysis(m, x)
    before = tc.profile(m, x)
    cost = CostModel(a, m, before.total_macs)
    assert cost.base_params == before.total_params
    scores = [torch.rand(len(g.units), dtype=torch.float64) for g in a.groups]
    removed = allocate(a.groups, scores, 0.4, scope="local", max_ratio=0.9, round_to=None)
    macs, params = cost.macs(a.groups, removed), cost.params(a.groups, removed)
    assert cost.macs(a.groups, [[] for _ in a.groups]) == before.total_macs
    apply_pruning(m, a.groups, removed, a.graph.binders)
    after = tc.profile(m, x)
    assert (macs, params) == (after.total_macs, after.total_params)


def test_search_ratio_finds_the_smallest_ratio_meeting_the_goal() -> None:
    def cost(r: float) -> int:  # 100 channels, cost falls with each one removed
        return 1000 - 10 * math.floor(r * 100 + 1e-9)

    ratio, c = search_ratio(cost, 500, 0.9)
    assert c == 500 and abs(ratio - 0.5) < 1e-4
    assert search_ratio(cost, 2000, 0.9) == (0.0, 1000)  # met without pruning
    with pytest.raises(ConfigError, match="unreachable"):
        search_ratio(cost, 50, 0.9)  # at most 90 of 100 go: 100 is the floor


def test_refine_gives_back_the_best_units_while_the_goal_holds() -> None:
    m = TinyCNN().eval()
    a = _analysis(m, torch.randn(1, 3, 8, 8))
    scores = [torch.arange(len(g.units), dtype=torch.float64) for g in a.groups]
    removed = [[0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]  # lowest first

    def cost(rem: list[list[int]]) -> int:
        return 100 - sum(len(r) for r in rem)  # one per unit removed

    out = refine(a.groups, scores, removed, cost, 93, None)
    assert sum(len(r) for r in out) == 7  # exactly what the goal needs
    # each pass gives back every group's best removed unit while the goal holds, best group first:
    # group 1's unit 5 (91), group 0's unit 3 (92), group 1's unit 4 (93); group 0's unit 2 (94) not
    assert out == [[0, 1, 2], [0, 1, 2, 3]]
