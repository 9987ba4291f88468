"""The factorized layers: exactness at full rank, merge, grouped convs, bias, dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.layers import geometry
from torchcompress.lowrank import LowRankConv1d, LowRankConv2d, LowRankLinear
from torchcompress.lowrank import functional as F
from torchcompress.lowrank.modules import build_lowrank, dense_matrices


def _full_rank(dense: nn.Module):
    W = dense_matrices(dense)
    first, second = F.truncated_svd(W.double(), min(W.shape[-2:]))
    return build_lowrank(dense, first, second)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank_is_exact_and_merges(bias: bool) -> None:
    torch.manual_seed(0)
    dense = nn.Linear(20, 12, bias=bias)
    lr = _full_rank(dense)
    assert isinstance(lr, LowRankLinear) and lr.rank == 12
    x = torch.randn(3, 5, 20)
    torch.testing.assert_close(lr(x), dense(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lr.weight, dense.weight, rtol=1e-5, atol=1e-5)
    merged = lr.merge()
    assert type(merged) is nn.Linear and (merged.bias is None) == (not bias)
    torch.testing.assert_close(merged(x), lr(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in lr.parameters()) == 12 * 32 + (12 if bias else 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2, "bias": False},
        {"kernel_size": (1, 3), "padding": "same", "padding_mode": "reflect"},
        {"kernel_size": 3, "padding": 1, "groups": 4},
    ],
)
def test_conv2d_full_rank_is_exact_and_merges(kwargs: dict) -> None:
    torch.manual_seed(0)
    dense = nn.Conv2d(8, 12, **kwargs)
    lr = _full_rank(dense)
    assert isinstance(lr, LowRankConv2d)
    assert lr.groups == dense.groups and lr.first.stride == dense.stride
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(lr(x), dense(x), rtol=1e-4, atol=1e-5)
    merged = lr.merge()
    assert type(merged) is nn.Conv2d
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(merged, attr) == getattr(dense, attr)
    torch.testing.assert_close(merged.weight, dense.weight, rtol=1e-4, atol=1e-5)


def test_grouped_conv_is_factorized_per_group() -> None:
    torch.manual_seed(0)
    dense = nn.Conv2d(8, 12, 3, padding=1, groups=2)
    lr = LowRankConv2d.from_dense(dense, rank=3)
    # each group's block is its own best rank-3 approximation
    W = dense_matrices(dense)
    approx = lr.dense_matrix().detach()
    for g in range(2):
        s = torch.linalg.svdvals(W[g])
        err = torch.linalg.matrix_norm(W[g] - approx[g]) ** 2
        assert float(err) == pytest.approx(float((s[3:] ** 2).sum()), rel=1e-3)
    # no cross-group weights exist: the first conv is grouped, the second too
    assert lr.first.groups == 2 and lr.second.groups == 2
    assert lr.first.out_channels == 6
    geo = geometry(dense)
    assert sum(p.numel() for p in lr.parameters()) == F.params_at(geo, 3)


def test_conv1d_factorization() -> None:
    torch.manual_seed(0)
    dense = nn.Conv1d(6, 10, 5, stride=2, padding=2)
    lr = _full_rank(dense)
    assert isinstance(lr, LowRankConv1d)
    x = torch.randn(2, 6, 30)
    torch.testing.assert_close(lr(x), dense(x), rtol=1e-4, atol=1e-5)
    assert type(lr.merge()) is nn.Conv1d


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_factors_keep_dtype(dtype: torch.dtype) -> None:
    dense = nn.Linear(16, 16).to(dtype)
    lr = LowRankLinear.from_dense(dense, 8)
    assert all(p.dtype == dtype for p in lr.parameters())
    assert lr(torch.randn(2, 16, dtype=dtype)).dtype == dtype
    assert lr.merge().weight.dtype == dtype


def test_with_factors_changes_rank_only() -> None:
    torch.manual_seed(0)
    lr = LowRankConv2d.from_dense(nn.Conv2d(4, 6, 3, padding=1, groups=2), rank=2)
    first, second = lr.factors()
    smaller = lr.with_factors(first[:, :1], second[:, :, :1])
    assert smaller.rank == 1 and smaller.groups == 2 and smaller.padding == lr.padding
    torch.testing.assert_close(smaller.bias, lr.bias)
    x = torch.randn(1, 4, 5, 5)
    assert smaller(x).shape == lr(x).shape


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(4, 4, 0)
    with pytest.raises(ValueError, match="groups"):
        LowRankConv2d(6, 4, 3, rank=1, groups=4)
    with pytest.raises(TypeError):
        geometry(nn.LayerNorm(4))
