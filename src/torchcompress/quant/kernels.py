"""Integer kernels for converted layers, and the registry that picks one per layer and device.

A kernel is a small class with ``supports(layer, device) -> None | reason`` and a callable instance
(built once per device: it pre-packs the weights) that runs the layer. :func:`select_kernel` tries
the registered kernels in order and falls back to :class:`DequantKernel`, which dequantizes the
weights on the fly and simulates the activation quantization exactly (so a converted model always
computes what the fake-quant model promised, fast or not). Kernels that ship with PyTorch:

- ``onednn``: ``torch.ops.onednn.qconv2d_pointwise`` / ``qconv1d_pointwise`` / ``qlinear_pointwise``
  for static activations (u8 in, u8 or fp32 out, fused ReLU, fused residual add for Conv2d).
- ``fbgemm_dynamic``: ``torch.ops.quantized.linear_dynamic`` for per-tensor dynamic activations.
- ``token``: an int8 GEMM (fbgemm, or oneDNN) with per-token activation scales applied to its
  fp32 output.
- ``cuda_int_mm``: ``torch._int_mm`` (int8 tensor cores) for Linear layers on CUDA.

Add one with ``@KERNELS.register("name")`` on a :class:`Kernel` subclass (registration order is
priority order).
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry
from . import functional as QF
from .hardware import int8_pairs_exact

if TYPE_CHECKING:
    from .converting import IntLayer

__all__ = ["KERNELS", "DequantKernel", "Kernel", "select_kernel"]

KERNELS: Registry[type[Kernel]] = Registry("kernel")


def quantize_u8(x: Tensor, scale: float, zp: int, hi: int) -> Tensor:
    """``clamp(round(x / scale + zp), 0, hi)`` as uint8 (fbgemm's rounding: ``x * (1/scale) + zp``)."""
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


@functools.lru_cache(maxsize=1)
def _onednn_ok() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(
            torch.ops.onednn, "qconv_prepack"
        )
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=1)
def _fbgemm_engine() -> str | None:
    engines = torch.backends.quantized.supported_engines
    for e in ("x86", "fbgemm"):
        if e in engines:
            return e
    return None


class Kernel:
    """Base class of integer kernels. Subclasses set ``name`` and ``note`` and implement both methods."""

    name = "kernel"
    note = ""

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        """``None`` if this kernel runs ``m`` on ``device``, else the reason it cannot."""
        raise NotImplementedError

    def __init__(self, m: IntLayer) -> None:
        self.device = m.qweight.device

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        raise NotImplementedError


def _weight_reason(m: IntLayer, *, allow_group: bool = False) -> str | None:
    w = m.wfmt
    if w["granularity"] == "group" and not allow_group:
        return "group-wise weight scales have no int8 kernel"
    if w["qmin"] < -128 or w["qmax"] > 127:
        return (
            f"{w['bits']}-bit {'signed' if w['qmin'] < 0 else 'unsigned'} weights do not fit int8"
        )
    if bool((m.weight_zero_point != 0).any()):
        return "asymmetric weights (non-zero weight zero points) have no int8 kernel"
    return None


def _act_levels(m: IntLayer) -> int:
    a = m.act
    return int(a["qmax"]) - int(a["qmin"]) + 1  # type: ignore[index]


def _pairs_reason(m: IntLayer, device: torch.device) -> str | None:
    if not int8_pairs_exact(_act_levels(m), m.wfmt["qmin"], m.wfmt["qmax"], device):
        return (
            "8-bit activations with 8-bit weights saturate this CPU's int8 kernels (AVX2 without "
            "VNNI); quantize with reduce_range='auto' to run them exactly"
        )
    return None


