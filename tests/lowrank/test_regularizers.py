"""Low-rank training: singular-value penalties and their gradients, proximal steps, re-truncation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError
from torchcompress.lowrank import (
    LowRankConfig,
    LowRankLinear,
    SingularValueRegularizer,
    SVTCallback,
    lowrank_report,
    proximal_step,
    retruncate,
    singular_values,
    train_lowrank,
)


def test_singular_values_of_dense_and_factorized_layers() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, groups=2)
    s = singular_values(conv)
    W = conv.weight.detach().reshape(2, 3, -1)
    torch.testing.assert_close(s.detach(), torch.linalg.svdvals(W))
    lr = LowRankLinear.from_dense(nn.Linear(40, 30), 7)
    s_lr = singular_values(lr).detach()[0]
    torch.testing.assert_close(
        s_lr, torch.linalg.svdvals(lr.weight.detach())[:7], rtol=1e-4, atol=1e-5
    )


def test_nuclear_norm_gradient_is_u_vt_and_stable_with_repeated_values() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        lin.weight.copy_(
            torch.eye(8)
        )  # all singular values equal: the worst case for SVD gradients
    reg = SingularValueRegularizer("nuclear", strength=1.0, normalize=False)
    reg(nn.Sequential(lin)).backward()
    assert torch.isfinite(lin.weight.grad).all()
    torch.testing.assert_close(lin.weight.grad, torch.eye(8))  # d||W||_*/dW = U V^T = I
    lin2 = nn.Linear(12, 7)
    reg(nn.Sequential(lin2)).backward()
    U, _, Vh = torch.linalg.svd(lin2.weight.detach(), full_matrices=False)
    torch.testing.assert_close(lin2.weight.grad, U @ Vh, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "penalty", ["nuclear", "hoyer", "hoyer_square", "effective_rank", "tail_energy"]
)
def test_penalties_are_finite_with_finite_gradients(penalty: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4), LowRankLinear(4, 4, 2))
    with torch.no_grad():
        model[3].first.weight.zero_()  # zero singular values too
    loss = SingularValueRegularizer(penalty, strength=0.1)(model)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_hoyer_training_concentrates_the_spectrum() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(32, 32, bias=False)
    model = nn.Sequential(lin)
    reg = SingularValueRegularizer("hoyer", strength=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def eff_rank() -> int:
        s = torch.linalg.svdvals(lin.weight.detach()) ** 2
        return int((torch.cumsum(s, 0) / s.sum() < 0.9).sum()) + 1

    before = eff_rank()
    for _ in range(300):
        opt.zero_grad()
        reg(model).backward()
        opt.step()
    assert eff_rank() < before // 2


def test_regularizer_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"Unknown singular-value penalty 'nucler'.*'nuclear'"):
        SingularValueRegularizer("nucler")
    with pytest.raises(ConfigError, match="takes no option"):
        SingularValueRegularizer("hoyer", keep=0.5)
    with pytest.raises(ConfigError, match="strength"):
        SingularValueRegularizer("hoyer", strength=-1.0)
    with pytest.raises(tc.errors.SelectionError):
        SingularValueRegularizer("hoyer")(nn.Sequential(nn.ReLU()))


def test_proximal_step_is_singular_value_thresholding() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.Conv2d(3, 4, 3))
    W = model[0].weight.detach().clone()
    s = torch.linalg.svdvals(W)
    tau = float(s[5] + s[6]) / 2
    zeroed = proximal_step(model, tau, include=["0"])
    after = torch.linalg.svdvals(model[0].weight.detach())
    torch.testing.assert_close(after[:6], s[:6] - tau, rtol=1e-4, atol=1e-5)
    assert zeroed == 6 and float(after[6:].max()) < 1e-5
    # factorized layers: thresholded through the product, rank kept
    lr = LowRankLinear.from_dense(nn.Linear(20, 20), 10)
    s_lr = torch.linalg.svdvals(lr.weight.detach())
    proximal_step(nn.Sequential(lr), float(s_lr[3]))
    assert lr.rank == 10
    torch.testing.assert_close(
        torch.linalg.svdvals(lr.weight.detach())[:3], s_lr[:3] - s_lr[3], rtol=1e-4, atol=1e-4
    )


def test_svt_callback_uses_the_optimizer_learning_rate() -> None:
    class State:
        def __init__(self, model: nn.Module) -> None:
            self.model = model
            self.optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
            self.step = 2

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    s = torch.linalg.svdvals(model[0].weight.detach())
    cb = SVTCallback(strength=0.1, every=2)
    cb.on_step_end(State(model))  # tau = 0.5 * 0.1 * 2
    torch.testing.assert_close(
        torch.linalg.svdvals(model[0].weight.detach()), (s - 0.1).clamp_min(0), rtol=1e-4, atol=1e-5
    )


def test_retruncate_cuts_ranks_and_merges_unprofitable_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    tc.factorize(model, LowRankConfig(rank=24))
    x = torch.randn(8, 64)
    y = model(x)
    retruncate(model, LowRankConfig(rank=30))  # a fixed rank never grows a layer
    assert model[0].rank == 24
    torch.testing.assert_close(model(x), y)
    # make layer 0 exactly rank 5: the energy rule finds it, and the cut is exact
    with torch.no_grad():
        first = model[0].factors()[0]
        first[:, 5:] = 0
    y = model(x)
    retruncate(model, LowRankConfig(rank="energy", value=0.999999))
    assert model[0].rank == 5
    torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-5)
    rep = lowrank_report(model)
    assert rep.layers[0].rank == 5 and rep.rule.startswith("energy")
    # auto over factorized layers stays within its budget
    retruncate(model, LowRankConfig(rank="auto", budget=0.1))
    assert lowrank_report(model).params_ratio <= 0.1
    with pytest.raises(ConfigError, match="method must be 'svd'"):
        retruncate(model, LowRankConfig(rank=2, method="whitened"))


def test_train_lowrank_rounds_factorize_then_shrink() -> None:
    torch.manual_seed(0)
    teacher = nn.Linear(32, 32)
    with torch.no_grad():  # a rank-4 target map
        teacher.weight.copy_(torch.randn(32, 4) @ torch.randn(4, 32) / 4)
    x = torch.randn(256, 32)
    data = (x, teacher(x).detach())
    calls = []

    def loop(model: nn.Module, data, regularizer=None, steps: int = 150) -> nn.Module:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            xb, yb = data
            loss = nn.functional.mse_loss(model(xb), yb) + regularizer(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
        calls.append(type(model[0]).__name__)
        return model

    model = nn.Sequential(nn.Linear(32, 32))
    train_lowrank(
        model,
        data,
        LowRankConfig(rank="energy", value=0.99),
        rounds=2,
        penalty="hoyer",
        strength=1e-2,
        train_fn=loop,
    )
    assert calls == ["Linear", "LowRankLinear"]
    assert isinstance(model[0], LowRankLinear) and model[0].rank <= 6
    assert nn.functional.mse_loss(model(x), data[1]) < 0.05 * data[1].var()
