"""The integer layer :class:`IntLayer` and its kernel interface.

An :class:`IntLayer` is what :func:`torchcompress.convert` puts in place of a fake-quant layer:
integer weights (packed below 8 bits) with their scales, the activation ranges, and a kernel chosen
per device on first use. A kernel is a small class (:class:`Kernel`) with
``supports(layer, device) -> None | reason`` and a callable instance (built once per device: it
pre-packs the weights); :func:`select_kernel` tries the registered ones (:data:`KERNELS`, filled by
:mod:`~torchcompress.quant.kernels`) in order and falls back to :class:`DequantKernel`, which
dequantizes the weights on the fly and simulates the activation quantization exactly, so a
converted model always computes what the fake-quant model promised, fast or not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ..errors import CompressionStateError
from ..layers import Geometry
from . import functional as QF
from .geometry import geometry_repr, symmetric_padding
from .kernel_base import (
    _UNARY,
    KERNELS,
    RUNTIME_KERNELS,
    RUNTIMES,
    DequantKernel,
    Kernel,
    _main_reason,
    select_kernel,
)
from .modules import FakeQuantize, QuantizedModule, QuantLayer, _keep_float32

__all__ = [
    "KERNELS",
    "RUNTIMES",
    "RUNTIME_KERNELS",
    "DequantKernel",
    "IntLayer",
    "Kernel",
    "select_kernel",
]


def _act_format(fq: FakeQuantize) -> dict[str, Any]:
    return {
        "dynamic": bool(fq.dynamic),
        "granularity": fq.granularity,
        "qmin": int(fq.quant_min),
        "qmax": int(fq.quant_max),
        "symmetric": bool(fq.spec.symmetric),
        "bits": int(fq.spec.bits),
    }


class IntLayer(QuantizedModule):
    """A converted layer (Linear, convolution, any registered layer kind): integer weights, real
    integer kernels where they exist.

    State (all plain tensors, so :func:`torchcompress.save` stores exactly this): ``qweight``
    (integers offset by ``-qmin``: one byte each for 5 to 8 bits, packed two per byte for 3-4 bits
    and four per byte for 2 bits), ``weight_scale`` / ``weight_zero_point``, a float ``bias``, and
    the activation ranges (``input_scale`` / ``input_zero_point`` for static inputs, ``output_*``
    and ``accum_*`` where the integer graph keeps the output or a residual operand integer).

    At the first forward on a device, a kernel is chosen (:mod:`torchcompress.quant.kernels`) and
    the weights are pre-packed for it; ``repr`` says which kernel runs and, for the dequantizing
    fallback, why no integer kernel applies.

    Args:
        geometry: the dense map (:class:`~torchcompress.layers.Geometry`; its ``bias`` says whether
            the layer has a bias).

    Attributes:
        geometry: the layer's geometry (the weights are ``geometry.weight_shape``, canonical).
        wfmt: the weight format (``bits``, ``qmin``, ``qmax``, ``granularity``, ``group_size``,
            ``symmetric``), or ``None`` for float weights.
        act: the input format (``dynamic``, ``granularity``, ``qmin``, ``qmax``, ``symmetric``,
            ``bits``), or ``None`` (weight-only).
        out: the integer output range (``qmin``, ``qmax``) when the output stays integer.
        unary: ``"relu"`` / ``"relu6"`` fused after the layer (and after the residual add).
        runtime: how the layer runs where no integer kernel takes its activations (weight-only
            layers): one of :data:`RUNTIMES`.
    """

    def __init__(
        self,
        geometry: Geometry,
        *,
        wfmt: dict[str, Any] | None,
        act: dict[str, Any] | None,
        out: dict[str, Any] | None = None,
        accum: dict[str, Any] | None = None,
        unary: str | None = None,
        dequant_output: bool = False,
        graph_mode: bool = False,
        fuse_siblings: bool = True,
        source: str = "",
        runtime: str = "cache",
        bias_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.geometry = geometry
        #: the runtime mode of a layer without an integer kernel (see :data:`RUNTIMES`)
        self.runtime = runtime
        self.wfmt = wfmt
        self.act = act
        self.out = out
        self.unary = unary
        self.dequant_output = dequant_output
        #: the layer is a node of an integer graph (its input quantizer is the graph's)
        self.graph_mode = graph_mode
        self.source = source or geometry.kind
        #: the dtype of float outputs when the input is integer (the model's dtype)
        self.float_dtype = bias_dtype
        rows, cols = geometry.matrix_shape
        numel = rows * cols
        if wfmt is None:
            self.register_buffer(
                "qweight", torch.zeros(self.weight_shape, dtype=bias_dtype, device=device)
            )
            qshape: tuple[int, ...] = (1,)
        else:
            sb = QF.storage_bits(int(wfmt["bits"]))
            if sb == 16:
                stored = torch.zeros(numel, dtype=torch.int16, device=device)
            else:
                per = 8 // sb
                stored = torch.zeros((numel + per - 1) // per, dtype=torch.uint8, device=device)
            self.register_buffer("qweight", stored)
            qshape = QF.qparam_shape(rows, cols, wfmt["granularity"], wfmt.get("group_size"))
        self.register_buffer("weight_scale", torch.ones(qshape, device=device))
        # signed symmetric weights have all-zero zero points: stored as one zero, not one per scale
        zero_free = wfmt is not None and wfmt["symmetric"] and wfmt["qmin"] < 0
        zshape = (1,) if zero_free or wfmt is None else qshape
        self.register_buffer(
            "weight_zero_point", torch.zeros(zshape, dtype=torch.int32, device=device)
        )
        self.register_buffer(
            "bias", torch.zeros(rows, dtype=bias_dtype, device=device) if geometry.bias else None
        )
        if act is not None and not act["dynamic"]:
            self.register_buffer("input_scale", torch.ones(1, device=device))
            self.register_buffer(
                "input_zero_point", torch.zeros(1, dtype=torch.int32, device=device)
            )
        if out is not None:
            self.register_buffer("output_scale", torch.ones(1, device=device))
            self.register_buffer(
                "output_zero_point", torch.zeros(1, dtype=torch.int32, device=device)
            )
        self.accum = accum
        self.has_accum = accum is not None
        if accum is not None:
            self.register_buffer("accum_scale", torch.ones(1, device=device))
            self.register_buffer(
                "accum_zero_point", torch.zeros(1, dtype=torch.int32, device=device)
            )
        #: may share a GEMM with sibling layers (see :class:`SiblingGroup`)
        self.fuse_siblings = fuse_siblings
        #: set by the integer graph: the residual operand is not used after this layer, so the
        #: kernel may accumulate into it in place
        self.accum_inplace_ok = False
        #: the layer whose weight tensors this one shares (a later call of a layer the graph
        #: calls several times), or ``""``
        self.weights_of = ""
        self._kernel: Kernel | None = None
        self._kernel_reasons: list[str] = []
        self._qp: dict[str, tuple[float, int]] = {}

    # -- sizes, from the geometry --------------------------------------------------------------

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The canonical weight shape ``(out, in / groups, *kernel)``."""
        return self.geometry.weight_shape

    @property
    def out_channels(self) -> int:
        """Output features (channels): the rows of the 2-D weight."""
        return self.geometry.out_features

    @property
    def cols(self) -> int:
        """Inputs per output, kernel taps included: the columns of the 2-D weight."""
        return self.geometry.n

    @property
    def in_features(self) -> int:
        """The columns of the 2-D weight (a Linear map's input features)."""
        return self.geometry.n

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_quant(
        cls,
        layer: QuantLayer,
        *,
        input_fq: FakeQuantize | None,
        output_fq: FakeQuantize | None = None,
        accum_fq: FakeQuantize | None = None,
        unary: str | None = None,
        graph_mode: bool = False,
    ) -> IntLayer:
        """Convert a fake-quant layer (given the quantizers of its input, output and residual)."""
        w = layer.weight.detach()
        rows, cols = layer.weight_shape2d
        wq = layer.weight_quant
        for q in (wq, input_fq, output_fq, accum_fq):
            if q is not None and not q.calibrated:
                raise CompressionStateError(
                    f"A quantizer of {q.name or type(layer).__name__} was never calibrated; run "
                    "tc.quantize with calib_data (static mode), or train the model prepared for "
                    "QAT, before tc.convert."
                )
        wfmt = None
        if wq is not None:
            wfmt = {
                "bits": int(wq.spec.bits),
                "qmin": int(wq.quant_min),
                "qmax": int(wq.quant_max),
                "granularity": wq.granularity,
                "group_size": wq.group_size,
                "symmetric": bool(wq.spec.symmetric),
            }
        act = _act_format(input_fq) if input_fq is not None else None
        out = None
        if output_fq is not None:
            out = {"qmin": int(output_fq.quant_min), "qmax": int(output_fq.quant_max)}
        new = cls(
            dataclasses.replace(layer.geometry, bias=layer.bias is not None),
            wfmt=wfmt,
            act=act,
            out=out,
            accum=None
            if accum_fq is None
            else {"qmin": int(accum_fq.quant_min), "qmax": int(accum_fq.quant_max)},
            unary=unary,
            dequant_output=out is not None and not graph_mode,
            graph_mode=graph_mode,
            source=layer.source,
            bias_dtype=w.dtype,
            device=w.device,
        )
        with torch.no_grad():
            if wq is None:
                new.qweight.copy_(w)
            else:
                q = QF.quantize_weight(
                    w.reshape(rows, cols).float(),
                    wq.scale.detach(),
                    wq.zero_point.detach().round().to(torch.int32),
                    wq.quant_min,
                    wq.quant_max,
                    wq.granularity,
                    wq.group_size,
                )
                new.qweight.copy_(QF.pack_int(q, int(wq.spec.bits), int(wq.quant_min)))
                new.weight_scale.copy_(wq.scale.detach().float())
                zp = wq.zero_point.detach().round().to(torch.int32)
                if new.weight_zero_point.shape != zp.shape:
                    if bool((zp != 0).any()):
                        raise CompressionStateError(
                            f"{wq.name}: a symmetric weight format has non-zero zero points."
                        )
                else:
                    new.weight_zero_point.copy_(zp)
            if layer.bias is not None:
                new.bias.copy_(layer.bias.detach())
            for prefix, fq in (("input", input_fq), ("output", output_fq), ("accum", accum_fq)):
                if fq is not None and hasattr(new, f"{prefix}_scale"):
                    getattr(new, f"{prefix}_scale").copy_(fq.scale.detach().float().reshape(1))
                    getattr(new, f"{prefix}_zero_point").copy_(
                        fq.zero_point.detach().round().to(torch.int32).reshape(1)
                    )
        new.train(layer.training)
        return new

    # -- helpers used by the kernels ----------------------------------------------------------

    def _u8_qparams(self, prefix: str, qmin: int) -> tuple[float, int]:
        key = prefix
        if key not in self._qp:
            s = float(getattr(self, f"{prefix}_scale").reshape(-1)[0])
            z = int(getattr(self, f"{prefix}_zero_point").reshape(-1)[0])
            self._qp[key] = (s, z - qmin)
        return self._qp[key]

    def in_qparams(self) -> tuple[float, int]:
        """Static input ``(scale, zero point of the uint8 storage)``."""
        return self._u8_qparams("input", int(self.act["qmin"]))  # type: ignore[index]

    def out_qparams(self) -> tuple[float, int]:
        """Integer output ``(scale, zero point of the uint8 storage)``."""
        return self._u8_qparams("output", int(self.out["qmin"]))  # type: ignore[index]

    def accum_qparams(self) -> tuple[float, int]:
        """Residual operand ``(scale, zero point of the uint8 storage)``."""
        return self._u8_qparams("accum", int(self.accum["qmin"]))  # type: ignore[index]

    def int_weight(self) -> Tensor:
        """The integer weights ``[rows, cols]`` (int32)."""
        if self.wfmt is None:
            raise CompressionStateError("this layer keeps float weights")
        return QF.unpack_int(
            self.qweight,
            int(self.wfmt["bits"]),
            int(self.wfmt["qmin"]),
            self.out_channels * self.cols,
        ).reshape(self.out_channels, self.cols)

    def weight_zero_points(self) -> Tensor:
        """The weight zero points in the shape of the scales (zeros for symmetric formats)."""
        zp = self.weight_zero_point
        if zp.shape != self.weight_scale.shape:
            return zp.expand(self.weight_scale.shape)
        return zp

    def dequantized_weight(self) -> Tensor:
        """The real weights, in ``weight_shape``."""
        if self.wfmt is None:
            return self.qweight
        w = QF.dequantize_weight(
            self.int_weight(),
            self.weight_scale,
            self.weight_zero_points(),
            self.wfmt["granularity"],
            self.wfmt.get("group_size"),
        )
        return w.reshape(self.weight_shape)

    def simulate_input(self, x: Tensor) -> Tensor:
        """The input as the integer layer sees it, in float (exactly the fake-quant simulation)."""
        if x.dtype == torch.uint8:
            s, z = self.in_qparams()
            return QF.dequantize_u8(x, s, z)
        a = self.act
        if a is None:
            return x
        if a["dynamic"]:
            s_t, z_t = QF.dynamic_qparams(
                x, a["granularity"], a["qmin"], a["qmax"], symmetric=a["symmetric"]
            )
        else:
            s_t, z_t = self.input_scale, self.input_zero_point
        return QF.fake_quantize(x, s_t, z_t, int(a["qmin"]), int(a["qmax"]))

    def apply_unary(self, y: Tensor) -> Tensor:
        """The fused activation (ReLU or ReLU6), if any."""
        return _UNARY[self.unary](y) if self.unary else y

    def int_padding(self) -> tuple[int, ...] | None:
        """Numeric symmetric padding (``'same'`` resolved), or ``None`` if it is asymmetric."""
        return symmetric_padding(self.geometry)

    # -- running ------------------------------------------------------------------------------

    def kernel_for(self, device: torch.device) -> Kernel:
        """The kernel used on ``device`` (chosen and pre-packed on first use)."""
        k = self._kernel
        if k is None or k.device != device:
            self._qp = {}
            if self.qweight.device != device:
                raise CompressionStateError(
                    f"the layer's weights are on {self.qweight.device} but its input is on {device}"
                )
            k, self._kernel_reasons = select_kernel(self, device)
            k.device = device
            self._kernel = k
        return k

    @property
    def kernel(self) -> Kernel:
        """The kernel for the device the weights are on."""
        return self.kernel_for(self.qweight.device)

    def forward(self, x: Tensor, accum: Tensor | None = None) -> Tensor:
        group = self.__dict__.get("_siblings")
        if group is not None and accum is None:
            y = group.run(self, x)
            if y is not None:
                return y
        y = self.kernel_for(x.device)(self, x, accum)
        if self.dequant_output and y.dtype == torch.uint8:
            s, z = self.out_qparams()
            dtype = x.dtype if x.is_floating_point() else self.float_dtype
            return QF.dequantize_u8(y, s, z, dtype)
        return y

    def _apply(self, fn: Any, recurse: bool = True) -> IntLayer:
        self._kernel = None  # device or dtype change: re-pack on next use
        self._qp = {}
        group = self.__dict__.get("_siblings")
        if group is not None:
            group.fused = None
        super()._apply(fn, recurse)
        _keep_float32(self, ("weight_scale", "input_scale", "output_scale", "accum_scale"))
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_kernel"] = None
        state["_qp"] = {}
        return state

    def kernel_note(self) -> str:
        """``"int8 oneDNN kernel"``, or ``"dequantized on the fly (<reason>)"``."""
        k = self.kernel
        if isinstance(k, DequantKernel):
            reason = _main_reason(self._kernel_reasons)
            if self.act is None and not (self.runtime == "w4a8" and reason):
                reason = "weight-only: float activations have no integer kernel"
            note = k.note
            if self.wfmt is not None:
                note += " once, then cached in float" if k.cache else " at every call"
                reason = f"runtime={self.runtime!r}" + (f"; {reason}" if reason else "")
            return f"{note} ({reason})" if reason else note
        return k.note

    def set_runtime(self, runtime: str) -> None:
        """Choose the runtime mode (:data:`RUNTIMES`); the kernel is chosen again on next use."""
        self.runtime = runtime
        self._kernel = None

    def runtime_bytes(self) -> int:
        """Bytes the layer holds in memory once it has run: its state plus what its kernel keeps
        (a cached float weight, pre-packed integer weights)."""
        k = self._kernel
        return self.stored_bytes() + (k.extra_bytes() if k is not None else 0)

    def stored_bytes(self) -> int:
        """Bytes of the layer's state (what is saved; weights shared with another layer, see
        ``weights_of``, are counted there)."""
        shared = {"qweight", "weight_scale", "weight_zero_point", "bias"} if self.weights_of else ()
        return sum(
            t.numel() * t.element_size() for k, t in self.state_dict().items() if k not in shared
        )

    def extra_repr(self) -> str:
        geo = geometry_repr(self.geometry)
        w = self.wfmt
        wdesc = (
            "float weights"
            if w is None
            else (
                f"{'int' if w['qmin'] < 0 else 'uint'}{w['bits']} weights"
                + (
                    f" [{w['qmin']}, {w['qmax']}]"
                    if w["qmax"] - w["qmin"] + 1 < 2 ** w["bits"]
                    else ""
                )
                + f" {w['granularity']}"
                + (f" {w['group_size']}" if w.get("group_size") is not None else "")
            )
        )
        a = self.act
        adesc = (
            "float activations"
            if a is None
            else (
                f"{'dynamic' if a['dynamic'] else 'static'} {a['granularity']} activations [{a['qmin']}, {a['qmax']}]"
            )
        )
        extra = ""
        if self.has_accum:
            extra += ", + residual"
        if self.unary:
            extra += f", {self.unary}"
        if self.out is not None:
            extra += ", integer output"
        try:
            note = self.kernel_note()
        except Exception as e:  # repr must not fail
            note = f"kernel unavailable: {e}"
        return f"{geo}, {wdesc}, {adesc}{extra}: {note}"
