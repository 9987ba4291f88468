"""The pure maths: truncated SVD (Eckart-Young), costs, whitening, ASVD scaling, conv patches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.errors import NumericalError
from torchcompress.lowrank import functional as F


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (300, 400)])  # the last takes the Gram route
@pytest.mark.parametrize("driver", ["lapack", "gram"])
def test_truncated_svd_meets_eckart_young(shape: tuple[int, int], driver: str) -> None:
    torch.manual_seed(0)
    W = torch.randn(*shape, dtype=torch.float64)
    s = torch.linalg.svdvals(W)
    for r in (1, 7, min(shape) - 1):
        U, sv, Vh = F.svd(W, driver=driver)
        first, second = F.split_factors(U, sv, Vh, r)
        R = W - second @ first
        # Frobenius error is exactly the discarded energy, spectral error the next singular value
        assert torch.linalg.matrix_norm(R) ** 2 == pytest.approx(
            float((s[r:] ** 2).sum()), rel=1e-8
        )
        assert torch.linalg.matrix_norm(R, ord=2) == pytest.approx(float(s[r]), rel=1e-8)
    # and no other rank-r matrix does better (random rank-r competitors)
    r = 5
    first, second = F.truncated_svd(W, r)
    best = torch.linalg.matrix_norm(W - second @ first)
    for _ in range(5):
        A = torch.randn(shape[0], r, dtype=W.dtype)
        # the best matrix with the competitor's column space: project W onto it
        Q, _ = torch.linalg.qr(A)
        assert torch.linalg.matrix_norm(W - Q @ (Q.T @ W)) > best


def test_factors_share_the_singular_values_evenly() -> None:
    torch.manual_seed(0)
    W = torch.randn(40, 30)
    first, second = F.truncated_svd(W, 10)
    s = torch.linalg.svdvals(W)[:10]
    torch.testing.assert_close(first.norm(dim=1), s.sqrt(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second.norm(dim=0), s.sqrt(), rtol=1e-4, atol=1e-5)


def test_truncated_svd_rejects_bad_rank_and_nan() -> None:
    with pytest.raises(ValueError, match="rank=9"):
        F.truncated_svd(torch.randn(8, 4), 9)
    with pytest.raises(NumericalError):
        F.svd(torch.full((4, 4), float("nan")))


def test_batched_gram_svd_matches_lapack() -> None:
    torch.manual_seed(0)
    W = torch.randn(3, 120, 700)
    s1 = F.svd(W, driver="gram")[1]
    s2 = F.svd(W, driver="lapack")[1]
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(F.svdvals(W), s2, rtol=1e-5, atol=1e-4)


def test_gram_svd_handles_rank_deficient_matrices() -> None:
    torch.manual_seed(0)
    W = torch.randn(200, 3) @ torch.randn(3, 400)  # rank 3
    U, s, Vh = F.svd(W, driver="gram")
    assert torch.isfinite(U).all() and torch.isfinite(Vh).all()
    first, second = F.split_factors(U, s, Vh, 10)  # above the numerical rank
    torch.testing.assert_close(second @ first, W, rtol=1e-4, atol=1e-4)


def test_costs_and_break_even() -> None:
    assert F.dense_params(64, 32, bias=True) == 64 * 32 + 64
    assert F.factorized_params(64, 32, 8, bias=True) == 8 * 96 + 64
    assert F.factorized_params(16, 72, 4, groups=2) == 2 * 4 * 88
    # square: half rank saves nothing; r = n/2 - 1 is the last rank that does
    assert F.break_even_rank(64, 64) == 31
    assert 31 * 128 < 64 * 64 <= 32 * 128
    assert F.break_even_rank(10, 256) == 9
    assert F.break_even_rank(1, 9) == 0  # depthwise 3x3: never cheaper
    for m, n in [(64, 64), (100, 37), (512, 4608)]:
        r = F.break_even_rank(m, n)
        assert r * (m + n) < m * n <= (r + 1) * (m + n)


@pytest.mark.parametrize("ratio", [0.1, 0.33, 0.5, 0.8])
@pytest.mark.parametrize("bias", [False, True])
def test_rank_for_ratio_is_the_largest_rank_within_the_ratio(ratio: float, bias: bool) -> None:
    m, n, g = 96, 200, 2
    r = F.rank_for_ratio(m, n, ratio, g, bias)
    dense = F.dense_params(m, n, g, bias)
    assert F.factorized_params(m, n, r, g, bias) <= ratio * dense
    assert F.factorized_params(m, n, r + 1, g, bias) > ratio * dense


def test_energy_rules() -> None:
    s = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert F.energy_kept(s, 1) == pytest.approx(9 / 14)
    assert F.rank_for_energy(s, 9 / 14) == 1
    assert F.rank_for_energy(s, 0.65) == 2
    assert F.rank_for_energy(s, 1.0) == 3
    grouped = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    assert F.energy_kept(grouped, 1) == pytest.approx(0.8)


def test_whitening_factor_and_inverse() -> None:
    torch.manual_seed(0)
    X = torch.randn(500, 12, dtype=torch.float64) @ torch.randn(12, 12, dtype=torch.float64)
    H = X.T @ X / 500
    wh = F.whitening(H, damping=1e-6)
    assert wh.kind == "cholesky"
    S = wh.factor[0]
    damped = H + 1e-6 * H.diagonal().mean() * torch.eye(12, dtype=H.dtype)
    torch.testing.assert_close(S @ S.T, damped)
    A = torch.randn(1, 5, 12, dtype=torch.float64)  # factors are per group: (groups, r, n)
    torch.testing.assert_close(wh.unright(wh.right(A)), A)


def test_whitening_falls_back_to_eigh_on_an_indefinite_moment() -> None:
    H = torch.diag(torch.tensor([10.0, 5.0, -1.0], dtype=torch.float64))  # round-off gone wild
    wh = F.whitening(H, damping=1e-3, tries=2)
    assert wh.kind == "eigh"
    A = torch.randn(1, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(wh.unright(wh.right(A)), A)
    assert torch.isfinite(wh.factor).all()


def test_whitening_of_dead_inputs_is_identity_like() -> None:
    wh = F.whitening(torch.zeros(2, 4, 4))
    A = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(wh.right(A) / wh.factor[0, 0, 0], A)


def test_whitening_rejects_nan() -> None:
    with pytest.raises(NumericalError):
        F.whitening(torch.full((3, 3), float("inf")))


def test_asvd_scaling_floors_dead_features() -> None:
    sc = F.asvd_scaling(torch.tensor([[4.0, 1.0, 0.0]]), alpha=0.5)
    torch.testing.assert_close(sc.scale, torch.tensor([[2.0, 1.0, 2e-4]], dtype=torch.float64))
    A = torch.randn(1, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(sc.unright(sc.right(A)), A)


def test_singular_value_threshold() -> None:
    torch.manual_seed(0)
    W = torch.randn(20, 10, dtype=torch.float64)
    s = torch.linalg.svdvals(W)
    out = F.singular_value_threshold(W, float(s[3]))
    torch.testing.assert_close(torch.linalg.svdvals(out)[:3], s[:3] - s[3])
    assert torch.linalg.matrix_rank(out) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2},
        {"kernel_size": (3, 5), "padding": "same", "dilation": (2, 1)},
        {"kernel_size": 4, "padding": "valid", "stride": (1, 2)},
        {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
        {"kernel_size": 3, "padding": 1, "padding_mode": "circular"},
        {"kernel_size": 3, "padding": 1, "groups": 3},
    ],
)
def test_conv_patches_reproduce_the_convolution(kwargs: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 9, bias=False, **kwargs).double()
    x = torch.randn(2, 6, 11, 13, dtype=torch.float64)
    y = conv(x)
    rows = F.conv_patches(x, conv)  # (N*L, C*K)
    g = conv.groups
    W = F.weight_matrix(conv.weight, g)  # (g, m, n)
    per_group = rows.reshape(rows.shape[0], g, -1).transpose(0, 1) @ W.transpose(1, 2)  # (g, R, m)
    out = per_group.transpose(0, 1).reshape(2, -1, 9)  # (N, L, out)
    torch.testing.assert_close(out.transpose(1, 2).reshape(y.shape), y)


def test_conv1d_patches() -> None:
    torch.manual_seed(0)
    conv = nn.Conv1d(4, 5, 3, stride=2, padding=2, dilation=2, bias=False).double()
    x = torch.randn(3, 4, 17, dtype=torch.float64)
    y = conv(x)
    rows = F.conv_patches(x, conv)
    out = (rows @ conv.weight.reshape(5, -1).T).reshape(3, -1, 5).transpose(1, 2)
    torch.testing.assert_close(out, y)
