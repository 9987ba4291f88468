"""Channel importance criteria: magnitudes, BN scale, Taylor, Wanda, random; how members combine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import example_batch
from torchcompress.layers import layer_kind
from torchcompress.sparsity.calibration import Target, collect_statistics
from torchcompress.sparsity.structured import IMPORTANCE, ScoreContext, analyse
from torchcompress.testing import TinyCNN


def _group(model: nn.Module, x: torch.Tensor, name: str):
    return next(g for g in analyse(model, example_batch(model, x)).groups if g.name == name)


def test_l1_l2_rank_by_weight_norms() -> None:
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [2.0, 0, 0, 0], [0.1, 0.1, 0.1, 0.1]]))
        m[2].weight.fill_(1.0)
    g = _group(m, torch.randn(1, 4), "0")
    l1, _ = IMPORTANCE.get("l1").scores(g, m, ScoreContext())
    l2, _ = IMPORTANCE.get("l2").scores(g, m, ScoreContext())
    # L1: rows 4 and 2 (and 0.4), plus the consumer's equal columns; L2: 2, 2 and 0.2
    assert l1.argsort().tolist() == [2, 1, 0]
    assert float(l2[0]) == pytest.approx(float(l2[1])) and int(l2.argmin()) == 2
    assert float(l1.mean()) == pytest.approx(1.0, abs=0.2)  # normalised per member


def test_bn_scale_ranks_by_gamma_and_falls_back() -> None:
    m = TinyCNN().eval()
    with torch.no_grad():
        m.bn1.weight.copy_(torch.arange(8, 0, -1, dtype=torch.float32))
    x = torch.randn(1, 3, 8, 8)
    g = _group(m, x, "conv1")
    s, note = IMPORTANCE.get("bn_scale").scores(g, m, ScoreContext())
    assert s.argsort().tolist() == list(range(7, -1, -1)) and note == ""
    mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    _, note = IMPORTANCE.get("bn_scale").scores(
        _group(mlp, torch.randn(1, 4), "0"), mlp, ScoreContext()
    )
    assert "l2" in note


def test_taylor_uses_gradients() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        m[2].weight[:, 5] = 0.0  # unit 5 cannot change the loss: no gradient reaches its row
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(2)]
    tc.prune_channels(m, torch.randn(1, 4), 1 / 6, criterion="taylor", data=data)
    rep = tc.sparsity.channel_report(m)
    assert rep.groups[0].removed_units == [5] and rep.groups[0].criterion == "taylor"


def test_random_is_seeded() -> None:
    m = TinyCNN()
    x = torch.randn(1, 3, 8, 8)
    g = _group(m, x, "conv2")
    a, _ = IMPORTANCE.get("random").scores(g, m, ScoreContext(seed=3))
    b, _ = IMPORTANCE.get("random").scores(g, m, ScoreContext(seed=3))
    c, _ = IMPORTANCE.get("random").scores(g, m, ScoreContext(seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_wanda_weighs_columns_by_activation_norms_without_labels() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        m[0].bias.fill_(1.0)
        m[0].bias[2] = -100.0  # unit 2 is always 0 after the ReLU: nothing flows through it
        m[2].weight[:, 2] = 5.0  # even with large weights reading it
    data = [torch.randn(16, 4) for _ in range(2)]  # no targets
    tc.prune_channels(m, torch.randn(1, 4), 1 / 6, criterion="wanda", data=data)
    rep = tc.sparsity.channel_report(m)
    assert rep.groups[0].removed_units == [2] and rep.groups[0].criterion == "wanda"


def _taylor_removed(grad_mode) -> list[int]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(2)]
    with grad_mode():
        tc.prune_channels(m, torch.randn(1, 4), 0.5, criterion="taylor", data=data)
    assert m[0].weight.requires_grad and m[0].weight.grad is None  # no gradient left behind
    return tc.sparsity.channel_report(m).groups[0].removed_units


def test_taylor_under_no_grad_ranks_as_with_gradients_on() -> None:
    assert _taylor_removed(torch.no_grad) == _taylor_removed(torch.enable_grad)


def test_taylor_scores_are_mean_abs_weight_times_gradient() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    loss = nn.functional.cross_entropy(m(x), y)
    g0, g2 = torch.autograd.grad(loss, [m[0].weight, m[2].weight])
    rows = (m[0].weight * g0).abs().sum(1).detach().double()  # producer rows, per unit
    cols = (m[2].weight * g2).abs().sum(0).detach().double()  # consumer columns, per unit
    expected = (rows / rows.mean() + cols / cols.mean()) / 2  # each member normalised, averaged
    a = analyse(m, example_batch(m, x))
    ctx = ScoreContext()
    targets = [Target(n, m.get_submodule(n), layer_kind(m.get_submodule(n))) for n in "02"]
    ctx.stats = collect_statistics(
        m, targets, {"0": {"grad_abs"}, "2": {"grad_abs"}}, [(x, y)], None
    )
    got, note = IMPORTANCE.get("taylor").scores(a.groups[0], m, ctx)
    assert note == ""
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_every_groups_scores_average_one() -> None:
    torch.manual_seed(0)
    m = TinyCNN()
    a = analyse(m, example_batch(m, torch.randn(1, 3, 8, 8)))
    for name in ("l1", "l2", "bn_scale"):
        for g in a.groups:
            s, _ = IMPORTANCE.get(name).scores(g, m, ScoreContext())
            assert s.dtype == torch.float64 and len(s) == len(g.units)
            if name != "l2":  # l2 takes a root after normalising the squares
                assert float(s.mean()) == pytest.approx(1.0)
