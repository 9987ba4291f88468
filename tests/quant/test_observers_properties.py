"""Properties of every registered observer (hypothesis): the range it gives lies within what it saw
(min/max exactly), and its scales and zero points are usable."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchcompress.quant.observers import OBSERVERS, make_observer

SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw: st.DrawFn, max_groups: int = 3) -> list[torch.Tensor]:
    groups = draw(st.integers(1, max_groups))
    n = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = 10.0 ** draw(st.integers(-3, 2))
    offset = draw(st.sampled_from([0.0, 1.0, -3.0]))
    out = []
    for _ in range(n):
        x = (torch.randn(groups, draw(st.integers(1, 64)), generator=g) + offset) * scale
        if draw(st.booleans()):
            x = x.abs()  # one-sided data (after a ReLU)
        out.append(x)
    return out


#: observers whose search is slow (KL tries every threshold of a 2048-bin histogram, per group)
SLOW = {"kl"}


@pytest.mark.parametrize("name", [n for n in OBSERVERS.names() if n not in SLOW])
@pytest.mark.parametrize("symmetric", [True, False])
@SETTINGS
@given(xs=batches())
def test_ranges_lie_within_what_was_seen(
    name: str, symmetric: bool, xs: list[torch.Tensor]
) -> None:
    _check(name, symmetric, xs)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
@pytest.mark.parametrize("symmetric", [True, False])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(xs=batches(max_groups=1))
def test_slow_observers_ranges(name: str, symmetric: bool, xs: list[torch.Tensor]) -> None:
    _check(name, symmetric, xs)


def _check(name: str, symmetric: bool, xs: list[torch.Tensor]) -> None:
    qmin, qmax = (-128, 127) if symmetric else (0, 255)
    ob = make_observer(name, qmin=qmin, qmax=qmax, symmetric=symmetric)
    for x in xs:
        ob.observe(x)
    seen = torch.cat(xs, 1)
    lo, hi = ob.compute_range()
    tol = 1e-5 * seen.abs().amax(1).clamp(min=1e-30)
    assert bool((lo <= hi).all())
    assert bool((lo >= seen.amin(1) - tol).all()) and bool((hi <= seen.amax(1) + tol).all())
    if name == "minmax":  # contains everything it saw
        assert torch.equal(lo, seen.amin(1)) and torch.equal(hi, seen.amax(1))
    scale, zp = ob.qparams()
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    act = make_observer(name, qmin=0, qmax=255, symmetric=False, include_zero=True)
    for x in xs:
        act.observe(x)
    _, zp = act.qparams()
    assert bool((zp >= 0).all()) and bool((zp <= 255).all())  # zero is representable
