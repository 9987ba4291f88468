"""The shared OBS maths: damped Hessian, inverse Cholesky factor, the lazy column sweep."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchcompress.calibration.second_order import (
    damped_hessian,
    inverse_cholesky,
    obs_sweep,
)
from torchcompress.errors import ConfigError, NumericalError, ShapeError


def _inputs(rows: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64)
    return torch.randn(rows, n, generator=g, dtype=torch.float64) @ mix


def test_damped_hessian_dead_inputs_and_damping() -> None:
    x = _inputs(64, 5, 0)
    x[:, 2] = 0  # a dead input
    xtx = x.T @ x / 64
    h, dead = damped_hessian(xtx, damp=0.1)
    assert dead.tolist() == [False, False, True, False, False]
    diag = 2 * torch.diagonal(xtx)
    mean = float(diag[~dead].mean())
    assert float(h[2, 2]) == pytest.approx(1.0 + 0.1 * mean)
    assert float(h[0, 0]) == pytest.approx(float(diag[0]) + 0.1 * mean)
    torch.testing.assert_close(h[0, 1], 2 * xtx[0, 1])
    assert h.dtype == torch.float64


def test_damped_hessian_bad_input() -> None:
    with pytest.raises(ConfigError, match="damp"):
        damped_hessian(torch.eye(3), damp=-1.0)
    with pytest.raises(ShapeError, match="square"):
        damped_hessian(torch.zeros(3, 4))


def test_inverse_cholesky_factorises_the_inverse() -> None:
    x = _inputs(128, 6, 1)
    h, _ = damped_hessian(x.T @ x / 128, damp=0.01)
    u = inverse_cholesky(h)
    torch.testing.assert_close(u.T @ u, torch.linalg.inv(h))
    assert torch.equal(u, torch.triu(u))


def test_singular_hessian_says_raise_damping_or_add_samples() -> None:
    x = _inputs(3, 8, 2)  # 3 rows for 8 inputs: rank 3, singular without damping
    h, _ = damped_hessian(x.T @ x / 3, damp=0.0)
    h = h - torch.eye(8, dtype=h.dtype) * 1e-3  # indefinite
    with pytest.raises(NumericalError, match="Raise the damping or add calibration samples"):
        inverse_cholesky(h, name="'fc'", damp=0.0)
    with pytest.raises(NumericalError, match="NaN"):
        inverse_cholesky(torch.full((2, 2), float("nan")))


def _lstsq_rest(x: torch.Tensor, w: torch.Tensor, q0: torch.Tensor) -> torch.Tensor:
    """Column 0 fixed at ``q0``: the other columns minimising ||x w^T - x w'^T|| (closed form)."""
    target = x @ w.T - x[:, :1] @ q0.reshape(1, -1)
    return torch.linalg.lstsq(x[:, 1:], target).solution.T


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 9), rows=st.integers(1, 4))
def test_one_column_fixed_equals_least_squares(seed: int, n: int, rows: int) -> None:
    x = _inputs(64, n, seed)
    w = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    h, _ = damped_hessian(x.T @ x / 64, damp=0.0)
    u = inverse_cholesky(h)
    q0 = torch.round(w[:, 0] * 3) / 3

    def compress(col):  # fix column 0, leave every other column where the update moved it
        return q0 if col.index == 0 else col.weight

    out, loss = obs_sweep(w, u, compress, block_size=3)
    torch.testing.assert_close(out[:, 0], q0)
    torch.testing.assert_close(out[:, 1:], _lstsq_rest(x, w, q0), rtol=1e-6, atol=1e-8)
    # the loss the sweep reports is the output error it caused (H = 2 X^T X / rows)
    err = ((x @ (w - out).T) ** 2).sum(0) / 64
    torch.testing.assert_close(loss, err, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("block_size", [1, 2, 5, 128])
def test_lazy_blocks_change_nothing(block_size: int) -> None:
    x = _inputs(200, 7, 3)
    w = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    h, _ = damped_hessian(x.T @ x / 200, damp=0.01)
    u = inverse_cholesky(h)
    grid = lambda col: torch.round(col.weight * 2) / 2  # noqa: E731
    ref, _ = obs_sweep(w, u, grid, block_size=7)
    out, _ = obs_sweep(w, u, grid, block_size=block_size)
    torch.testing.assert_close(out, ref)
    assert bool((out * 2 == torch.round(out * 2)).all())


def test_identity_compress_keeps_the_weight_and_lookahead() -> None:
    x = _inputs(50, 6, 5)
    w = torch.randn(3, 6, dtype=torch.float64)
    u = inverse_cholesky(damped_hessian(x.T @ x / 50)[0])
    widths = []

    def keep(col):
        widths.append(col.ahead(4).shape[1])
        return col.weight

    out, loss = obs_sweep(w, u, keep, block_size=2)
    torch.testing.assert_close(out, w)
    assert float(loss.abs().max()) == 0.0
    assert widths == [4, 4, 4, 3, 2, 1]  # columns j .. j+3 across block boundaries


def test_sweep_bad_input() -> None:
    u = torch.eye(3)
    with pytest.raises(ConfigError, match="block_size"):
        obs_sweep(torch.zeros(2, 3), u, lambda c: c.weight, block_size=0)
    with pytest.raises(ShapeError, match="columns"):
        obs_sweep(torch.zeros(2, 4), u, lambda c: c.weight)
    with pytest.raises(ShapeError, match="compress returned"):
        obs_sweep(torch.zeros(2, 3), u, lambda c: c.weight[:1])
