"""Integer kernels for converted layers (registered in :data:`KERNELS`, priority = order).

The kernel interface (:class:`Kernel`, :data:`KERNELS`, :func:`select_kernel` and the exact
dequantizing fallback :class:`DequantKernel`) lives with the integer layer in
:mod:`~torchcompress.quant.int_layer`; this module registers the kernels that ship with PyTorch:

- ``onednn``: ``torch.ops.onednn.qconv2d_pointwise`` / ``qlinear_pointwise`` for static activations
  (u8 in, u8 or fp32 out, fused ReLU, fused residual add for 2-D convolutions; a 1-D convolution
  runs as a 2-D one of height one).
- ``fbgemm_dynamic``: ``torch.ops.quantized.linear_dynamic`` for per-tensor dynamic activations.
- ``token``: an int8 GEMM (fbgemm, or oneDNN) with per-token activation scales applied to its
  fp32 output.
- ``cuda_int_mm``: ``torch._int_mm`` (int8 tensor cores) for Linear layers on CUDA.

Each kernel says which layer geometries it runs (:meth:`Kernel.accepts`, a predicate on the layer's
:class:`~torchcompress.layers.Geometry`: maps over the last dimension, convolutions with a 1-D or
2-D kernel, ...), whatever layer kind the geometry comes from. Add one with
``@KERNELS.register("name")`` on a :class:`Kernel` subclass (registration order is priority order).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import Tensor

from ..layers import Geometry
from . import functional as QF
from .geometry import symmetric_padding
from .granularity import granularity
from .hardware import int8_pairs_exact
from .int_layer import KERNELS, DequantKernel, IntLayer, Kernel, select_kernel

__all__ = [
    "KERNELS",
    "CudaIntMMKernel",
    "DequantKernel",
    "FbgemmDynamicKernel",
    "Kernel",
    "OnednnKernel",
    "TokenKernel",
    "select_kernel",
]


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


def _weight_reason(m: IntLayer) -> str | None:
    w = m.wfmt
    if granularity(w["granularity"]).grouped_inputs:  # type: ignore[index]
        return "group-wise weight scales have no int8 kernel"
    if w["qmin"] < -128 or w["qmax"] > 127:  # type: ignore[index]
        return (
            f"{w['bits']}-bit {'signed' if w['qmin'] < 0 else 'unsigned'} weights do not fit int8"  # type: ignore[index]
        )
    if bool((m.weight_zero_point != 0).any()):
        return "asymmetric weights (non-zero weight zero points) have no int8 kernel"
    return None


def _act_levels(m: IntLayer) -> int:
    a = m.act
    return int(a["qmax"]) - int(a["qmin"]) + 1  # type: ignore[index]


def _pairs_reason(m: IntLayer, device: torch.device) -> str | None:
    if not int8_pairs_exact(_act_levels(m), m.wfmt["qmin"], m.wfmt["qmax"], device):  # type: ignore[index]
        return (
            "8-bit activations with 8-bit weights saturate this CPU's int8 kernels (AVX2 without "
            "VNNI); quantize with reduce_range='auto' to run them exactly"
        )
    return None


def _int8_weight(m: IntLayer) -> Tensor:
    """The integer weights as int8 ``[out, in / groups * kernel]``."""
    return m.int_weight().to(torch.int8).reshape(m.out_channels, -1)


def _channel_scales(m: IntLayer) -> Tensor:
    """One float32 weight scale per output channel."""
    return m.weight_scale.float().reshape(-1).expand(m.out_channels).contiguous()


# --- oneDNN --------------------------------------------------------------------------------------


def _qlinear(
    u2: Tensor,
    xs: float,
    xz: int,
    packed: Any,
    w_scales: Tensor,
    w_zps: Tensor,
    bias: Tensor | None,
    out: tuple[float, int, torch.dtype | None],
    unary: str = "none",
) -> Tensor:
    """oneDNN's int8 Linear on uint8 rows: u8 output (``out = (scale, zp, None)``) or float."""
    os_, oz, dtype = out
    return torch.ops.onednn.qlinear_pointwise(
        u2, xs, xz, packed, w_scales, w_zps, bias, os_, oz, dtype, unary, [], ""
    )


