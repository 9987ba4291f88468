"""Properties of the low-rank maths (hypothesis): truncation error equals Eckart-Young's optimum, and
a factorized layer's counted MACs equal those of its two factors run as plain layers."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchcompress as tc
from torchcompress.lowrank import functional as F

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def matrices(draw: st.DrawFn) -> tuple[torch.Tensor, int]:
    m, n = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    w = torch.randn(m, n, generator=g, dtype=torch.float64) * 10.0 ** draw(st.integers(-3, 3))
    if draw(st.booleans()):  # low rank plus noise: a spectrum with a gap
        k = draw(st.integers(1, min(m, n)))
        w = (
            torch.randn(m, k, generator=g, dtype=torch.float64)
            @ torch.randn(k, n, generator=g, dtype=torch.float64)
            + 1e-3 * w
        )
    return w, draw(st.integers(1, min(m, n)))


@SETTINGS
@given(matrices())
def test_truncation_error_is_eckart_young(case) -> None:
    w, r = case
    first, second = F.truncated_svd(w, r)
    assert first.shape == (r, w.shape[1]) and second.shape == (w.shape[0], r)
    err = w - second @ first
    s = torch.linalg.svdvals(w)
    scale = float(s[0]) if s.numel() else 1.0
    # Frobenius: the energy of the dropped singular values; spectral: the first dropped one
    torch.testing.assert_close(
        err.pow(2).sum(), s[r:].pow(2).sum(), rtol=1e-6, atol=1e-9 * scale**2
    )
    spectral = torch.linalg.matrix_norm(err, ord=2) if err.numel() else torch.tensor(0.0)
    dropped = s[r] if r < s.numel() else torch.tensor(0.0, dtype=s.dtype)
    torch.testing.assert_close(spectral, dropped, rtol=1e-6, atol=1e-9 * scale)
    assert abs(F.energy_kept(s, r) - float(s[:r].pow(2).sum() / s.pow(2).sum())) < 1e-9


@st.composite
def layers(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        n, m = draw(st.integers(2, 16)), draw(st.integers(2, 16))
        shape = (draw(st.integers(1, 3)),) * draw(st.integers(0, 2))
        return nn.Linear(n, m).double(), torch.randn(*shape, 2, n, dtype=torch.float64)
    dims = draw(st.sampled_from([1, 2]))
    groups = draw(st.integers(1, 2))
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(
        groups * draw(st.integers(1, 3)),
        groups * draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
        stride=draw(st.integers(1, 2)),
        padding=draw(st.integers(0, 1)),
        groups=groups,
        bias=draw(st.booleans()),
    ).double()
    return conv, torch.randn(
        2, conv.in_channels, *[draw(st.integers(3, 6))] * dims, dtype=torch.float64
    )


@SETTINGS
@given(layers(), st.integers(1, 8))
def test_factorized_macs_equal_the_factors_counted_as_plain_layers(case, rank: int) -> None:
    dense, x = case
    geo = tc.layers.geometry(dense)
    rank = min(rank, F.full_rank(geo))
    lr = tc.lowrank.modules.build_lowrank(dense, *F.truncated_svd(geo.matrices(dense.weight), rank))
    counted = tc.profile(nn.Sequential(lr), x)
    plain = tc.profile(nn.Sequential(lr.first, lr.second), x)  # the profiler's plain-layer formulas
    assert counted.total_macs == plain.total_macs
    assert counted["0"].params == plain.total_params == F.params_at(geo, rank)
    y = lr(x)
    assert counted.total_macs == geo.output_positions(y) * F.macs_per_position(geo, rank)
