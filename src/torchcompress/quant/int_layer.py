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
import torch.nn.functional as F
from torch import Tensor

from ..errors import CompressionStateError
from ..layers import Geometry
from ..layers import forward as layer_forward
from ..registry import Registry
from . import functional as QF
from .geometry import geometry_repr, symmetric_padding
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

#: name -> kernel class, tried in registration order (see :mod:`torchcompress.quant.kernels`)
KERNELS: Registry[type[Kernel]] = Registry("kernel")

#: name -> kernel class of the low-bit runtime modes of weight-only layers (see :data:`RUNTIMES`
#: and :mod:`~torchcompress.quant.lowbit`), tried after :data:`KERNELS`
RUNTIME_KERNELS: Registry[type[Kernel]] = Registry("runtime kernel")

#: How a layer without an integer kernel for its activations (weight-only layers, and the other
#: dequantizing fallbacks) runs (see :func:`torchcompress.convert`): ``"cache"`` dequantizes the
#: weights on the first call and keeps them (float speed, float weights in memory at run time,
#: low-bit on disk); ``"lowbit"`` keeps only the low-bit weights in memory and runs the device's
#: low-bit kernel where one exists (CUDA: int4 tinygemm), else dequantizes at every call;
#: ``"w4a8"`` (CPU, opt-in, approximate) unpacks the weights once to int8 and runs fbgemm's int8
#: GEMM with activations quantized per call (dynamic, per tensor).
RUNTIMES = ("cache", "lowbit", "w4a8")


class Kernel:
    """Base class of integer kernels. Subclasses set ``name`` and ``note`` and implement
    :meth:`supports` and :meth:`__call__`; :meth:`accepts` says which layer geometries they run.

    Attributes:
        name: the registered name.
        note: what the layer's ``repr`` and the profiler say runs it.
    """

    name = "kernel"
    note = ""

    @classmethod
    def accepts(cls, geometry: Geometry) -> str | None:
        """``None`` if the kernel runs layers of ``geometry`` (any registered layer kind), else
        why not (default: every geometry)."""
        return None

    @classmethod
    def fuses_residual(cls, geometry: Geometry) -> bool:
        """Whether the kernel adds a residual operand (and the activation after it) inside the
        integer kernel for layers of ``geometry``, before re-quantizing the output. Graph-mode
        quantization plans such an add as part of the layer (default: no)."""
        return False

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        """``None`` if this kernel runs ``m`` on ``device``, else the reason it cannot."""
        raise NotImplementedError

    def __init__(self, m: IntLayer) -> None:
        self.device = m.qweight.device

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        raise NotImplementedError

    def extra_bytes(self) -> int:
        """Bytes the kernel keeps besides the layer's state (pre-packed or cached weights)."""
        return 0

    @classmethod
    def kind_reason(cls, m: IntLayer) -> str | None:
        """``None`` if the kernel runs a layer of ``m``'s kind and shape (:meth:`accepts` on its
        geometry), else why not."""
        return cls.accepts(m.geometry)


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


_UNARY = {"relu": torch.relu, "relu6": F.relu6}


def _main_reason(reasons: list[str]) -> str:
    """The most informative reason no integer kernel applied (skipping kernels for other cases)."""
    for r in reasons:
        why = r.partition(": ")[2]
        if not why.startswith("n/a"):
            return why
    return ""


class DequantKernel(Kernel):
    """No integer kernel: dequantize the weights on the fly and simulate the activations exactly."""

    name = "dequant"
    note = "dequantized on the fly"

    @classmethod
    def supports(cls, m: IntLayer, device: torch.device) -> str | None:
        return None

    def __init__(self, m: IntLayer) -> None:
        super().__init__(m)
        #: keep the dequantized weights after the first call (every runtime but ``"lowbit"``)
        self.cache = m.wfmt is not None and m.runtime != "lowbit"
        self._cached: dict[torch.dtype, tuple[tuple[int, ...], Tensor, Tensor | None]] = {}
        #: a weight-only layer with nothing fused: float input -> the float layer's own op
        self.plain = (
            self.cache and m.act is None and m.out is None and not m.has_accum and not m.unary
        )
        self.kind = m.geometry.layer_kind

    def weights(self, m: IntLayer, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """The float weight and bias in ``dtype`` (dequantized again if the state changed)."""
        if not self.cache:
            return m.dequantized_weight().to(dtype), None if m.bias is None else m.bias.to(dtype)
        key = _state_key(m)
        hit = self._cached.get(dtype)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                w = m.dequantized_weight().to(dtype).contiguous()
                b = None if m.bias is None else m.bias.to(dtype)
            hit = self._cached[dtype] = (key, w, b)
        return hit[1], hit[2]

    def extra_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for _, w, _ in self._cached.values())

    def __call__(self, m: IntLayer, x: Tensor, accum: Tensor | None) -> Tensor:
        if self.plain and accum is None:  # the common weight-only case, with little overhead
            hit = self._cached.get(x.dtype)
            if hit is not None and hit[0] == _state_key(m):
                return self.kind.forward(m.geometry, x, hit[1], hit[2])
        dtype = x.dtype if x.is_floating_point() else m.float_dtype
        xf = m.simulate_input(x)
        w, b = self.weights(m, xf.dtype)
        y = layer_forward(m.geometry, xf, w, b)
        if accum is not None:
            acs, acz = m.accum_qparams()
            y = y + QF.dequantize_u8(accum, acs, acz).to(y.dtype)
        y = m.apply_unary(y)
        if m.out is not None:
            lo, hi = int(m.out["qmin"]), int(m.out["qmax"])
            if hi - lo > 255:  # wider than the uint8 storage: stays float, fake-quantized
                y = QF.fake_quantize(y, m.output_scale, m.output_zero_point, lo, hi)
                return y if y.dtype == dtype else y.to(dtype)
            os_, oz = m.out_qparams()
            return QF.quantize_u8(y, os_, oz, hi - lo)
        return y if y.dtype == dtype else y.to(dtype)


def _state_key(m: IntLayer) -> tuple[int, ...]:
    """Identifies the state the weights are dequantized from (changes when a tensor is replaced
    or written in place, e.g. by ``load_state_dict``)."""
    b = m._buffers  # (not the module's attribute lookup: this runs at every call)
    q, s, z, bias = b["qweight"], b["weight_scale"], b["weight_zero_point"], b.get("bias")
    return (
        id(q),
        q._version,
        id(s),
        s._version,
        id(z),
        z._version,
        id(bias),
        -1 if bias is None else bias._version,
    )


def select_kernel(m: IntLayer, device: torch.device) -> tuple[Kernel, list[str]]:
    """The first registered kernel (:data:`KERNELS`, then :data:`RUNTIME_KERNELS`) that supports
    ``m`` on ``device`` (else :class:`DequantKernel`).

    Returns:
        ``(kernel, reasons)``: the built kernel, and why each earlier kernel did not apply.
    """
    reasons: list[str] = []
    for name, cls in [
        *((n, KERNELS.get(n)) for n in KERNELS),
        *((n, RUNTIME_KERNELS.get(n)) for n in RUNTIME_KERNELS),
    ]:
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
