"""Regularizers: values and gradients against hand-computed formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, SelectionError, ShapeError
from torchcompress.sparsity import L1, BNScaleL1, GroupHoyer, GroupLasso, Hoyer

W1 = torch.tensor([[1.0, -2.0, 0.0, 2.0], [0.5, 0.0, -1.0, 1.0]])
W2 = torch.tensor([[3.0, 0.0], [0.0, 0.0], [-4.0, 1.0], [1.0, 1.0]])


def _model() -> nn.Sequential:
    m = nn.Sequential(nn.Linear(4, 2, bias=False), nn.BatchNorm1d(2), nn.Linear(2, 4, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(W1)
        m[2].weight.copy_(W2)
        m[1].weight.copy_(torch.tensor([0.5, -2.0]))
    return m


def _grads(reg, model: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = reg(model)
    loss.backward()
    return loss.detach(), [model[0].weight.grad.clone(), model[2].weight.grad.clone()]


def _check(reg, value_fn) -> None:
    model = _model()
    loss, grads = _grads(reg, model)
    ws = [W1.clone().requires_grad_(True), W2.clone().requires_grad_(True)]
    ref = value_fn(*ws)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    for g, w in zip(grads, ws):
        torch.testing.assert_close(g, w.grad)
    assert all(torch.isfinite(g).all() for g in grads)


def test_l1_value_and_gradient() -> None:
    _check(L1(0.1), lambda a, b: 0.1 * (a.abs().sum() + b.abs().sum()))
    model = _model()
    _, (g1, _) = _grads(L1(0.1), model)
    torch.testing.assert_close(g1, 0.1 * W1.sign())  # subgradient 0 at 0


def test_group_lasso_channels_by_hand() -> None:
    def ref(a, b):
        rows_a = (a.pow(2).sum(1)).sqrt()  # 2 rows of 4
        rows_b = torch.stack(
            [b[0].norm(), torch.zeros(()), b[2].norm(), b[3].norm()]
        )  # row 1 all zero
        return 0.01 * (4**0.5 * rows_a.sum() + 2**0.5 * rows_b.sum())

    _check(GroupLasso(0.01, pattern="channel"), ref)
    model = _model()
    _, (_, g2) = _grads(GroupLasso(0.01), model)
    assert torch.equal(g2[1], torch.zeros(2))  # the all-zero group: zero gradient, not NaN
    torch.testing.assert_close(g2[0], 0.01 * 2**0.5 * W2[0] / W2[0].norm())


def test_group_lasso_nm_blocks() -> None:
    def ref(a, b):
        return 2**0.5 * (a[:, :2].norm(dim=1).sum() + a[:, 2:].norm(dim=1).sum()) + 2**0.5 * sum(
            b[i].norm() for i in (0, 2, 3)
        )

    _check(GroupLasso(1.0, pattern="n:m", n=1, m=2), lambda a, b: ref(a, b))


def test_hoyer_square_by_hand() -> None:
    def ref(a, b):
        return 0.5 * ((a.abs().sum() / a.norm()) ** 2 + (b.abs().sum() / b.norm()) ** 2)

    _check(Hoyer(0.5), ref)
    _check(
        Hoyer(0.5, square=False),
        lambda a, b: 0.5 * (a.abs().sum() / a.norm() + b.abs().sum() / b.norm()),
    )


def test_hoyer_gradient_analytic() -> None:
    # d/dw (L1/L2)^2 = 2 (L1/L2) * (sign(w)/L2 - L1 w / L2^3)
    model = _model()
    _, (g1, _) = _grads(Hoyer(1.0), model)
    l1, l2 = W1.abs().sum(), W1.norm()
    torch.testing.assert_close(g1, 2 * (l1 / l2) * (W1.sign() / l2 - l1 * W1 / l2**3))


def test_group_hoyer_by_hand() -> None:
    def ref(a, b):
        na = a.norm(dim=1)
        nb = torch.stack([b[0].norm(), torch.zeros(()), b[2].norm(), b[3].norm()])
        return 2.0 * (na.sum() ** 2 / na.pow(2).sum() + nb.sum() ** 2 / nb.pow(2).sum())

    _check(GroupHoyer(2.0), ref)


def test_hoyer_scale_invariant_and_zero_safe() -> None:
    m = _model()
    a = Hoyer(1.0)(m)
    with torch.no_grad():
        m[0].weight.mul_(10)
        m[2].weight.mul_(0.1)
    torch.testing.assert_close(Hoyer(1.0)(m), a)
    z = nn.Sequential(nn.Linear(3, 3, bias=False))
    nn.init.zeros_(z[0].weight)
    for reg in (Hoyer(1.0), GroupHoyer(1.0), GroupLasso(1.0), L1(1.0)):
        z.zero_grad()
        loss = reg(z)
        loss.backward()
        assert float(loss.detach()) == 0.0 and torch.equal(z[0].weight.grad, torch.zeros(3, 3))


def test_bn_scale_l1() -> None:
    m = _model()
    loss = BNScaleL1(1e-2)(m)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(1e-2 * 2.5)
    torch.testing.assert_close(m[1].weight.grad, 1e-2 * torch.tensor([1.0, -1.0]))
    with pytest.raises(SelectionError, match="no affine BatchNorm"):
        BNScaleL1()(nn.Sequential(nn.Linear(2, 2)))


def test_on_masked_layers_and_combined(mlp: nn.Module) -> None:
    tc.prune(mlp, tc.PruneConfig(sparsity=0.5))
    reg = L1(1e-3, include=["0"]) + GroupLasso(1e-3, exclude=["0"])
    loss = reg(mlp)
    expected = 1e-3 * mlp[0].weight.abs().sum() + 1e-3 * sum(
        m.weight.shape[1] ** 0.5 * m.weight.norm(dim=1).sum() for m in (mlp[2], mlp[4])
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    orig = mlp[0].parametrizations.weight.original
    assert bool((orig.grad[mlp[0].weight == 0] == 0).all())
    assert "L1" in repr(reg) and "GroupLasso" in repr(reg)


def test_regularizer_errors() -> None:
    with pytest.raises(ConfigError, match="weight"):
        L1(-1.0)
    with pytest.raises(ConfigError, match="Unknown sparsity pattern"):
        GroupLasso(pattern="blocks")
    with pytest.raises(ShapeError, match="not a multiple of m=4"):
        GroupLasso(pattern="n:m")(nn.Sequential(nn.Linear(3, 2)))
