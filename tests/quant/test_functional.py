"""Quantization maths: round trips for every format, zero points, STE, packing."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchcompress.quant import IntSpec
from torchcompress.quant import functional as QF
from torchcompress.quant.observers import make_observer

BITS = [2, 3, 4, 5, 6, 7, 8, 16]
GRANULARITIES = ["tensor", "channel", "group", "token"]


def _qparams_for(
    x2d: torch.Tensor, spec: IntSpec, *, include_zero: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale/zp per row of x2d, and the real range [lo, hi] they must cover."""
    lo, hi = x2d.amin(1), x2d.amax(1)
    s, z = QF.choose_qparams(
        lo, hi, spec.qmin, spec.qmax, symmetric=spec.symmetric, include_zero=include_zero
    )
    if include_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if spec.symmetric and spec.signed:
        a = torch.maximum(lo.abs(), hi.abs())
        lo, hi = -a, a
    return s, z, lo, hi


@pytest.mark.parametrize(
    "bits,signed,symmetric,granularity",
    list(itertools.product(BITS, [True, False], [True, False], GRANULARITIES)),
)
def test_round_trip_error_at_most_half_a_step(
    bits: int, signed: bool, symmetric: bool, granularity: str
) -> None:
    g = torch.Generator().manual_seed(bits * 7 + signed * 3 + symmetric)
    gs = 16 if granularity == "group" else None
    spec = IntSpec(
        bits=bits, signed=signed, symmetric=symmetric, granularity=granularity, group_size=gs
    )
    # rows with different ranges: two-sided, all positive (excludes zero), all negative, one constant
    rows = [
        torch.randn(64, generator=g) * 3,
        torch.rand(64, generator=g) * 5 + 1,
        -torch.rand(64, generator=g) * 2 - 0.5,
        torch.full((64,), 0.75),
    ]
    x = torch.stack(rows)  # [4, 64]
    include_zero = granularity == "token"  # activations widen to include zero
    if granularity == "tensor":
        view = x.reshape(1, -1)
    elif granularity == "group":
        view = x.reshape(-1, gs)
    else:
        view = x
    s, z, lo, hi = _qparams_for(view, spec, include_zero=include_zero)
    assert bool((s > 0).all())
    xq = QF.fake_quantize(view, s[:, None], z[:, None], spec.qmin, spec.qmax)
    err = (xq - view).abs()
    inside = (view >= lo[:, None]) & (view <= hi[:, None])
    bound = s[:, None] / 2 * (1 + 1e-5) + 1e-6 * view.abs()
    assert bool(inside.all())
    assert bool((err <= bound).all()), f"max error {float((err - bound).max())} above half a step"
    # the integer range is used fully: every row reaches an end of [qmin, qmax] (asymmetric rows
    # without widening reach both ends, even when their range excludes zero)
    # (unrounded positions, so a value exactly between two levels counts as reaching the end)
    v = view.double() / s[:, None].double() + z[:, None].double()
    tol = 1e-3 + 1e-6 * (spec.qmax - spec.qmin)  # float32 scales
    top = v.amax(1) >= spec.qmax - 0.5 - tol
    bottom = v.amin(1) <= spec.qmin + 0.5 + tol
    const = view.amax(1) == view.amin(1)
    assert bool((top | bottom | const).all())
    if not symmetric and not include_zero:
        assert bool((top & bottom | const).all())


def test_asymmetric_range_excluding_zero_uses_full_range() -> None:
    x = torch.linspace(1.0, 6.0, 1000)
    s, z = QF.choose_qparams(x.min(), x.max(), 0, 255, symmetric=False)
    assert float(s) == pytest.approx(5.0 / 255)
    assert int(z) < 0  # the zero point lies outside [0, 255]: 1.0 maps to 0, 6.0 to 255
    q = QF.quantize(x, s, z, 0, 255)
    assert int(q.min()) == 0 and int(q.max()) == 255
    err = (QF.dequantize(q, s, z) - x).abs().max()
    assert float(err) <= float(s) / 2 + 1e-6  # the seed's error here was 1.04