class _OnednnLinear:
    """oneDNN's int8 Linear for an :class:`IntLayer` (u8 rows in any leading shape)."""

    def __init__(self, k: OnednnKernel, m: IntLayer, wq: Tensor, xs: float, xz: int) -> None:
        self.packed = torch.ops.onednn.qlinear_prepack(wq, None)

    def run(
        self,
        k: OnednnKernel,
        m: IntLayer,
        u: Tensor,
        out: tuple[float, int, torch.dtype | None],
        unary: str,
        accum: Tensor | None,
    ) -> Tensor:
        xs, xz = m.in_qparams()
        shape = u.shape
        y = _qlinear(
            u.reshape(-1, shape[-1]), xs, xz, self.packed, k.w_scales, k.w_zps, k.bias, out, unary
        )
        return y.reshape(*shape[:-1], y.shape[-1])


class _OnednnConv:
    """oneDNN's int8 2-D convolution for an :class:`IntLayer` (a 1-D kernel runs as a 2-D one of
    height one), with the residual operand added inside the kernel when the output is integer."""

    def __init__(self, k: OnednnKernel, m: IntLayer, wq: Tensor, xs: float, xz: int) -> None:
        g = m.geometry
        pad = list(m.int_padding())  # type: ignore[arg-type]
        stride, dilation = list(g.stride), list(g.dilation)
        w = wq.reshape(g.weight_shape)
        self.unit_height = g.spatial_dims == 1
        if self.unit_height:
            w = w.unsqueeze(2)
            stride, pad, dilation = [1, *stride], [0, *pad], [1, *dilation]
        self.conv_args = (stride, pad, dilation, g.groups)
        self.packed = torch.ops.onednn.qconv_prepack(
            w, k.w_scales, xs, xz, stride, pad, dilation, g.groups, None
        )

    def _call(
        self,
        k: OnednnKernel,
        m: IntLayer,
        u: Tensor,
        out: tuple[float, int, torch.dtype | None],
        unary: str,
    ) -> Tensor:
        xs, xz = m.in_qparams()
        os_, oz, dtype = out
        return torch.ops.onednn.qconv2d_pointwise(
            u,
            xs,
            xz,
            self.packed,
            k.w_scales,
            k.w_zps,
            k.bias,
            *self.conv_args,
            os_,
            oz,
            dtype,
            unary,
            [],
            "",
        )

    def run(
        self,
        k: OnednnKernel,
        m: IntLayer,
        u: Tensor,
        out: tuple[float, int, torch.dtype | None],
        unary: str,
        accum: Tensor | None,
    ) -> Tensor:
        if self.unit_height:
            u = u.unsqueeze(2)
            accum = None if accum is None else accum.unsqueeze(2)
        if accum is None:
            y = self._call(k, m, u, out, unary)
        elif out[2] is None:  # integer output: the kernel adds the residual operand
            xs, xz = m.in_qparams()
            acs, acz = m.accum_qparams()
            # oneDNN sums into the operand in its output layout (channels-last); a residual
            # quantized from a float tensor arrives contiguous, and is copied into that layout
            acc = accum.contiguous(memory_format=torch.channels_last)
            if acc is accum and not m.accum_inplace_ok:
                acc = accum.clone()
            y = torch.ops.onednn.qconv2d_pointwise.binary(
                u,
                xs,
                xz,
                self.packed,
                k.w_scales,
                k.w_zps,
                acc,
                k.bias,
                *self.conv_args,
                out[0],
                out[1],
                None,
                acs,
                acz,
                "sum",
                1.0,
                unary,
                [],
                "",
            )
        else:  # fp32 output: add the dequantized operand in float
            y = self._call(k, m, u, (1.0, 0, torch.float32), "none")
            acs, acz = m.accum_qparams()
            y = m.apply_unary(y + QF.dequantize_u8(accum, acs, acz))
        return y.squeeze(2) if self.unit_height else y


