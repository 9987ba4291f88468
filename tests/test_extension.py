"""Extending torchcompress from outside the package, one small class per piece.

A new layer kind (a module of ours whose ``weight`` is a linear map, stored ``(in, out)``), a new
calibration statistic, a new pruning criterion that asks for that statistic by name, and a new rank
rule are registered here and used through the public verbs: ``tc.prune``, ``tc.sparsity_report``,
``tc.factorize`` and ``tc.profile``. (Quantizing the new kind and a new observer come when
quantization moves onto the shared layer model.)
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import torchcompress as tc
from torchcompress import layers
from torchcompress.calibration import STATISTICS, Statistic
from torchcompress.layers import LAYER_KINDS, LinearKind
from torchcompress.lowrank import RANK_RULES, LayerSpectrum, LowRankLinear, RankRule
from torchcompress.lowrank import functional as LF
from torchcompress.sparsity import CRITERIA, Criterion, LayerStats


class Dense(nn.Module):
    """``y = x @ weight + bias``: a plain linear map whose weight is stored ``(in, out)``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias


# 1. the layer kind: which modules, and how the stored weight maps to (out, in)
class DenseKind(LinearKind):
    types = (Dense,)
    weight_axes = (1, 0)

    def to_canonical(self, module: nn.Module, stored: Tensor) -> Tensor:
        return stored.t()

    def from_canonical(self, module: nn.Module, canonical: Tensor) -> Tensor:
        return canonical.t()


# 2. a statistic: the largest |x| of each input feature, combined across ranks by max
class InputAbsMax(Statistic):
    reduction = "max"

    def shape(self) -> tuple[int, ...]:
        return (self.geometry.in_features,)

    def update(self, x: Tensor) -> None:
        rows = self.geometry.layer_kind.channel_rows(self.geometry, x.detach()).abs()
        self.acc = torch.maximum(self.acc, rows.amax(0).float())
        self.count += rows.shape[0]


# 3. a criterion asking for it by name: |w_ij| * max |x_j|
class OutlierAware(Criterion):
    statistics = ("ext_input_absmax",)

    def scores(self, w: Tensor, stats: LayerStats, *, name: str, seed: int) -> Tensor:
        return w.abs() * stats["ext_input_absmax"].reshape(1, -1)


# 4. a rank rule: half of the break-even rank
class HalfBreakEven(RankRule):
    default_value = 0.5

    def raw_rank(self, layer: LayerSpectrum) -> float:
        return max(1.0, float(self.value) * LF.break_even(layer.geometry))


LAYER_KINDS.add("ext_dense", DenseKind(), overwrite=True)
STATISTICS.add("ext_input_absmax", InputAbsMax, overwrite=True)
CRITERIA.add("ext_outlier", OutlierAware(), overwrite=True)
RANK_RULES.add("ext_half_break_even", HalfBreakEven, overwrite=True)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Dense(12, 16)
        self.act = nn.ReLU()
        self.b = nn.Linear(16, 8)
        self.c = Dense(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.c(torch.relu(self.b(self.act(self.a(x)))))


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def _data() -> list[Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(10, 12, generator=g) * torch.linspace(0.1, 3, 12) for _ in range(3)]


def test_the_kind_is_a_layer_with_geometry_and_forward() -> None:
    d = Dense(5, 3)
    geo = layers.geometry(d)
    assert (geo.kind, geo.in_features, geo.out_features, geo.bias) == ("ext_dense", 5, 3, True)
    x = torch.randn(2, 5)
    w = layers.canonical_weight(d)
    assert w.shape == (3, 5)
    torch.testing.assert_close(layers.forward(geo, x, w, d.bias), d(x))
    assert Dense in layers.supported_types()


def test_prune_with_the_new_criterion_on_the_new_kind() -> None:
    model, data = _net(), _data()
    x = torch.cat(data)
    tc.prune(model, tc.PruneConfig(sparsity=0.5, criterion="ext_outlier"), data)
    rep = tc.sparsity_report(model)
    assert [r.name for r in rep.layers] == ["a", "b", "c"]
    assert all(r.masked and r.sparsity == 0.5 for r in rep.layers)
    assert rep["a"].shape == (12, 16) and rep["a"].type == "Dense"
    # layer a: exactly the lower half of |w_ij| * max|x_j| is pruned (weights stored (in, out))
    fresh = _net()
    scores = fresh.a.weight.detach().abs() * x.abs().amax(0).reshape(-1, 1)
    kept = model.a.weight.detach() != 0
    assert kept.sum() == scores.numel() // 2
    assert scores[kept].min() >= scores[~kept].max()
    with torch.no_grad():
        assert model(x).shape == (30, 4)
    # a built-in data criterion runs its statistics through the new kind's maths too
    wanda = _net()
    tc.prune(wanda, tc.PruneConfig(sparsity=0.25, criterion="wanda"), data, include=["a", "c"])
    assert tc.sparsity_report(wanda)["c"].sparsity == 0.25


def test_factorize_with_the_new_rule_on_the_new_kind() -> None:
    model, data = _net(), _data()
    with torch.no_grad():  # layer a of exact rank 3: any rank >= 3 reproduces it
        model.a.weight.copy_(torch.randn(12, 3) @ torch.randn(3, 16) / 4)
    x = torch.cat(data)
    with torch.no_grad():
        y = model(x)
    tc.factorize(model, tc.LowRankConfig(rank="ext_half_break_even"), data)
    rep = tc.lowrank.lowrank_report(model)
    assert isinstance(model.a, LowRankLinear) and isinstance(model.b, LowRankLinear)
    assert model.a.rank == LF.break_even(layers.geometry(Dense(12, 16))) // 2 == 3
    assert rep.layers[0].name == "a" and rep.layers[0].macs_before == 10 * 12 * 16  # per batch
    with torch.no_grad():
        torch.testing.assert_close(model.a(x), _dense_a(x, model), rtol=1e-4, atol=1e-4)
        assert model(x).shape == y.shape
    # the whitened method collects the new kind's input second moments
    w = _net()
    tc.factorize(w, tc.LowRankConfig(rank="ext_half_break_even", method="whitened"), data)
    assert isinstance(w.c, LowRankLinear)


def _dense_a(x: Tensor, model: Net) -> Tensor:
    return x @ model.a.weight.t() + model.a.bias  # LowRankLinear.weight is (out, in)


def test_profile_counts_the_new_kind() -> None:
    model = _net()
    x = torch.randn(7, 12)
    prof = tc.profile(model, x)
    for name in ("a", "c"):
        geo = layers.geometry(getattr(model, name))
        assert prof[name].macs == geo.macs(7)
    tc.prune(model, tc.PruneConfig(sparsity=0.5))
    prof = tc.profile(model, x)
    assert prof["a"].macs == 7 * 12 * 16 and prof["a"].effective_macs == 7 * 12 * 16 // 2
    assert "no speed-up" in prof["a"].note


@pytest.mark.parametrize("name", ["ext_outlier"])
def test_the_new_criterion_needs_data(name: str) -> None:
    with pytest.raises(tc.errors.DataError, match="is computed from data"):
        tc.prune(_net(), tc.PruneConfig(criterion=name))
