"""Pure tensor maths of integer quantization: ranges to scales and zero points, (fake) quantization,
granularity views, the straight-through rounding estimator, bit packing, and the uint8 activations
of the integer model.

Everything here is tensor in, tensor out, with no module state. Conventions:

- ``q = clamp(round(x * (1 / scale) + zero_point), qmin, qmax)`` and ``x̂ = (q - zero_point) * scale``,
  computed in float32 with round-half-to-even, which is bit for bit how the fbgemm/oneDNN kernels
  quantize their inputs (the zero point is added before rounding).
- Weights are seen in a canonical 2-D layout ``[rows, cols]`` (output channels by flattened inputs);
  their scales have shape ``[1]`` (tensor), ``[rows]`` (channel) or ``[rows, cols // group_size]``
  (group). Activation scales are ``[1]`` (tensor) or one per token (``[..., 1]``).
- A scale is never zero: scales are floored at :data:`SCALE_EPS` (weights) or follow fbgemm's rule
  (activations: a zero range gets scale 0.1, tiny scales are raised to :data:`ACT_MIN_SCALE`).

Example:
    >>> import torch
    >>> from torchcompress.quant import functional as QF
    >>> x = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    >>> s, z = QF.choose_qparams(x.min(), x.max(), 0, 255, symmetric=False)
    >>> xq = QF.fake_quantize(x, s, z, 0, 255)
    >>> bool(((xq - x).abs() <= s / 2 + 1e-7).all())
    True
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .granularity import granularity as _gran

__all__ = [
    "ACT_MIN_SCALE",
    "SCALE_EPS",
    "choose_qparams",
    "dequantize",
    "dequantize_u8",
    "dequantize_weight",
    "dynamic_qparams",
    "expand_qparams",
    "fake_quantize",
    "fake_quantize_weight",
    "pack_int",
    "qparam_shape",
    "qrange",
    "quantize",
    "quantize_u8",
    "quantize_weight",
    "round_ste",
    "storage_bits",
    "symmetric_scale",
    "tensor_qparams",
    "to_groups",
    "token_qparams",
    "unpack_int",
    "weight_in_range",
]

#: Smallest weight scale (a zero range never makes a zero scale).
SCALE_EPS = 1e-12
#: fbgemm's ``SMALL_SCALE_THRESHOLD``: activation scales below it are raised to it (and the range
#: widened accordingly), exactly as the dynamic int8 kernels do.
ACT_MIN_SCALE = 6.1e-5
_MAX_ZERO_POINT = 2**22  # keep x / scale + zero_point exact in float32


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """The full integer range of ``bits`` (signed: ``[-2^(b-1), 2^(b-1)-1]``, unsigned: ``[0, 2^b-1]``)."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    """Round to nearest (half to even) with a straight-through gradient (Bengio et al. 2013)."""
    return _RoundSTE.apply(x)


def symmetric_scale(lo: Tensor, hi: Tensor, below: int, above: int) -> Tensor:
    """The finest zero-point-centred scale whose grid still holds ``[lo, hi]``.

    With ``below`` levels under the zero point and ``above`` over it (``-qmin`` and ``qmax`` for
    a signed format: 128 and 127 at 8 bits, 4 and 3 at 3 bits), the scale is
    ``max(|min(lo, 0)| / below, max(hi, 0) / above)``: the end of the range that needs the coarser
    step decides, so neither end is clipped. (Dividing ``max(|lo|, |hi|)`` by ``(qmax - qmin) / 2``,
    torch's convention, clips a positive maximum by half a step, which at low bits and small
    groups shrinks the largest weight of every group: 3-bit weights in groups of 16 lose most of a
    ResNet's accuracy that way.) The exception is a format with a single level above zero (2-bit
    signed), where that rule would leave only three levels: there the step is
    ``max(|lo|, |hi|) / 1.5``, which keeps all four (measured: 2-bit QAT of a ResNet-20 on digits
    reaches 0.8 with it and 0.6 without).
    """
    if above < 2:
        # One level above zero (2-bit signed): clipping neither end would leave three levels,
        # {-s, 0, s}, for symmetric data. Keep all four: the range's half-width over 1.5 levels.
        amax = torch.maximum((-lo).clamp(min=0.0), hi.clamp(min=0.0))
        return amax / ((below + above) / 2)
    neg = (-lo).clamp(min=0.0) / float(below)
    pos = hi.clamp(min=0.0) / float(above)
    return torch.maximum(neg, pos)


def choose_qparams(
    lo: Tensor | float,
    hi: Tensor | float,
    qmin: int,
    qmax: int,
    *,
    symmetric: bool,
    include_zero: bool = False,
) -> tuple[Tensor, Tensor]:
    """Scale (float32) and zero point (int32) mapping the real range ``[lo, hi]`` onto ``[qmin, qmax]``.

    Works elementwise on tensors of per-group ranges. See :class:`~torchcompress.quant.IntSpec` for
    the mapping; in short, every format uses the whole integer range:

    - symmetric, signed (``qmin < 0``): zero point 0 and ``scale = max(|lo| / -qmin, hi / qmax)``
      (:func:`symmetric_scale`: the finest step that clips neither end);
    - symmetric, unsigned: ``scale = hi / (qmax - qmin)`` and zero point ``qmin`` for one-sided data
      (``lo >= 0``), else a mid-range zero point;
    - asymmetric: ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = qmin - round(lo / scale)``;
      with ``include_zero`` the range is first widened to contain 0 and the computation follows
      fbgemm's ``ChooseQuantizationParams`` exactly (so a simulation matches the dynamic kernels;
      for formats of at most 8 bits this includes its floor of :data:`ACT_MIN_SCALE` on scales).
      Without it a range that excludes zero keeps its full resolution and the zero point may fall
      outside ``[qmin, qmax]``.

    Args:
        lo: lower end(s) of the real range.
        hi: upper end(s) of the real range.
        qmin: smallest integer.
        qmax: largest integer.
        symmetric: symmetric mapping (zero point fixed).
        include_zero: widen ``[lo, hi]`` to contain zero (activations; what integer kernels need).

    Returns:
        ``(scale, zero_point)`` with the broadcast shape of ``lo`` and ``hi``.
    """
    lo_t = torch.as_tensor(lo).detach().double()
    hi_t = torch.as_tensor(hi).detach().double()
    lo_t, hi_t = torch.broadcast_tensors(lo_t, hi_t)
    hi_t = torch.maximum(hi_t, lo_t)
    span = float(qmax - qmin)
    if include_zero:
        lo_t = lo_t.clamp(max=0.0)
        hi_t = hi_t.clamp(min=0.0)
    if symmetric:
        if qmin < 0:
            scale = symmetric_scale(lo_t, hi_t, -qmin, qmax)
            zp = torch.zeros_like(scale)
        else:
            one_sided = lo_t >= 0
            mid = (qmin + qmax + 1) // 2
            scale = torch.where(
                one_sided, hi_t / span, symmetric_scale(lo_t, hi_t, mid - qmin, qmax - mid)
            )
            zp = torch.where(
                one_sided,
                torch.full_like(scale, float(qmin)),
                torch.full_like(scale, float(mid)),
            )
        act_floor = ACT_MIN_SCALE if span <= 255 else SCALE_EPS
        scale = scale.float().clamp(min=act_floor if include_zero else SCALE_EPS)
        return scale, zp.to(torch.int32)
    if include_zero:
        return _fbgemm_qparams(
            lo_t, hi_t, qmin, qmax, min_scale=ACT_MIN_SCALE if span <= 255 else SCALE_EPS
        )
    scale = ((hi_t - lo_t) / span).float().clamp(min=SCALE_EPS)
    s64 = scale.double()
    zp = qmin - torch.round(lo_t / s64)
    # A degenerate range (lo == hi) or one far from zero would need an enormous zero point; widen
    # those groups to include zero instead (still exact at both ends, never a huge offset).
    bad = (zp.abs() > _MAX_ZERO_POINT) | (
        (hi_t - lo_t) <= 1e-7 * torch.maximum(lo_t.abs(), hi_t.abs())
    )
    if bool(bad.any()):
        s2, z2 = _fbgemm_qparams(lo_t, hi_t, qmin, qmax, min_scale=SCALE_EPS)
        scale = torch.where(bad, s2, scale)
        zp = torch.where(bad, z2.double(), zp)
    return scale, zp.to(torch.int32)


def _fbgemm_qparams(
    lo: Tensor, hi: Tensor, qmin: int, qmax: int, *, min_scale: float = ACT_MIN_SCALE
) -> tuple[Tensor, Tensor]:
    """fbgemm's ChooseQuantizationParams (range widened to include 0), vectorised, in float64."""
    lo = lo.clamp(max=0.0)
    hi = hi.clamp(min=0.0)
    span = float(qmax - qmin)
    scale = (hi - lo) / span
    s32 = scale.float()
    scale = torch.where((s32 == 0) | torch.isinf(1.0 / s32), torch.full_like(scale, 0.1), scale)
    small = scale < min_scale
    if bool(small.any()):
        amp = min_scale / scale.clamp(min=1e-300)
        new_hi = torch.where(lo == 0, torch.full_like(hi, min_scale * span), hi * amp)
        new_lo = torch.where(
            lo == 0,
            lo,
            torch.where(hi == 0, torch.full_like(lo, -min_scale * span), lo * amp),
        )
        lo = torch.where(small, new_lo, lo)
        hi = torch.where(small, new_hi, hi)
        scale = torch.where(small, torch.full_like(scale, min_scale), scale)
    scale = scale.float().double()  # the float32 value the kernels use
    zp_min = qmin - lo / scale
    zp_max = qmax - hi / scale
    err_min = abs(qmin) - (lo / scale).abs()
    err_max = abs(qmax) - (hi / scale).abs()
    zp = torch.where(err_min < err_max, zp_min, zp_max)
    zp = torch.round(zp).clamp(qmin, qmax)
    return scale.float(), zp.to(torch.int32)


def quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Integers ``clamp(round(x / scale + zero_point), qmin, qmax)`` (``scale``/``zero_point`` broadcast).

    Args:
        x: the real values.
        scale: float scales, broadcastable to ``x``.
        zero_point: integer zero points, broadcastable to ``x``.
        qmin: smallest integer.
        qmax: largest integer.
        dtype: the integer dtype of the result (default: float32 holding integer values).
    """
    inv = 1.0 / scale.float()
    q = torch.round(x.float() * inv + zero_point.float()).clamp_(qmin, qmax)
    return q if dtype is None else q.to(dtype)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Real values ``(q - zero_point) * scale`` in float32."""
    return (q.float() - zero_point.float()) * scale.float()


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Quantize then dequantize, in ``x``'s dtype, with straight-through gradients.

    The gradient with respect to ``x`` is 1 inside the range and 0 where values are clipped; the
    gradient with respect to a floating ``scale`` is the LSQ step-size gradient (Esser et al. 2020,
    without its gradient scale, which a learnable-scale module applies itself).
    """
    xf = x.float()
    s = scale.float() if scale.dtype != torch.float32 else scale
    z = zero_point.float() if zero_point.dtype != torch.float32 else zero_point
    q = round_ste(xf * (1.0 / s) + z)
    q = torch.clamp(q, qmin, qmax)
    out = (q - z) * s
    return out if x.dtype == torch.float32 else out.to(x.dtype)


# --- granularity ---------------------------------------------------------------------------
# (the per-granularity logic lives in :mod:`~torchcompress.quant.granularity`)


def qparam_shape(rows: int, cols: int, granularity: str, group_size: int | None) -> tuple[int, ...]:
    """Shape of the scales of a ``[rows, cols]`` weight at ``granularity``."""
    return _gran(granularity).qparam_shape(rows, cols, group_size)


def to_groups(w2d: Tensor, granularity: str, group_size: int | None = None) -> Tensor:
    """A ``[groups, elements]`` view of a ``[rows, cols]`` weight (one row per scale)."""
    return _gran(granularity).to_groups(w2d, group_size)


def expand_qparams(p: Tensor, granularity: str) -> Tensor:
    """Reshape stored scales/zero points so they broadcast against the grouped weight view.

    ``tensor``: ``[1] -> [1, 1]``; ``channel``: ``[rows] -> [rows, 1]``; ``group``:
    ``[rows, ng] -> [rows, ng, 1]`` (against the weight viewed as ``[rows, ng, group_size]``).
    """
    return _gran(granularity).expand(p)


def _per_weight_group(
    fn: Callable[..., Tensor],
    w2d: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    granularity: str,
    group_size: int | None,
    *args: int,
) -> Tensor:
    """``fn(w, s, z, *args)`` on a ``[rows, cols]`` weight with tensor/channel/group parameters."""
    g = _gran(granularity)
    out = fn(g.grouped(w2d, group_size), g.expand(scale), g.expand(zero_point), *args)
    return out.reshape(w2d.shape)


def fake_quantize_weight(
    w2d: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    granularity: str,
    group_size: int | None = None,
) -> Tensor:
    """:func:`fake_quantize` of a ``[rows, cols]`` weight with tensor/channel/group scales."""
    return _per_weight_group(
        fake_quantize, w2d, scale, zero_point, granularity, group_size, qmin, qmax
    )


def quantize_weight(
    w2d: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    granularity: str,
    group_size: int | None = None,
) -> Tensor:
    """:func:`quantize` of a ``[rows, cols]`` weight (float32 integer values, same shape)."""
    return _per_weight_group(quantize, w2d, scale, zero_point, granularity, group_size, qmin, qmax)


def dequantize_weight(
    q2d: Tensor, scale: Tensor, zero_point: Tensor, granularity: str, group_size: int | None = None
) -> Tensor:
    """:func:`dequantize` of a ``[rows, cols]`` integer weight."""
    return _per_weight_group(dequantize, q2d, scale, zero_point, granularity, group_size)


def weight_in_range(
    w2d: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    granularity: str,
    group_size: int | None = None,
) -> Tensor:
    """Where ``round(w / scale + zero_point)`` lies inside ``[qmin, qmax]`` (bool, ``w2d``'s shape)."""

    def inside(w: Tensor, s: Tensor, z: Tensor, lo: int, hi: int) -> Tensor:
        v = torch.round(w.float() * (1.0 / s.float()) + z.float())
        return (v >= lo) & (v <= hi)

    return _per_weight_group(inside, w2d, scale, zero_point, granularity, group_size, qmin, qmax)


def dynamic_qparams(
    x: Tensor, granularity: str, qmin: int, qmax: int, *, symmetric: bool
) -> tuple[Tensor, Tensor]:
    """Scales and zero points a dynamic activation quantizer computes from ``x`` at run time.

    ``"tensor"``: one scale from the min/max of ``x`` (what fbgemm's dynamic kernels compute);
    ``"token"``: one per row of the last dimension, shaped ``[..., 1]``.
    """
    lo, hi = _gran(granularity).dynamic_range(x, symmetric_signed=symmetric and qmin < 0)
    return choose_qparams(lo, hi, qmin, qmax, symmetric=symmetric, include_zero=True)


def token_qparams(x: Tensor, qmin: int, qmax: int, *, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Per-token (last dimension) scales and zero points of ``x``, shaped ``[..., 1]``."""
    return dynamic_qparams(x, "token", qmin, qmax, symmetric=symmetric)


def tensor_qparams(x: Tensor, qmin: int, qmax: int, *, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Per-tensor scale and zero point of ``x`` from its min/max (what dynamic kernels compute)."""
    return dynamic_qparams(x, "tensor", qmin, qmax, symmetric=symmetric)


# --- uint8 activations of the integer model ---------------------------------------------------


def quantize_u8(x: Tensor, scale: float, zp: int, hi: int) -> Tensor:
    """``clamp(round(x / scale + zp), 0, hi)`` as uint8 (fbgemm's rounding: ``x * (1/scale) + zp``).

    The integer model stores every activation as uint8 offset by ``-qmin`` (so ``zp`` here is the
    zero point of that storage and ``hi = qmax - qmin``).

    Raises:
        ValueError: ``hi`` exceeds 255 (a format wider than 8 bits does not fit the storage; such
            activations stay float, fake-quantized).
    """
    if hi > 255 or hi < 0:
        raise ValueError(
            f"quantize_u8: {hi + 1} levels do not fit uint8 storage; keep activations wider "
            "than 8 bits in float (fake_quantize)."
        )
    if _fast_quantize() and x.device.type == "cpu" and 0 <= zp <= 255:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.quantize_per_tensor(x.float(), scale, zp, torch.quint8).int_repr()
        return q.clamp_(max=hi) if hi < 255 else q
    inv = 1.0 / torch.tensor(scale, dtype=torch.float32).item()
    q = torch.round(x.float() * inv + float(zp)).clamp_(0, hi)
    return q.to(torch.uint8)


@functools.lru_cache(maxsize=1)
def _fast_quantize() -> bool:
    """Whether torch's fused per-tensor quantize exists and rounds like the simulation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = torch.tensor([40.499996185302734, -1.0, 0.5, 2.5, 1e3])
            s = 1.0
            got = torch.quantize_per_tensor(x, s, 123, torch.quint8).int_repr().to(torch.float32)
        want = torch.round(x * (1.0 / s) + 123.0).clamp(0, 255)
        return bool(torch.equal(got, want))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def dequantize_u8(u: Tensor, scale: float, zp: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(u - zp) * scale`` (computed in float32, returned in ``dtype``)."""
    y = (u.to(torch.float32) - float(zp)).mul_(scale)
    return y if dtype == torch.float32 else y.to(dtype)


# --- storage -------------------------------------------------------------------------------


def storage_bits(bits: int) -> int:
    """Bits each stored integer takes: 2 -> 2 (four per byte), 3-4 -> 4 (two per byte), 5-8 -> 8, 16 -> 16."""
    if bits <= 2:
        return 2
    if bits <= 4:
        return 4
    if bits <= 8:
        return 8
    return 16


def pack_int(q: Tensor, bits: int, qmin: int) -> Tensor:
    """Pack integers in ``[qmin, qmin + 2^bits)`` into bytes (four 2-bit or two 4-bit values per byte).

    Values are stored offset by ``-qmin`` (so unsigned), the first value in the low bits. For 5 to 8
    bits the result is one byte per value, for 16 bits one int16 per value (see :func:`storage_bits`).

    Returns:
        A flat uint8 tensor (int16 for 16 bits, offset by ``-qmin - 2^15``).
    """
    sb = storage_bits(bits)
    u = q.reshape(-1).to(torch.int32) - qmin
    if sb == 16:
        return (u - 2**15).to(torch.int16)
    u = u.to(torch.uint8)
    if sb == 8:
        return u
    per = 8 // sb
    n = u.numel()
    pad = (-n) % per
    if pad:
        u = torch.cat([u, u.new_zeros(pad)])
    u = u.reshape(-1, per)
    out = u[:, 0].clone()
    for i in range(1, per):
        out |= u[:, i] << (i * sb)
    return out


def unpack_int(packed: Tensor, bits: int, qmin: int, numel: int) -> Tensor:
    """Inverse of :func:`pack_int`: the first ``numel`` integers, as int32."""
    sb = storage_bits(bits)
    if sb == 16:
        return packed.to(torch.int32) + 2**15 + qmin
    if sb == 8:
        return packed.reshape(-1)[:numel].to(torch.int32) + qmin
    per = 8 // sb
    mask = (1 << sb) - 1
    p = packed.reshape(-1, 1).to(torch.int32)
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * sb
    vals = (p >> shifts) & mask
    return vals.reshape(-1)[:numel] + qmin
