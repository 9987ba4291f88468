"""Kernels of the low-bit runtime modes of weight-only layers (see
:data:`~torchcompress.quant.int_layer.RUNTIMES`).

A weight-only layer (``activation=None``) has no integer kernel for its float activations; by
default (``runtime="cache"``) it dequantizes its weights once and runs at float speed. The kernels
here run the other two modes, registered in
:data:`~torchcompress.quant.int_layer.RUNTIME_KERNELS` (tried after the activation kernels of
:mod:`~torchcompress.quant.kernels`):

- ``w4a8`` (CPU, ``runtime="w4a8"``): the low-bit weights (up to 8 bits, symmetric, per tensor or
  per channel) unpacked once to int8 and pre-packed for fbgemm, which quantizes the activations
  per call (dynamic, per tensor, asymmetric uint8; the 7-bit reduced range where the CPU's int8
  pairs would saturate) and runs its int8 GEMM. An approximation of the weight-only model (the
  activations are quantized), usually much faster than float on a weight-bound layer.
- ``cuda_int4`` (CUDA, ``runtime="lowbit"``): torch's int4 "tinygemm" kernel
  (``torch.ops.aten._weight_int4pack_mm``) for 2-4-bit group-wise weights (group of 32, 64, 128 or
  256 inputs): the weights stay 4-bit in GPU memory and the activations run in bfloat16.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layers import Geometry
from .hardware import int8_pairs_exact
from .int_layer import RUNTIME_KERNELS, IntLayer, Kernel
from .kernels import (
    FbgemmDynamicKernel,
    _fbgemm_engine,
    _fbgemm_prepack,
    _int8_weight,
    _linear_map,
    _weight_reason,
)

__all__ = ["CudaInt4Kernel", "W4A8Kernel"]


@RUNTIME_KERNELS.register("w4a8")
class W4A8Kernel(FbgemmDynamicKernel):
    """``runtime="w4a8"``: weight-only Linear layers on CPU through fbgemm's dynamic int8 GEMM."""

    name = "w4a8"
    note = "int8 fbgemm dynamic kernel (runtime='w4a8': weights unpacked to int8 once, activations quantized per call)"

    @classmethod
    def accepts(cls, geometry: Geometry) -> str | None:
        return _linear_map(geometry, "the W4A8 kernel runs Linear maps only")

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        if m.act is not None or m.wfmt is None or m.runtime != "w4a8":
            return "n/a: runtime='w4a8' applies to weight-only layers"
        if device.type != "cpu":
            return "n/a: runtime='w4a8' runs on CPU (fbgemm)"
        if _fbgemm_engine() is None:
            return "no fbgemm/x86 quantized engine in this torch build"
        return cls.kind_reason(m) or _weight_reason(m)

    def __init__(self, m: IntLayer) -> None:
        Kernel.__init__(self, m)
        bias = None if m.bias is None else m.bias.float()
        wq = _int8_weight(m)
        self.packed = _fbgemm_prepack(wq, m.weight_scale.float(), bias)
        self.bytes = wq.numel() + 4 * m.out_channels
        w = m.wfmt
        # the 7-bit reduced range where full-range uint8 activations would saturate the pairs
        self.reduce = not int8_pairs_exact(256, w["qmin"], w["qmax"], self.device)  # type: ignore[index]

    def extra_bytes(self) -> int:
        return self.bytes


#: the group sizes tinygemm's int4 kernel supports
_INT4_GROUPS = (32, 64, 128, 256)


def _int4_ops() -> bool:
    aten = torch.ops.aten
    return hasattr(aten, "_weight_int4pack_mm") and hasattr(aten, "_convert_weight_to_int4pack")


@RUNTIME_KERNELS.register("cuda_int4")
class CudaInt4Kernel(Kernel):
    """``runtime="lowbit"`` on CUDA: 4-bit group-wise weights through tinygemm (bfloat16)."""

    name = "cuda_int4"
    note = "int4 CUDA kernel (tinygemm, bfloat16 activations; runtime='lowbit')"

    @classmethod
    def accepts(cls, geometry: Geometry) -> str | None:
        return _linear_map(geometry, "the int4 CUDA kernel runs Linear maps only")

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        w = m.wfmt
        if m.act is not None or w is None or m.runtime != "lowbit":
            return "n/a: the int4 kernel runs weight-only layers with runtime='lowbit'"
        if device.type != "cuda":
            return "n/a: the int4 kernel runs on CUDA"
        if not _int4_ops():
            return "this torch has no int4 CUDA kernel (_weight_int4pack_mm)"
        r = cls.kind_reason(m)
        if r:
            return r
        if w["qmax"] - w["qmin"] > 15:
            return f"{w['bits']}-bit weights do not fit int4"
        if w["granularity"] != "group" or w.get("group_size") not in _INT4_GROUPS:
            return f"the int4 kernel needs group-wise weights in groups of {_INT4_GROUPS}"
        k, n = m.in_features, m.out_channels
        if k % 32 or n % 8:
            return "the int4 kernel needs input sizes divisible by 32 and outputs by 8"
        return None

    def __init__(self, m: IntLayer) -> None:
        super().__init__(m)
        w = m.wfmt
        qmin = int(w["qmin"])  # type: ignore[index]
        k = m.in_features
        u = (m.int_weight() - qmin).to(torch.int32)  # [N, K] in 0..15
        tiles = next(t for t in (8, 4, 2) if k % (t * 16) == 0)
        packed_u8 = ((u[:, ::2] << 4) | u[:, 1::2]).to(torch.uint8)
        self.packed = torch.ops.aten._convert_weight_to_int4pack(packed_u8.contiguous(), tiles)
        self.group = int(w["group_size"])  # type: ignore[index]
        s = m.weight_scale.float().reshape(m.out_channels, -1)
        zp = m.weight_zero_points().float().reshape(m.out_channels, -1)
        # tinygemm computes (u - 8) * scale + zero; ours is (u + qmin - zp) * scale
        zero = (8 + qmin - zp) * s
        self.scales_zeros = (
            torch.stack([s, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
        )
        self.bias = None if m.bias is None else m.bias.to(torch.bfloat16)

    def extra_bytes(self) -> int:
        t = (self.packed, self.scales_zeros)
        return sum(x.numel() * x.element_size() for x in t)

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()
        y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group, self.scales_zeros)
        if self.bias is not None:
            y = y + self.bias
        y = y.reshape(*shape[:-1], y.shape[-1])
        return y if y.dtype == x.dtype else y.to(x.dtype)