def _linear_map(geometry: Geometry, why: str) -> str | None:
    """``None`` for a map over the last dimension (no kernel), else ``why`` the kernel does not
    run it."""
    return None if not geometry.kernel_size else why


@KERNELS.register("onednn")
class OnednnKernel(Kernel):
    """Static activations on CPU with oneDNN: u8 input, u8 (re-quantized) or fp32 output.

    Runs maps over the last dimension (``qlinear_pointwise``) and convolutions with a 1-D or 2-D
    kernel (``qconv2d_pointwise``), adding a residual operand inside the kernel for 2-D ones.
    """

    name = "onednn"
    note = "int8 oneDNN kernel"

    @classmethod
    def accepts(cls, geometry: Geometry) -> str | None:
        if geometry.spatial_dims > 2:
            return f"no oneDNN int8 kernel for a {geometry.spatial_dims}-D convolution"
        if geometry.kernel_size:
            if geometry.padding_mode != "zeros":
                return f"padding_mode={geometry.padding_mode!r}"
            if symmetric_padding(geometry) is None:
                return "asymmetric 'same' padding"
        return None

    @classmethod
    def fuses_residual(cls, geometry: Geometry) -> bool:
        return geometry.spatial_dims == 2

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        a = m.act
        if a is None or a["dynamic"] or not granularity(a["granularity"]).static_activations:
            return "n/a: not a static per-tensor activation"
        if device.type != "cpu":
            return "n/a: oneDNN int8 kernels run on CPU"
        if not _onednn_ok():
            return "this torch build has no oneDNN int8 kernels"
        if _act_levels(m) > 256:
            return "activations wider than 8 bits"
        if m.out is not None and int(m.out["qmax"]) - int(m.out["qmin"]) > 255:
            return "outputs wider than 8 bits"
        return cls.kind_reason(m) or _weight_reason(m) or _pairs_reason(m, device)

    def __init__(self, m: IntLayer) -> None:
        super().__init__(m)
        self.w_scales = _channel_scales(m)
        self.w_zps = torch.zeros(m.out_channels, dtype=torch.long)
        self.bias = None if m.bias is None else m.bias.float()
        xs, xz = m.in_qparams()
        op = _OnednnConv if m.geometry.kernel_size else _OnednnLinear
        self.op = op(self, m, _int8_weight(m), xs, xz)

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        xs, xz = m.in_qparams()
        dtype = x.dtype if x.is_floating_point() else m.float_dtype
        u = x if x.dtype == torch.uint8 else QF.quantize_u8(x, xs, xz, _act_levels(m) - 1)
        out_int = m.out is not None
        out = (*m.out_qparams(), None) if out_int else (1.0, 0, torch.float32)
        unary = "relu" if m.unary in ("relu", "relu6") else "none"
        y = self.op.run(self, m, u, out, unary, accum)
        if out_int:
            hi = int(m.out["qmax"]) - int(m.out["qmin"])  # type: ignore[index]
            return y.clamp_(max=hi) if hi < 255 else y
        if m.unary == "relu6":
            y = y.clamp_(max=6.0)
        return y if y.dtype == dtype else y.to(dtype)


# --- fbgemm --------------------------------------------------------------------------------------


