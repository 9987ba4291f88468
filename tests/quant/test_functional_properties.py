"""Properties of the quantization maths over every integer format (hypothesis).

For each :class:`~torchcompress.IntSpec` (2 to 8 and 16 bits, symmetric or not, signed or not, per
tensor, channel or group) and random weights: the integers stay in range, dequantizing is within
half a step of the value, fake quantization is idempotent, and zeros stay exact zeros (what a
pruned layer relies on when it is quantized).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchcompress as tc
from torchcompress.quant.modules import FakeQuantize

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def specs_and_weights(draw: st.DrawFn) -> tuple[tc.IntSpec, torch.Tensor]:
    bits = draw(st.sampled_from([2, 3, 4, 5, 6, 7, 8, 16]))
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    group = draw(st.sampled_from([2, 4, 8])) if granularity == "group" else None
    spec = tc.IntSpec(
        bits,
        symmetric=draw(st.booleans()),
        signed=draw(st.booleans()),
        granularity=granularity,
        group_size=group,
    )
    rows = draw(st.integers(1, 4))
    cols = (group or 1) * draw(st.integers(1, 4)) * draw(st.sampled_from([1, 2]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = 10.0 ** draw(st.integers(-4, 3))
    offset = draw(st.sampled_from([0.0, 0.5, -2.0]))
    w = (torch.randn(rows, cols, generator=g) + offset) * scale
    # zeros (a pruning mask), and sometimes a constant row (a zero-range group)
    w[torch.rand(rows, cols, generator=g) < 0.3] = 0.0
    if draw(st.booleans()):
        w[0] = 0.0
    return spec, w


def _quantizer(spec: tc.IntSpec, w: torch.Tensor) -> FakeQuantize:
    fq = FakeQuantize(spec, role="weight", shape=tuple(w.shape))
    fq.observe(w)
    fq.calibrate()
    return fq


@SETTINGS
@given(specs_and_weights())
def test_integers_in_range_error_within_half_a_step_and_zeros_exact(case) -> None:
    spec, w = case
    fq = _quantizer(spec, w)
    assert bool(torch.isfinite(fq.scale).all()) and bool((fq.scale > 0).all())
    q = tc.quant.functional.quantize_weight(
        w, fq.scale, fq.zero_point, fq.quant_min, fq.quant_max, fq.granularity, fq.group_size
    )
    assert bool((q == q.round()).all())
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    y = fq(w)
    step = tc.quant.functional.dequantize_weight(
        torch.ones_like(w), fq.scale, torch.zeros_like(fq.zero_point), fq.granularity, fq.group_size
    )
    assert bool(((y - w).abs() <= step / 2 * (1 + 1e-4) + 1e-30).all())
    assert bool((y[w == 0] == 0).all()), "a zero weight must stay an exact zero"


@SETTINGS
@given(specs_and_weights())
def test_fake_quantization_is_idempotent(case) -> None:
    spec, w = case
    fq = _quantizer(spec, w)
    once = fq(w)
    assert torch.equal(fq(once), once)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_dynamic_activation_ranges_keep_zero_exact(bits: int) -> None:
    spec = tc.IntSpec(bits, symmetric=False, signed=False)
    fq = FakeQuantize(spec, role="activation", dynamic=True)
    x = torch.randn(4, 16) * 3
    x[:, ::3] = 0
    y = fq(x)
    assert bool((y[x == 0] == 0).all())
