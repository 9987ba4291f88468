"""k-means codebook quantization."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError
from torchcompress.quant import KMeansLayer
from torchcompress.quant.kmeans import kmeans_1d

from .test_ptq import mlp


def test_kmeans_1d_hand_computed() -> None:
    x = torch.tensor([0.0, 0.2, 0.4, 10.0, 10.2, 20.0])
    c, lab = kmeans_1d(x, 3, init="linear")
    assert c.tolist() == pytest.approx([0.2, 10.1, 20.0], abs=1e-6)
    assert lab.tolist() == [0, 0, 0, 1, 1, 2]
    c2, _ = kmeans_1d(x, 3, init="kmeans++", seed=3)
    assert c2.tolist() == pytest.approx([0.2, 10.1, 20.0], abs=1e-6)


def test_kmeans_1d_weighted_pulls_centroids() -> None:
    x = torch.tensor([0.0, 1.0, 5.0])
    c, _ = kmeans_1d(x, 2, weights=torch.tensor([1.0, 3.0, 1.0]), init="linear")
    assert c[0] == pytest.approx(0.75)  # (0*1 + 1*3) / 4


def test_kmeans_1d_fewer_values_than_centroids() -> None:
    c, lab = kmeans_1d(torch.tensor([1.0, 1.0, 2.0]), 4)
    assert c.tolist()[:2] == [1.0, 2.0] and lab.tolist() == [0, 0, 1]


def test_kmeans_beats_uniform_on_gaussian_weights() -> None:
    w = torch.randn(20000)
    c, lab = kmeans_1d(w, 16)
    err_km = ((c[lab] - w) ** 2).mean()
    s = w.abs().max() / 7.5
    err_u = ((torch.clamp(torch.round(w / s), -8, 7) * s - w) ** 2).mean()
    assert err_km < 0.6 * err_u


def test_kmeans_quantize_model() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    x = torch.randn(2, 3, 6, 6)
    k = tc.kmeans_quantize(copy.deepcopy(m), bits=4)
    assert all(isinstance(k[i], KMeansLayer) for i in (0, 3))
    assert k[0].weight.unique().numel() <= 16
    assert k[3].indices.numel() == 2 * 64 // 2  # two 4-bit indices per byte
    assert torch.allclose(k(x), m(x), atol=0.2)
    assert "codebook" in repr(k[0])
    kw = tc.kmeans_quantize(copy.deepcopy(m), bits=2, weighted=True, calib_data=[x])
    assert kw[0].codebook.numel() == 4
    km = tc.kmeans_quantize(copy.deepcopy(m), bits=2, weighted="magnitude")
    assert km[3].weight.unique().numel() <= 4


def test_activation_weighting_lowers_output_error() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    scales = torch.ones(64)
    scales[:4] = 20.0  # a few loud input features: their weights matter most
    data = [torch.randn(128, 64) * scales for _ in range(2)]
    x = torch.randn(256, 64) * scales
    plain = tc.kmeans_quantize(nn.Sequential(copy.deepcopy(lin)), bits=2)
    weighted = tc.kmeans_quantize(
        nn.Sequential(copy.deepcopy(lin)), bits=2, weighted=True, calib_data=data
    )
    ref = lin(x)
    e_plain = (plain(x) - ref).pow(2).mean()
    e_weighted = (weighted(x) - ref).pow(2).mean()
    assert e_weighted < e_plain


def test_kmeans_errors() -> None:
    with pytest.raises(ConfigError):
        tc.kmeans_quantize(mlp(), bits=9)
    with pytest.raises(DataError):
        tc.kmeans_quantize(mlp(), bits=4, weighted=True)
    with pytest.raises(ConfigError):
        tc.kmeans_quantize(mlp(), bits=4, weighted="hessian")
