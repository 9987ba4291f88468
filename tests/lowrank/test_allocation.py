"""The global "auto" allocation: budget respected within one step, clear infeasibility, sound choices."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError
from torchcompress.layers import Geometry
from torchcompress.lowrank import LowRankConfig, allocate, lowrank_report
from torchcompress.lowrank import functional as F
from torchcompress.lowrank.rank_rules import LayerSpectrum


def _spec(
    name: str, m: int, n: int, decay: float, positions: float | None = None, bias: bool = False
):
    geo = Geometry("linear", n, m, bias=bias)
    s = torch.tensor([decay**i for i in range(min(m, n))], dtype=torch.float64)
    return LayerSpectrum(name, geo, s.unsqueeze(0), positions)


@pytest.mark.parametrize("budget", [0.2, 0.45, 0.7, 0.95])
@pytest.mark.parametrize("kind", ["params", "flops"])
def test_budget_is_respected_within_one_step(budget: float, kind: str) -> None:
    layers = [
        _spec("a", 64, 64, 0.9, positions=100.0, bias=True),
        _spec("b", 128, 32, 0.97, positions=400.0),
        _spec("c", 48, 200, 0.8, positions=10.0, bias=True),
    ]
    alloc = allocate(layers, budget, kind=kind)
    assert alloc.cost <= alloc.budget_cost * (1 + 1e-12)
    largest_step = max(
        (s.positions if kind == "flops" else 1.0) * (s.geometry.m + s.geometry.n) for s in layers
    )
    assert alloc.budget_cost - alloc.cost < largest_step
    # the reported cost is the exact cost of the chosen ranks
    cost = 0.0
    for s in layers:
        r = alloc.ranks[s.name]
        per = (
            F.params_at(s.geometry, r)
            if kind == "params"
            else s.positions * F.macs_per_position(s.geometry, r)
        )
        cost += per
    assert cost == pytest.approx(alloc.cost)


def test_infeasible_budget_is_an_error_not_rank_one_everywhere() -> None:
    layers = [_spec("a", 64, 64, 0.9), _spec("b", 128, 32, 0.9)]
    with pytest.raises(ConfigError, match=r"budget=0.01 .* is infeasible.*at least 0.0\d+"):
        allocate(layers, 0.01)
    with pytest.raises(ConfigError, match="infeasible"):
        allocate(layers, 0.1, min_rank=8)


def test_dense_only_layers_count_in_the_budget_and_are_named() -> None:
    dw = LayerSpectrum(
        "dw",
        Geometry("conv", 32, 32, kernel_size=(3, 3), groups=32, bias=True),
        torch.ones(32, 1),
    )
    layers = [_spec("a", 16, 16, 0.9), dw]
    with pytest.raises(ConfigError, match=r"cannot be factorized and stay dense.*'dw'"):
        allocate(layers, 0.1)
    alloc = allocate(layers, 0.8)  # the floor is (16*2 + 32*9+32) / (256 + 320) = 0.61
    assert alloc.ranks["dw"] is None and "break-even rank 0" in alloc.reasons["dw"]


def test_peaked_spectra_get_lower_ranks_than_flat_ones() -> None:
    alloc = allocate([_spec("peaked", 64, 64, 0.7), _spec("flat", 64, 64, 0.999)], 0.4)
    assert alloc.ranks["peaked"] < alloc.ranks["flat"]


def test_flops_budget_prefers_cutting_layers_that_run_on_many_positions() -> None:
    a = _spec("big_map", 64, 64, 0.95, positions=1000.0)
    b = _spec("small_map", 64, 64, 0.95, positions=10.0)
    alloc = allocate([a, b], 0.5, kind="flops")
    assert alloc.ranks["big_map"] < (alloc.ranks["small_map"] or 64)


def test_a_layer_worth_keeping_goes_dense_exactly() -> None:
    # "b" carries all its energy evenly: its dense step is the best use of a generous budget
    alloc = allocate([_spec("a", 64, 64, 0.5), _spec("b", 64, 64, 1.0)], 0.8)
    assert alloc.ranks["b"] is None and alloc.ranks["a"] is not None
    assert "keeps it dense" in alloc.reasons["b"]


def _brute_force(layers, budget):
    options = []
    for s in layers:
        g = s.geometry
        e = (s.singular_values[0] ** 2).double()
        e = e / e.sum()
        opts = [(F.params_at(g, r), float(e[:r].sum())) for r in range(1, F.break_even(g) + 1)]
        opts.append((F.params_at(g, None), 1.0))
        options.append(opts)
    allowed = budget * sum(F.params_at(s.geometry, None) for s in layers)
    best = 0.0
    for combo in itertools.product(*options):
        if sum(c for c, _ in combo) <= allowed:
            best = max(best, sum(v for _, v in combo))
    return best


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_greedy_is_close_to_the_exact_optimum(budget: float) -> None:
    layers = [_spec("a", 12, 10, 0.6), _spec("b", 10, 14, 0.85), _spec("c", 16, 8, 0.95)]
    alloc = allocate(layers, budget)
    got = sum(s.energy(alloc.ranks[s.name]) for s in layers)
    best = _brute_force(layers, budget)
    assert got <= best + 1e-9
    assert got >= best - 0.05  # within one step's worth of energy


@pytest.mark.parametrize("method", ["svd", "whitened"])
@pytest.mark.parametrize(("kind", "budget"), [("params", 0.5), ("flops", 0.35)])
def test_auto_on_a_model_respects_its_budget(
    tiny_cnn: nn.Module, method: str, kind: str, budget: float
) -> None:
    x = torch.randn(4, 3, 16, 16)
    y = tiny_cnn(x)
    cfg = LowRankConfig(rank="auto", budget=budget, budget_kind=kind, method=method)
    tc.factorize(tiny_cnn, cfg, x)
    rep = lowrank_report(tiny_cnn)
    assert rep.achieved <= budget + 1e-12
    assert rep.achieved > budget - 0.03  # tiny model: one rank step is ~1% of its cost
    # what the report claims is what the model holds
    params = sum(
        p.numel() for n, m in tiny_cnn.named_children() if n != "pool" for p in m.parameters()
    )
    assert params == rep.params_after
    assert tiny_cnn(x).shape == y.shape


def test_auto_with_round_to_and_min_rank(mlp: nn.Module) -> None:
    tc.factorize(mlp, LowRankConfig(rank="auto", budget=0.5, round_to=8, min_rank=8))
    rep = lowrank_report(mlp)
    assert all(la.rank % 8 == 0 and la.rank >= 8 for la in rep.layers if la.factorized)
    assert rep.params_ratio <= 0.5


def test_auto_flops_budget_needs_calibration_data(mlp: nn.Module) -> None:
    with pytest.raises(tc.errors.DataError, match=r"budget_kind='flops'.*calib_data"):
        tc.factorize(mlp, LowRankConfig(rank="auto", budget=0.5, budget_kind="flops"))


def test_auto_infeasible_on_a_model_leaves_it_unchanged(mlp: nn.Module) -> None:
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    with pytest.raises(ConfigError, match="infeasible"):
        tc.factorize(mlp, LowRankConfig(rank="auto", budget=0.01))
    assert all(type(m) is not tc.lowrank.LowRankLinear for m in mlp)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