@KERNELS.register("onednn")
class OnednnKernel(Kernel):
    """Static activations on CPU with oneDNN: u8 input, u8 (re-quantized) or fp32 output."""

    name = "onednn"
    note = "int8 oneDNN kernel"

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        a = m.act
        if a is None or a["dynamic"] or a["granularity"] != "tensor":
            return "n/a: not a static per-tensor activation"
        if device.type != "cpu":
            return "n/a: oneDNN int8 kernels run on CPU"
        if not _onednn_ok():
            return "this torch build has no oneDNN int8 kernels"
        if _act_levels(m) > 256:
            return "activations wider than 8 bits"
        if m.out is not None and int(m.out["qmax"]) - int(m.out["qmin"]) > 255:
            return "outputs wider than 8 bits"
        r = _weight_reason(m) or _pairs_reason(m, device)
        if r:
            return r
        if m.kind != "linear":
            if m.padding_mode != "zeros":
                return f"padding_mode={m.padding_mode!r}"
            if m.int_padding() is None:
                return "asymmetric 'same' padding"
        return None

    def __init__(self, m: IntLayer) -> None:
        super().__init__(m)
        wq = m.int_weight().to(torch.int8)
        self.w_scales = m.weight_scale.float().reshape(-1).expand(m.out_channels).contiguous()
        self.w_zps = torch.zeros(m.out_channels, dtype=torch.long)
        self.bias = None if m.bias is None else m.bias.float()
        xs, xz = m.in_qparams()
        if m.kind == "linear":
            self.packed = torch.ops.onednn.qlinear_prepack(wq.reshape(m.out_channels, -1), None)
        else:
            pad = m.int_padding()
            self.conv_args = (list(m.stride), list(pad), list(m.dilation), m.groups)  # type: ignore[arg-type]
            w = wq.reshape(m.weight_shape)
            if m.kind == "conv1d":
                w = w.unsqueeze(2)
                self.conv_args = (
                    [1, *m.stride],
                    [0, *pad],  # type: ignore[list-item]
                    [1, *m.dilation],
                    m.groups,
                )
            self.packed = torch.ops.onednn.qconv_prepack(
                w, self.w_scales, xs, xz, *self.conv_args[:3], self.conv_args[3], None
            )

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        xs, xz = m.in_qparams()
        dtype = x.dtype if x.is_floating_point() else m.float_dtype
        u = x if x.dtype == torch.uint8 else quantize_u8(x, xs, xz, _act_levels(m) - 1)
        out_int = m.out is not None
        os_, oz = m.out_qparams() if out_int else (1.0, 0)
        out_dtype = None if out_int else torch.float32
        unary = "relu" if m.unary in ("relu", "relu6") else "none"
        if m.kind == "linear":
            shape = u.shape
            u2 = u.reshape(-1, shape[-1])
            y = torch.ops.onednn.qlinear_pointwise(
                u2,
                xs,
                xz,
                self.packed,
                self.w_scales,
                self.w_zps,
                self.bias,
                os_,
                oz,
                out_dtype,
                unary,
                [],
                "",
            )
            y = y.reshape(*shape[:-1], y.shape[-1])
        else:
            if m.kind == "conv1d":
                u = u.unsqueeze(2)
                if accum is not None:
                    accum = accum.unsqueeze(2)
            if accum is not None and out_int:
                acs, acz = m.accum_qparams()
                acc = accum if m.accum_inplace_ok else accum.clone()
                y = torch.ops.onednn.qconv2d_pointwise.binary(
                    u,
                    xs,
                    xz,
                    self.packed,
                    self.w_scales,
                    self.w_zps,
                    acc,
                    self.bias,
                    *self.conv_args,
                    os_,
                    oz,
                    None,
                    acs,
                    acz,
                    "sum",
                    1.0,
                    unary,
                    [],
                    "",
                )
            elif accum is not None:  # fp32 output: add the dequantized operand in float
                y = torch.ops.onednn.qconv2d_pointwise(
                    u,
                    xs,
                    xz,
                    self.packed,
                    self.w_scales,
                    self.w_zps,
                    self.bias,
                    *self.conv_args,
                    1.0,
                    0,
                    torch.float32,
                    "none",
                    [],
                    "",
                )
                acs, acz = m.accum_qparams()
                y = y + dequantize_u8(accum, acs, acz)
                y = m.apply_unary(y)
            else:
                y = torch.ops.onednn.qconv2d_pointwise(
                    u,
                    xs,
                    xz,
                    self.packed,
                    self.w_scales,
                    self.w_zps,
                    self.bias,
                    *self.conv_args,
                    os_,
                    oz,
                    out_dtype,
                    unary,
                    [],
                    "",
                )
            if m.kind == "conv1d":
                y = y.squeeze(2)
        if out_int:
            hi = int(m.out["qmax"]) - int(m.out["qmin"])  # type: ignore[index]
            if hi < 255:
                y = y.clamp_(max=hi)
            return y
        if m.unary == "relu6":
            y = y.clamp_(max=6.0)
        return y if y.dtype == dtype else y.to(dtype)