def test_unsigned_symmetric_post_relu_uses_all_levels() -> None:
    x = torch.rand(1000) * 6
    s, z = QF.choose_qparams(x.min(), x.max(), 0, 255, symmetric=True)
    assert int(z) == 0
    assert float(s) == pytest.approx(float(x.max()) / 255)
    q = QF.quantize(x, s, z, 0, 255)
    assert int(q.max()) == 255  # not 127 (the seed used half the range)


def test_unsigned_symmetric_two_sided_uses_midpoint() -> None:
    x = torch.tensor([-2.0, 1.0, 2.0])
    s, z = QF.choose_qparams(x.min(), x.max(), 0, 255, symmetric=True)
    assert int(z) == 128
    # 128 levels below the zero point, 127 above: +2 needs the coarser step, and lands on 255
    assert float(s) == pytest.approx(2.0 / 127)
    q = QF.quantize(x, s, z, 0, 255)
    assert q.tolist() == [1.0, 192.0, 255.0]  # neither end clipped


def test_signed_symmetric_scale_uses_both_ends() -> None:
    # the end that needs the coarser step decides: -1 -> qmin exactly
    s, z = QF.choose_qparams(torch.tensor(-1.0), torch.tensor(0.5), -128, 127, symmetric=True)
    assert int(z) == 0 and float(s) == pytest.approx(1.0 / 128)
    assert QF.quantize(torch.tensor([-1.0, 0.5]), s, z, -128, 127).tolist() == [-128.0, 64.0]
    # +1 -> qmax exactly, not clipped half a step (3 bits: [-4, 3])
    s, z = QF.choose_qparams(torch.tensor(-0.5), torch.tensor(1.0), -4, 3, symmetric=True)
    assert float(s) == pytest.approx(1.0 / 3)
    x = torch.tensor([-0.5, 1.0])
    assert torch.allclose(QF.fake_quantize(x, s, z, -4, 3), torch.tensor([-2 / 3, 1.0]))
    # 2 bits ([-2, 1]): one level above zero; the step keeps all four levels (|x|max / 1.5)
    s, z = QF.choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), -2, 1, symmetric=True)
    assert float(s) == pytest.approx(1.0 / 1.5)


def test_zero_range_never_divides_by_zero() -> None:
    for symmetric in (True, False):
        for include_zero in (True, False):
            s, z = QF.choose_qparams(
                torch.zeros(3),
                torch.zeros(3),
                -8,
                7,
                symmetric=symmetric,
                include_zero=include_zero,
            )
            assert bool((s > 0).all()) and bool(torch.isfinite(1 / s).all())
            out = QF.fake_quantize(torch.zeros(3), s, z, -8, 7)
            assert torch.equal(out, torch.zeros(3))
    # constant non-zero group, asymmetric, no zero included: exact at the value
    s, z = QF.choose_qparams(torch.tensor([0.75]), torch.tensor([0.75]), 0, 15, symmetric=False)
    assert float((QF.fake_quantize(torch.tensor([0.75]), s, z, 0, 15) - 0.75).abs()) <= float(s) / 2


def test_fbgemm_dynamic_qparams_match_linear_dynamic() -> None:
    """Our dynamic per-tensor activation parameters are fbgemm's, so the simulation is exact."""
    if (
        "x86" not in torch.backends.quantized.supported_engines
        and "fbgemm" not in torch.backends.quantized.supported_engines
    ):
        pytest.skip("no fbgemm engine")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g) * 0.1
    wq = torch.round(w / 0.01).clamp(-64, 63)
    qw = torch._make_per_tensor_quantized_tensor(wq.to(torch.int8), 0.01, 0)
    packed = torch.ops.quantized.linear_prepack(qw, None)
    for lo, hi in [(-3.0, 2.0), (0.5, 4.0), (-1e-6, 1e-6), (-7.0, -1.0)]:
        x = torch.rand(32, 16, generator=g) * (hi - lo) + lo
        y = torch.ops.quantized.linear_dynamic(x, packed, False)
        s, z = QF.tensor_qparams(x, 0, 255, symmetric=False)
        ref = QF.fake_quantize(x, s, z, 0, 255) @ (wq * 0.01).t()
        assert torch.allclose(y, ref, atol=1e-5), (lo, hi, float((y - ref).abs().max()))