def _make_qtensor(wq: Tensor, scale: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if scale.numel() == 1:
            return torch._make_per_tensor_quantized_tensor(wq, float(scale.reshape(-1)[0]), 0)
        return torch._make_per_channel_quantized_tensor(
            wq, scale.double().reshape(-1), torch.zeros(scale.numel(), dtype=torch.long), 0
        )


def _fbgemm_prepack(wq: Tensor, scale: Tensor, bias: Tensor | None) -> Any:
    """fbgemm's packed int8 Linear weight (with the quantized engine set while packing)."""
    prev = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = _fbgemm_engine()  # type: ignore[assignment]
        return torch.ops.quantized.linear_prepack(_make_qtensor(wq, scale), bias)
    finally:
        torch.backends.quantized.engine = prev


@KERNELS.register("fbgemm_dynamic")
class FbgemmDynamicKernel(Kernel):
    """Dynamic per-tensor activations on CPU: ``torch.ops.quantized.linear_dynamic``."""

    name = "fbgemm_dynamic"
    note = "int8 fbgemm dynamic kernel"

    @classmethod
    def accepts(cls, geometry: Geometry) -> str | None:
        return _linear_map(geometry, "dynamic int8 kernels exist for Linear only")

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        a = m.act
        if a is None or not a["dynamic"] or a["granularity"] != "tensor":
            return "n/a: not a dynamic per-tensor activation"
        if device.type != "cpu":
            return "n/a: fbgemm runs on CPU"
        r = cls.kind_reason(m)
        if r:
            return r
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
        bias = None if m.bias is None else m.bias.float()
        self.packed = _fbgemm_prepack(_int8_weight(m), m.weight_scale.float(), bias)
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
    def accepts(cls, geometry: Geometry) -> str | None:
        return _linear_map(geometry, "per-token activations apply to Linear only")

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        a = m.act
        if a is None or not a["dynamic"] or a["granularity"] != "token":
            return "n/a: not a dynamic per-token activation"
        if device.type != "cpu":
            return "n/a: CPU int8 kernels run on CPU"
        if _fbgemm_engine() is None and not _onednn_ok():
            return "this torch build has no fbgemm or oneDNN int8 kernels"
        r = cls.kind_reason(m)
        if r:
            return r
        if _act_levels(m) > 256:
            return "activations wider than 8 bits"
        if m.out is not None:
            return "dynamic kernels output float"
        return _weight_reason(m) or _pairs_reason(m, device)

    def __init__(self, m: IntLayer) -> None:
        super().__init__(m)
        wq = _int8_weight(m)
        self.w_scales = _channel_scales(m)
        self.colsum = (wq.float().sum(1) * self.w_scales).contiguous()
        self.bias = None if m.bias is None else m.bias.float()
        bias = self.bias if self.bias is not None else torch.zeros_like(self.colsum)
        self.corr = torch.stack([self.colsum, bias])  # [2, N]: rows for the zero point and bias
        self.fbgemm = _fbgemm_engine() is not None and _act_levels(m) == 256
        if self.fbgemm:
            self.packed = _fbgemm_prepack(wq, self.w_scales, None)
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
            acc = _qlinear(
                u, 1.0, 0, self.packed, self.w_scales, self.w_zps, None, (1.0, 0, torch.float32)
            )
        # y = s * (acc - zk * colsum(W)) + bias: one scaling pass and one rank-2 update
        y = acc.mul_(s)
        y = y.addmm_(torch.cat([-(s * zk), torch.ones_like(s)], 1), self.corr)
        y = m.apply_unary(y.reshape(*shape[:-1], y.shape[-1]))
        return y if y.dtype == x.dtype else y.to(x.dtype)


# --- CUDA ----------------------------------------------------------------------------------------


@KERNELS.register("cuda_int_mm")
class CudaIntMMKernel(Kernel):
    """Linear layers on CUDA with ``torch._int_mm`` (int8 inputs, int32 accumulation)."""

    name = "cuda_int_mm"
    note = "int8 CUDA kernel (torch._int_mm)"

    @classmethod
    def accepts(cls, geometry: Geometry) -> str | None:
        return _linear_map(geometry, "no int8 convolution kernel on CUDA")

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        if device.type != "cuda":
            return "n/a: torch._int_mm is fast on CUDA only"
        a = m.act
        if a is None:
            return "n/a: weight-only"
        if not hasattr(torch, "_int_mm"):
            return "this torch has no torch._int_mm"
        r = cls.kind_reason(m)
        if r:
            return r
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
        wq = _int8_weight(m)
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
            s, z = QF.dynamic_qparams(
                x2,
                a["granularity"],  # type: ignore[index]
                qmin,
                qmax,
                symmetric=bool(a["symmetric"]),  # type: ignore[index]
            )
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