def _make_qtensor(wq: Tensor, scale: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if scale.numel() == 1:
            return torch._make_per_tensor_quantized_tensor(wq, float(scale.reshape(-1)[0]), 0)
        return torch._make_per_channel_quantized_tensor(
            wq, scale.double().reshape(-1), torch.zeros(scale.numel(), dtype=torch.long), 0
        )


@KERNELS.register("fbgemm_dynamic")
class FbgemmDynamicKernel(Kernel):
    """Dynamic per-tensor activations on CPU: ``torch.ops.quantized.linear_dynamic``."""

    name = "fbgemm_dynamic"
    note = "int8 fbgemm dynamic kernel"

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        a = m.act
        if a is None or not a["dynamic"] or a["granularity"] != "tensor":
            return "n/a: not a dynamic per-tensor activation"
        if device.type != "cpu":
            return "n/a: fbgemm runs on CPU"
        if m.kind != "linear":
            return "dynamic int8 kernels exist for Linear only"
        if _fbgemm_engine() is None:
            return "no fbgemm/x86 quantized engine in this torch build"
        if a["symmetric"] or a["qmin"] != 0 or a["qmax"] not in (127, 255):
            return (
                "fbgemm's dynamic kernel quantizes to asymmetric uint8 (or its 7-bit reduced range)"
            )
        if m.out is not None:
            return "dynamic kernels output float"
        return _weight_reason(m) or _pairs_reason(m, device)

    def __init__(self, m: IntLayer) -> None:
        super().__init__(m)
        wq = m.int_weight().to(torch.int8).reshape(m.out_channels, -1)
        prev = torch.backends.quantized.engine
        engine = _fbgemm_engine()
        try:
            torch.backends.quantized.engine = engine  # type: ignore[assignment]
            qw = _make_qtensor(wq, m.weight_scale.float())
            bias = None if m.bias is None else m.bias.float()
            self.packed = torch.ops.quantized.linear_prepack(qw, bias)
        finally:
            torch.backends.quantized.engine = prev
        self.reduce = int(m.act["qmax"]) == 127  # type: ignore[index]

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        y = torch.ops.quantized.linear_dynamic(x2.contiguous(), self.packed, self.reduce)
        y = y.reshape(*shape[:-1], y.shape[-1])
        y = m.apply_unary(y)
        return y if y.dtype == x.dtype else y.to(x.dtype)


@KERNELS.register("token")
class TokenKernel(Kernel):
    """Dynamic per-token activations on CPU: an int8 GEMM on ``x / s_token + z_token``, rescaled.

    The activations are scaled per token into the integer grid in one pass; fbgemm's
    ``linear_with_input_q_dq_qweight_dq_output_fp32`` (scale 1, zero point 0) rounds them and runs
    the int8 GEMM (oneDNN's ``qlinear_pointwise`` where fbgemm is missing); the output is then
    ``s_token * (acc - z_token * colsum(W)) + bias``.
    """

    name = "token"
    note = "int8 kernel, per-token scales"

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        a = m.act
        if a is None or not a["dynamic"] or a["granularity"] != "token":
            return "n/a: not a dynamic per-token activation"
        if device.type != "cpu":
            return "n/a: CPU int8 kernels run on CPU"
        if _fbgemm_engine() is None and not _onednn_ok():
            return "this torch build has no fbgemm or oneDNN int8 kernels"
        if m.kind != "linear":
            return "per-token activations apply to Linear only"
        if _act_levels(m) > 256:
            return "activations wider than 8 bits"
        if m.out is not None:
            return "dynamic kernels output float"
        return _weight_reason(m) or _pairs_reason(m, device)

    def __init__(self, m: IntLayer) -> None:
        super().__init__(m)
        wq = m.int_weight().to(torch.int8).reshape(m.out_channels, -1)
        self.w_scales = m.weight_scale.float().reshape(-1).expand(m.out_channels).contiguous()
        self.colsum = (wq.float().sum(1) * self.w_scales).contiguous()
        self.bias = None if m.bias is None else m.bias.float()
        bias = self.bias if self.bias is not None else torch.zeros_like(self.colsum)
        self.corr = torch.stack([self.colsum, bias])  # [2, N]: rows for the zero point and bias
        self.fbgemm = _fbgemm_engine() is not None and _act_levels(m) == 256
        if self.fbgemm:
            prev = torch.backends.quantized.engine
            try:
                torch.backends.quantized.engine = _fbgemm_engine()  # type: ignore[assignment]
                qw = _make_qtensor(wq, self.w_scales)
                self.packed = torch.ops.quantized.linear_prepack(qw, None)
            finally:
                torch.backends.quantized.engine = prev
        else:
            self.w_zps = torch.zeros(m.out_channels, dtype=torch.long)
            self.packed = torch.ops.onednn.qlinear_prepack(wq, None)

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        a = m.act
        qmin, qmax = int(a["qmin"]), int(a["qmax"])  # type: ignore[index]
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        s, z = QF.token_qparams(x2, qmin, qmax, symmetric=bool(a["symmetric"]))  # type: ignore[index]
        zk = (z - qmin).float()  # zero point of the uint8 storage
        if self.fbgemm:
            # x / s + zk on the integer grid (multiply, then add: the simulation's float steps,
            # not a fused multiply-add); the kernel rounds it
            xs = torch.mul(x2, 1.0 / s).add_(zk)
            acc = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                xs, 1.0, 0, self.packed
            )
        else:
            u = torch.round(x2 * (1.0 / s) + zk).clamp_(0, qmax - qmin).to(torch.uint8)
            acc = torch.ops.onednn.qlinear_pointwise(
                u,
                1.0,
                0,
                self.packed,
                self.w_scales,
                self.w_zps,
                None,
                1.0,
                0,
                torch.float32,
                "none",
                [],
                "",
            )
        # y = s * (acc - zk * colsum(W)) + bias: one scaling pass and one rank-2 update
        y = acc.mul_(s)
        y = y.addmm_(torch.cat([-(s * zk), torch.ones_like(s)], 1), self.corr)
        y = m.apply_unary(y.reshape(*shape[:-1], y.shape[-1]))
        return y if y.dtype == x.dtype else y.to(x.dtype)