def test_rounding_adds_zero_point_before_rounding() -> None:
    """x/s + zp is rounded as one float32 number, like the int8 kernels do."""
    x = torch.tensor([2.8593056201934814])
    s = torch.tensor([2.8593056201934814 / 40.499996185302734])
    q = QF.quantize(x, s, torch.tensor([123], dtype=torch.int32), 0, 255)
    assert float(q) == float(torch.round(x * (1 / s) + 123))


def test_ste_gradients() -> None:
    x = torch.tensor([-3.0, -0.26, 0.0, 0.74, 3.0], requires_grad=True)
    s = torch.tensor([0.5], requires_grad=True)
    y = QF.fake_quantize(x, s, torch.zeros(1, dtype=torch.int32), -2, 1)  # range [-1, 0.5]
    y.sum().backward()
    # values whose rounded integer falls outside [qmin, qmax] get no gradient
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    # LSQ step gradient: round(x/s) - x/s inside the range, qmin or qmax where clipped
    v = torch.tensor([-3.0, -0.26, 0.0, 0.74, 3.0]) / 0.5
    r = torch.round(v)
    expect = torch.where(
        r < -2, torch.tensor(-2.0), torch.where(r > 1, torch.tensor(1.0), r - v)
    ).sum()
    assert float(s.grad) == pytest.approx(float(expect), abs=1e-5)
    r = torch.tensor([0.4, 1.6], requires_grad=True)
    QF.round_ste(r).sum().backward()
    assert r.grad.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 16])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_unpack_round_trip(bits: int, signed: bool) -> None:
    qmin, qmax = QF.qrange(bits, signed)
    q = torch.randint(qmin, qmax + 1, (1001,))
    packed = QF.pack_int(q, bits, qmin)
    sb = QF.storage_bits(bits)
    assert packed.numel() * packed.element_size() * 8 == pytest.approx(
        (1001 + (8 // sb if sb < 8 else 1) - 1)
        // (8 // sb if sb < 8 else 1)
        * (8 if sb < 8 else sb),
        abs=16,
    )
    assert torch.equal(QF.unpack_int(packed, bits, qmin, 1001), q.to(torch.int32))


def test_packed_sizes() -> None:
    q = torch.zeros(1000, dtype=torch.int32)
    assert QF.pack_int(q, 4, -8).numel() == 500
    assert QF.pack_int(q, 3, -4).numel() == 500
    assert QF.pack_int(q, 2, -2).numel() == 250
    assert QF.pack_int(q, 8, -128).numel() == 1000


def test_group_view_and_fake_quantize_weight() -> None:
    w = torch.randn(6, 32)
    spec = IntSpec(4, granularity="group", group_size=8)
    obs = make_observer("minmax", qmin=spec.qmin, qmax=spec.qmax, symmetric=True, exact=True)
    obs.observe(QF.to_groups(w, "group", 8))
    s, z = obs.qparams()
    s, z = s.reshape(6, 4), z.reshape(6, 4)
    wq = QF.fake_quantize_weight(w, s, z, spec.qmin, spec.qmax, "group", 8)
    err = (wq - w).abs().reshape(6, 4, 8)
    assert bool((err <= s.unsqueeze(-1) / 2 + 1e-6).all())
    with pytest.raises(ValueError, match="does not divide"):
        QF.qparam_shape(6, 30, "group", 8)


def test_token_qparams_per_row() -> None:
    x = torch.stack([torch.linspace(-1, 1, 10), torch.linspace(-10, 10, 10)]).reshape(1, 2, 10)
    s, _ = QF.token_qparams(x, -128, 127, symmetric=True)
    assert s.shape == (1, 2, 1)
    assert float(s[0, 1, 0] / s[0, 0, 0]) == pytest.approx(10.0, rel=1e-5)
