"""Extending torchcompress from outside the package, one small class per piece.

A new layer kind (a module of ours whose ``weight`` is a linear map, stored ``(in, out)``), a new
calibration statistic, a new pruning criterion that asks for that statistic by name, a new rank
rule and a new quantization observer are registered here and used through the public verbs:
``tc.prune``, ``tc.sparsity_report``, ``tc.factorize``, ``tc.profile``, ``tc.quantize`` (with the new
observer, and of the new kind: fake-quant, ``tc.convert``, ``tc.save``/``tc.load``),
``tc.prepare_qat`` and ``tc.kmeans_quantize``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import torchcompress as tc
from torchcompress import layers
from torchcompress.calibration import STATISTICS, Statistic
from torchcompress.layers import LAYER_KINDS, LinearKind
from torchcompress.lowrank import RANK_RULES, LayerSpectrum, LowRankLinear, RankRule
from torchcompress.lowrank import functional as LF
from torchcompress.profiling.module_costs import layer_cost, module_cost_fn
from torchcompress.quant import OBSERVERS, IntLayer, KMeansLayer, ObserverSpec, QuantLinear
from torchcompress.quant.observers import MinMaxObserver
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


# 5. an observer: the min/max range shrunk by a factor (its options: a small typed spec)
@dataclass(frozen=True)
class ShrunkRange(ObserverSpec):
    factor: float = 0.5


class ShrunkMinMax(MinMaxObserver):
    Spec = ShrunkRange

    def compute_range(self) -> tuple[Tensor, Tensor]:
        lo, hi = super().compute_range()
        return lo * self.spec.factor, hi * self.spec.factor


LAYER_KINDS.add("ext_dense", DenseKind(), overwrite=True)
STATISTICS.add("ext_input_absmax", InputAbsMax, overwrite=True)
CRITERIA.add("ext_outlier", OutlierAware(), overwrite=True)
RANK_RULES.add("ext_half_break_even", HalfBreakEven, overwrite=True)
OBSERVERS.add("ext_shrunk", ShrunkMinMax, overwrite=True)


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


def test_profile_cost_of_the_new_kind_comes_from_its_geometry() -> None:
    """Dense registers no cost function: its cost is the layer model's, not a count of its ops."""
    d = Dense(12, 16)
    assert module_cost_fn(d) is layer_cost
    x = torch.randn(3, 5, 12)
    cost = layer_cost(d, (x,), {}, d(x))
    assert cost.macs == cost.effective_macs == layers.geometry(d).macs(15) == 15 * 12 * 16

    class Functional(nn.Module):  # the same maths without a layer kind: counted from its ops
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(16, 12))

        def forward(self, x: Tensor) -> Tensor:
            return x @ self.weight

    assert module_cost_fn(Functional()) is None
    prof = tc.profile(nn.Sequential(Dense(12, 16), Functional()), torch.randn(3, 12))
    assert prof["0"].macs == prof["1"].macs == 3 * 12 * 16 and prof["0"].params == 12 * 16 + 16


# --- quantization ------------------------------------------------------------------------------


def test_quantize_with_the_new_observer() -> None:
    data = _data()
    ref = tc.quantize(_net(), tc.QuantConfig(), data)  # min/max ranges
    q = tc.quantize(_net(), tc.QuantConfig(observer=ShrunkRange(0.5)), data)
    assert q.quant_graph.quantizers.keys() == ref.quant_graph.quantizers.keys()
    assert all(fq.observer_name == "ext_shrunk" for fq in q.quant_graph.quantizers.values())
    # the model's input (the same data for both): an asymmetric range [lo, hi], lo < 0 < hi, halved
    fq, fr = q.quant_graph.quantizers["input_a"], ref.quant_graph.quantizers["input_a"]
    torch.testing.assert_close(fq.scale, fr.scale * 0.5)
    assert tc.QuantConfig.from_dict(
        tc.QuantConfig(observer=ShrunkRange(0.25)).to_dict()
    ).observer == (ShrunkRange(0.25))


def _close_to_float(q: nn.Module, model: nn.Module, x: Tensor, tol: float) -> None:
    with torch.no_grad():
        y, want = q(x), model(x)
    assert float((y - want).abs().max()) < tol * float(want.abs().max())


def test_quantize_convert_save_load_the_new_kind(tmp_path) -> None:
    model, data = _net(), _data()
    x = torch.cat(data)
    q = tc.quantize(copy.deepcopy(model), tc.QuantConfig(), data)
    for name in ("a", "c"):
        layer = getattr(q, name)
        assert isinstance(layer, QuantLinear) and layer.source == "Dense"
        assert layer.geometry == layers.geometry(getattr(model, name))  # kind "ext_dense"
        # the weight in the canonical (out, in) layout
        assert torch.equal(layer.weight, getattr(model, name).weight.detach().t())
    # planned on the graph: the Dense layers are one call each, quantized where integers run
    assert sorted(q.quant_graph.quantizers) == ["input_a", "output_a", "output_b"]
    _close_to_float(q, model, x, 0.05)
    c = tc.convert(copy.deepcopy(q))
    assert isinstance(c.a, IntLayer) and c.a.geometry.kind == "ext_dense"
    with torch.no_grad():
        torch.testing.assert_close(c(x), q(x), atol=1e-4, rtol=1e-4)
    for m in (q, c):
        tc.save(m, tmp_path / "m.safetensors")
        loaded = tc.load(tmp_path / "m.safetensors", _net())
        assert type(loaded.a) is type(m.a) and loaded.a.geometry == m.a.geometry
        with torch.no_grad():
            assert torch.equal(loaded(x), m(x))


def test_prepare_qat_on_the_new_kind() -> None:
    model, data = _net(), _data()
    x = torch.cat(data)
    q = tc.prepare_qat(copy.deepcopy(model), tc.QuantConfig(), method="lsq", calib_data=data)
    assert isinstance(q.a, QuantLinear) and q.a.geometry.kind == "ext_dense"
    train = [(b, torch.randn(b.shape[0], 4)) for b in data]
    tc.finetune(q, train, steps=3, lr=1e-3, loss_fn=nn.functional.mse_loss, progress=False)
    q.eval()
    c = tc.convert(copy.deepcopy(q))
    with torch.no_grad():
        torch.testing.assert_close(c(x), q(x), atol=1e-4, rtol=1e-4)


def test_kmeans_quantize_the_new_kind(tmp_path) -> None:
    model, data = _net(), _data()
    x = torch.cat(data)
    k = tc.kmeans_quantize(copy.deepcopy(model), bits=4, weighted="activation", calib_data=data)
    assert isinstance(k.a, KMeansLayer) and k.a.geometry == layers.geometry(model.a)
    assert k.a.weight.shape == (16, 12) and k.a.weight.unique().numel() <= 16
    with torch.no_grad():
        torch.testing.assert_close(k.a(x), x @ k.a.weight.t() + k.a.bias)
        w = model.a.weight.t()  # 16 centroids: the canonical weight, clustered
        assert float((k.a.weight - w).norm() / w.norm()) < 0.1
    tc.save(k, tmp_path / "k.safetensors")
    loaded = tc.load(tmp_path / "k.safetensors", _net())
    with torch.no_grad():
        assert torch.equal(loaded(x), k(x))


@pytest.mark.parametrize("name", ["ext_outlier"])
def test_the_new_criterion_needs_data(name: str) -> None:
    with pytest.raises(tc.errors.DataError, match="is computed from data"):
        tc.prune(_net(), tc.PruneConfig(criterion=name))