@KERNELS.register("cuda_int_mm")
class CudaIntMMKernel(Kernel):
    """Linear layers on CUDA with ``torch._int_mm`` (int8 inputs, int32 accumulation)."""

    name = "cuda_int_mm"
    note = "int8 CUDA kernel (torch._int_mm)"

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        if device.type != "cuda":
            return "n/a: torch._int_mm is fast on CUDA only"
        a = m.act
        if a is None:
            return "n/a: weight-only"
        if not hasattr(torch, "_int_mm"):
            return "this torch has no torch._int_mm"
        if m.kind != "linear":
            return "no int8 convolution kernel on CUDA"
        if _act_levels(m) > 256:
            return "activations wider than 8 bits"
        if m.out is not None:
            return "integer outputs are not supported on this path"
        k, n = m.in_features, m.out_channels
        if k % 8 or n % 8:
            return "torch._int_mm needs input and output sizes divisible by 8"
        return _weight_reason(m)

    def __init__(self, m: IntLayer) -> None:
        super().__init__(m)
        wq = m.int_weight().to(torch.int8).reshape(m.out_channels, -1)
        self.wt = wq.t()  # [K, N], column-major (what cuBLASLt's int8 GEMM wants)
        self.w_scales = m.weight_scale.float().reshape(1, -1)
        self.colsum = wq.float().sum(1).reshape(1, -1)
        self.bias = None if m.bias is None else m.bias.float()

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        a = m.act
        qmin, qmax = int(a["qmin"]), int(a["qmax"])  # type: ignore[index]
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        if a["dynamic"]:  # type: ignore[index]
            if a["granularity"] == "token":  # type: ignore[index]
                s, z = QF.token_qparams(x2, qmin, qmax, symmetric=bool(a["symmetric"]))  # type: ignore[index]
            else:
                s, z = QF.tensor_qparams(x2, qmin, qmax, symmetric=bool(a["symmetric"]))  # type: ignore[index]
        else:
            s, z = m.input_scale.float(), m.input_zero_point
        shift = qmin + 128  # store q - shift in int8
        q8 = torch.round(x2 * (1.0 / s) + z.float()).clamp_(qmin, qmax).sub_(shift).to(torch.int8)
        rows = q8.shape[0]
        if rows <= 16:
            q8 = torch.cat([q8, q8.new_zeros(17 - rows, q8.shape[1])])
        acc = torch._int_mm(q8, self.wt)[:rows].float()
        y = (acc - (z.float() - shift) * self.colsum) * (s * self.w_scales)
        if self.bias is not None:
            y = y + self.bias
        y = m.apply_unary(y.reshape(*shape[:-1], y.shape[-1]))
        return y if y.dtype == x.dtype else y.to(x.dtype)


class DequantKernel(Kernel):
    """No integer kernel: dequantize the weights on the fly and simulate the activations exactly."""

    name = "dequant"
    note = "dequantized on the fly"

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        return None

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        dtype = x.dtype if x.is_floating_point() else m.float_dtype
        xf = m.simulate_input(x)
        w = m.dequantized_weight().to(xf.dtype)
        b = None if m.bias is None else m.bias.to(xf.dtype)
        if m.kind == "linear":
            y = F.linear(xf, w, b)
        else:
            conv = F.conv2d if m.kind == "conv2d" else F.conv1d
            if m.padding_mode != "zeros":
                xf = F.pad(xf, m.reversed_padding(), mode=m.padding_mode)
                y = conv(xf, w, b, m.stride, 0, m.dilation, m.groups)
            else:
                y = conv(xf, w, b, m.stride, m.padding, m.dilation, m.groups)
        if accum is not None:
            acs, acz = m.accum_qparams()
            y = y + dequantize_u8(accum, acs, acz).to(y.dtype)
        y = m.apply_unary(y)
        if m.out is not None:
            os_, oz = m.out_qparams()
            return quantize_u8(y, os_, oz, int(m.out["qmax"]) - int(m.out["qmin"]))  # type: ignore[index]
        return y if y.dtype == dtype else y.to(dtype)


def select_kernel(m: IntLayer, device: torch.device) -> tuple[Kernel, list[str]]:
    """The first registered kernel that supports ``m`` on ``device`` (else :class:`DequantKernel`).

    Returns:
        ``(kernel, reasons)``: the built kernel, and why each earlier kernel did not apply.
    """
    reasons: list[str] = []
    for name in KERNELS:
        cls = KERNELS.get(name)
        why = cls.supports(m, device)
        if why is None:
            try:
                return cls(m), reasons
            except (
                RuntimeError,
                NotImplementedError,
                TypeError,
            ) as e:  # a kernel that fails to pack
                reasons.append(f"{name}: {e}")
                continue
        reasons.append(f"{name}: {why}")
    return DequantKernel(m), reasons
