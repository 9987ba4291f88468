"""Real integer models: :func:`convert` and the integer layer :class:`IntLayer`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .. import io
from ..errors import CompressionStateError
from ..select import set_module
from . import functional as QF
from .graph import (
    _module_of,
    _non_tensor,
    _pass_kind,
    container_of,
    find_groups,
)
from .kernels import DequantKernel, Kernel, dequantize_u8, quantize_u8, select_kernel
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, QuantLayer, QuantLinear

__all__ = ["IntLayer", "SiblingGroup", "convert", "link_siblings"]


def _act_format(fq: FakeQuantize) -> dict[str, Any]:
    return {
        "dynamic": bool(fq.dynamic),
        "granularity": fq.granularity,
        "qmin": int(fq.quant_min),
        "qmax": int(fq.quant_max),
        "symmetric": bool(fq.spec.symmetric),
        "bits": int(fq.spec.bits),
    }


class IntLayer(nn.Module):
    """A converted Linear / Conv1d / Conv2d: integer weights, real integer kernels where they exist.

    State (all plain tensors, so :func:`torchcompress.save` stores exactly this): ``qweight``
    (integers offset by ``-qmin``: one byte each for 5 to 8 bits, packed two per byte for 3-4 bits
    and four per byte for 2 bits), ``weight_scale`` / ``weight_zero_point``, a float ``bias``, and
    the activation ranges (``input_scale`` / ``input_zero_point`` for static inputs, ``output_*``
    and ``accum_*`` where the integer graph keeps the output or a residual operand integer).

    At the first forward on a device, a kernel is chosen (:mod:`torchcompress.quant.kernels`) and
    the weights are pre-packed for it; ``repr`` says which kernel runs and, for the dequantizing
    fallback, why no integer kernel applies.

    Attributes:
        kind: ``"linear"``, ``"conv1d"`` or ``"conv2d"``.
        wfmt: the weight format (``bits``, ``qmin``, ``qmax``, ``granularity``, ``group_size``,
            ``symmetric``), or ``None`` for float weights.
        act: the input format (``dynamic``, ``granularity``, ``qmin``, ``qmax``, ``symmetric``,
            ``bits``), or ``None`` (weight-only).
        out: the integer output range (``qmin``, ``qmax``) when the output stays integer.
        unary: ``"relu"`` / ``"relu6"`` fused after the layer (and after the residual add).
    """

    def __init__(
        self,
        kind: str,
        *,
        in_features: int,
        out_channels: int,
        weight_shape: tuple[int, ...],
        wfmt: dict[str, Any] | None,
        act: dict[str, Any] | None,
        out: dict[str, Any] | None = None,
        accum: dict[str, Any] | None = None,
        unary: str | None = None,
        bias: bool = True,
        dequant_output: bool = False,
        graph_mode: bool = False,
        fuse_siblings: bool = True,
        stride: tuple[int, ...] = (),
        padding: tuple[int, ...] | str = (),
        dilation: tuple[int, ...] = (),
        groups: int = 1,
        padding_mode: str = "zeros",
        source: str = "",
        bias_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.in_features = int(in_features)
        self.out_channels = int(out_channels)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.wfmt = wfmt
        self.act = act
        self.out = out
        self.unary = unary
        self.dequant_output = dequant_output
        #: the layer is a node of an integer graph (its input quantizer is the graph's)
        self.graph_mode = graph_mode
        self.stride = tuple(stride)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.dilation = tuple(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self.source = source or kind
        #: the dtype of float outputs when the input is integer (the model's dtype)
        self.float_dtype = bias_dtype
        rows = self.out_channels
        cols = 1
        for s in self.weight_shape[1:]:
            cols *= s
        self.cols = cols
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
            "bias", torch.zeros(rows, dtype=bias_dtype, device=device) if bias else None
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
        self._kernel: Kernel | None = None
        self._kernel_reasons: list[str] = []
        self._qp: dict[str, tuple[float, int]] = {}

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
                    "tc.quantize with calib_data (static mode) before tc.convert."
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
        kwargs: dict[str, Any] = {}
        if isinstance(layer, QuantLinear):
            kind = "linear"
        else:
            kind = "conv2d" if isinstance(layer, QuantConv2d) else "conv1d"
            if not isinstance(layer, QuantConv2d | QuantConv1d):
                raise RuntimeError(
                    "torchcompress internal error (please report): expected isinstance(layer, QuantConv2d | QuantConv1d)"
                )
            kwargs = {
                "stride": layer.stride,
                "padding": layer.padding,
                "dilation": layer.dilation,
                "groups": layer.groups,
                "padding_mode": layer.padding_mode,
            }
        new = cls(
            kind,
            in_features=cols,
            out_channels=rows,
            weight_shape=tuple(w.shape),
            wfmt=wfmt,
            act=act,
            out=out,
            accum=None
            if accum_fq is None
            else {"qmin": int(accum_fq.quant_min), "qmax": int(accum_fq.quant_max)},
            unary=unary,
            bias=layer.bias is not None,
            dequant_output=out is not None and not graph_mode,
            graph_mode=graph_mode,
            source=layer.source,
            bias_dtype=w.dtype,
            device=w.device,
            **kwargs,
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
            return dequantize_u8(x, s, z)
        a = self.act
        if a is None:
            return x
        if a["dynamic"]:
            if a["granularity"] == "token":
                s_t, z_t = QF.token_qparams(x, a["qmin"], a["qmax"], symmetric=a["symmetric"])
            else:
                s_t, z_t = QF.tensor_qparams(x, a["qmin"], a["qmax"], symmetric=a["symmetric"])
        else:
            s_t, z_t = self.input_scale, self.input_zero_point
        return QF.fake_quantize(x, s_t, z_t, int(a["qmin"]), int(a["qmax"]))

    def apply_unary(self, y: Tensor) -> Tensor:
        """The fused activation (ReLU or ReLU6), if any."""
        if self.unary == "relu":
            return torch.relu(y)
        if self.unary == "relu6":
            return F.relu6(y)
        return y

    def int_padding(self) -> tuple[int, ...] | None:
        """Numeric symmetric padding (``'same'`` resolved), or ``None`` if it is asymmetric."""
        if not isinstance(self.padding, str):
            return self.padding  # type: ignore[return-value]
        if self.padding == "valid":
            return tuple(0 for _ in self.dilation)
        out = []
        for d, k in zip(self.dilation, self.weight_shape[2:]):
            total = d * (k - 1)
            if total % 2:
                return None
            out.append(total // 2)
        return tuple(out)

    def reversed_padding(self) -> list[int]:
        """Padding for ``F.pad`` (non-zero padding modes)."""
        out: list[int] = []
        pad = self.int_padding() or tuple(0 for _ in self.dilation)
        for p in reversed(pad):
            out += [p, p]
        return out

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
            return dequantize_u8(y, s, z, dtype)
        return y

    def _apply(self, fn: Any, recurse: bool = True) -> IntLayer:
        self._kernel = None  # device or dtype change: re-pack on next use
        self._qp = {}
        group = self.__dict__.get("_siblings")
        if group is not None:
            group.fused = None
        super()._apply(fn, recurse)
        from .modules import _keep_float32

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
            if self.act is None:
                reason = "weight-only: float activations have no integer kernel"
            return f"{k.note} ({reason})" if reason else k.note
        return k.note

    def stored_bytes(self) -> int:
        """Bytes of the layer's state (what is saved)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def extra_repr(self) -> str:
        if self.kind == "linear":
            geo = f"in_features={self.in_features}, out_features={self.out_channels}"
        else:
            geo = (
                f"{self.weight_shape[1] * self.groups}, {self.out_channels}, kernel_size="
                f"{tuple(self.weight_shape[2:])}, stride={self.stride}, padding={self.padding}"
            )
            if self.groups != 1:
                geo += f", groups={self.groups}"
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
                + (f" {w['group_size']}" if w["granularity"] == "group" else "")
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


def _main_reason(reasons: list[str]) -> str:
    """The most informative reason no integer kernel applied (skipping kernels for other cases)."""
    for r in reasons:
        why = r.partition(": ")[2]
        if not why.startswith("n/a"):
            return why
    return ""


# --- sibling fusion --------------------------------------------------------------------------

_FUSABLE_KERNELS = ("fbgemm_dynamic", "token", "cuda_int_mm")


class SiblingGroup:
    """Linear layers of one parent that often read the same input (e.g. attention's q, k, v).

    When one member is called with a tensor, the group runs one GEMM with the members' weights
    concatenated (dynamic activations: the same activation quantization for all of them, so the
    result equals the separate calls) and keeps the other members' outputs until they are asked for
    with the very same tensor (same object, unmodified). A member called with another input runs the
    fused GEMM again, so the outputs are always the separate layers'. Only layers with dynamic
    activations and the same formats are grouped.
    """

    def __init__(self, members: list[IntLayer]) -> None:
        self.members = members
        self.fused: IntLayer | None = None
        self.bounds: list[tuple[int, int]] = []
        self._x: Tensor | None = None
        self._copy: Tensor | None = None
        self._version = -1
        self._outs: dict[int, Tensor] = {}
        self._starter = -1
        self.starts: dict[int, int] = {}  # fused runs each member started
        self.hits: dict[int, int] = {}  # outputs of those runs served to siblings

    def _build(self, device: torch.device) -> IntLayer | None:
        ref = self.members[0]
        rows = sum(m.out_channels for m in self.members)
        wfmt = dict(ref.wfmt)  # type: ignore[arg-type]
        wfmt["granularity"] = "channel"
        fused = IntLayer(
            "linear",
            in_features=ref.in_features,
            out_channels=rows,
            weight_shape=(rows, ref.in_features),
            wfmt=wfmt,
            act=dict(ref.act),  # type: ignore[arg-type]
            bias=any(m.bias is not None for m in self.members),
            bias_dtype=ref.bias.dtype if ref.bias is not None else torch.float32,
            device=device,
        )
        with torch.no_grad():
            q = torch.cat([m.int_weight() for m in self.members])
            fused.qweight.copy_(QF.pack_int(q, int(wfmt["bits"]), int(wfmt["qmin"])))
            fused.weight_scale.copy_(
                torch.cat(
                    [
                        m.weight_scale.float().reshape(-1).expand(m.out_channels)
                        for m in self.members
                    ]
                )
            )
            if fused.bias is not None:
                fused.bias.copy_(
                    torch.cat(
                        [
                            m.bias
                            if m.bias is not None
                            else torch.zeros(m.out_channels, device=device)
                            for m in self.members
                        ]
                    )
                )
        if fused.kernel_for(device).name not in _FUSABLE_KERNELS:
            return None
        self.bounds = []
        start = 0
        for m in self.members:
            self.bounds.append((start, start + m.out_channels))
            start += m.out_channels
        return fused

    def run(self, member: IntLayer, x: Tensor) -> Tensor | None:
        """The member's output from the fused GEMM, or ``None`` to run it alone."""
        i = next((k for k, m in enumerate(self.members) if m is member), -1)
        if (
            i < 0
            or len(self.members) < 2
            or member.kernel_for(x.device).name not in _FUSABLE_KERNELS
        ):
            return None
        if self._x is x and i in self._outs and self._unchanged(x):
            out = self._outs.pop(i)
            self.hits[self._starter] = self.hits.get(self._starter, 0) + 1
            if not self._outs:
                self._x = self._copy = None
            return out
        starter = (
            self.members[self._starter]
            if self._x is not None and self._starter < len(self.members)
            else None
        )
        if (
            starter is not None
            and self.starts.get(self._starter, 0) >= 3
            and not self.hits.get(self._starter, 0)
        ):
            # its fused runs never served a sibling (it reads another input): run it alone
            self.members = [m for m in self.members if m is not starter]
            self.fused, self._x, self._outs, self.starts, self.hits = None, None, {}, {}, {}
            if member is starter or len(self.members) < 2:
                return None
            i = self.members.index(member)
        if self.fused is None or self.fused.qweight.device != x.device:
            self.fused = self._build(x.device)
            if self.fused is None:
                self.members = []
                return None
        self.starts[i] = self.starts.get(i, 0) + 1
        self._starter = i
        y = self.fused(x)
        outs = {k: y[..., a:b].contiguous() for k, (a, b) in enumerate(self.bounds)}
        out = outs.pop(i)
        self._x, self._outs = x, outs
        if x.is_inference():  # no version counter: fingerprint a sample to detect in-place changes
            self._version, self._copy = -1, _fingerprint(x)
        else:
            self._version, self._copy = x._version, None
        return out

    def _unchanged(self, x: Tensor) -> bool:
        if self._copy is not None:
            return bool(torch.equal(_fingerprint(x), self._copy))
        return not x.is_inference() and x._version == self._version

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["fused"] = None
        state["_x"] = None
        state["_copy"] = None
        state["_outs"] = {}
        return state


def _fingerprint(x: Tensor, n: int = 4096) -> Tensor:
    """A strided sample of ``x`` (inference tensors have no version counter to check)."""
    flat = x.detach().reshape(-1)
    step = max(1, flat.numel() // n)
    return flat[::step].clone()


def _sibling_key(m: IntLayer) -> tuple[Any, ...] | None:
    a, w = m.act, m.wfmt
    if m.kind != "linear" or a is None or not a["dynamic"] or w is None or m.out is not None:
        return None
    if w["granularity"] not in ("tensor", "channel"):
        return None
    return (
        m.in_features,
        tuple(sorted(a.items())),
        w["bits"],
        w["qmin"],
        w["qmax"],
        w["symmetric"],
        m.unary,
        str(m.qweight.device),
    )


def link_siblings(parent: nn.Module) -> int:
    """Group the dynamic integer Linear children of ``parent`` that can share one GEMM.

    Returns:
        The number of layers grouped.
    """
    by_key: dict[tuple[Any, ...], list[IntLayer]] = {}
    for child in parent.children():
        if isinstance(child, IntLayer) and child.fuse_siblings:
            key = _sibling_key(child)
            if key is not None:
                by_key.setdefault(key, []).append(child)
    n = 0
    for members in by_key.values():
        group = SiblingGroup(members) if len(members) > 1 else None
        for m in members:
            object.__setattr__(m, "_siblings", group)
        n += len(members) if group else 0
    return n


# --- the integer graph -----------------------------------------------------------------------


@dataclass(frozen=True)
class _QP:
    scale: float
    zp: int
    qmin: int
    qmax: int

    @property
    def zpk(self) -> int:
        return self.zp - self.qmin

    @property
    def hi(self) -> int:
        return self.qmax - self.qmin


def _qp_of(fq: FakeQuantize) -> _QP:
    return _QP(
        float(fq.scale.detach().reshape(-1)[0]),
        int(fq.zero_point.reshape(-1)[0].round()),
        int(fq.quant_min),
        int(fq.quant_max),
    )


def relu_u8(u: Tensor, zpk: int, inplace: bool = False) -> Tensor:
    """ReLU of integer activations stored as uint8 with zero point ``zpk`` (in place like the
    model's own ReLU, when that one is)."""
    if zpk <= 0:
        return u
    return u.clamp_min_(zpk) if inplace else u.clamp_min(zpk)


def pad_u8(u: Tensor, pad: Any, zpk: int) -> Tensor:
    """Zero padding of integer activations (pads with the zero point)."""
    return F.pad(u, pad, mode="constant", value=zpk)


def requantize_u8(u: Tensor, s_in: float, z_in: int, s_out: float, z_out: int, hi: int) -> Tensor:
    """Re-quantize uint8 activations to other parameters."""
    return quantize_u8(dequantize_u8(u, s_in, z_in), s_out, z_out, hi)


def build_integer_graph(model: nn.Module, graph: fx.Graph, *, configure: bool = True) -> fx.Graph:
    """The integer graph of a model quantized in graph mode (see :mod:`torchcompress.quant.graph`).

    With ``configure``, the fake-quant layers of the graph are replaced by :class:`IntLayer` s set
    up with the graph's activation ranges; otherwise they are already integer (a loaded model).
    """
    modules = dict(model.named_modules())
    targets = {n for n, m in modules.items() if isinstance(m, QuantLayer | IntLayer)}
    # (with fuse_residual=False the residual adds are separated from the convolutions by the
    # output quantizers already in the graph: they run as float adds between quantize steps)
    groups = find_groups(graph, modules, targets)
    member: dict[fx.Node, Any] = {}
    for g in groups.values():
        for n in (g.layer, g.add, g.act):
            if n is not None:
                member[n] = g

    def fq_of(node: fx.Node) -> FakeQuantize | None:
        m = _module_of(node, modules)
        return m if isinstance(m, FakeQuantize) else None

    out_fq: dict[fx.Node, fx.Node] = {}  # group tail -> its output quantizer node
    for g in groups.values():
        for u in g.tail.users:
            if fq_of(u) is not None and str(u.target).endswith(f".output_{g.layer.name}"):
                out_fq[g.tail] = u
    new = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    qp: dict[fx.Node, _QP] = {}
    deq: dict[fx.Node, fx.Node] = {}
    from ..select import module_device_dtype

    fdtype = module_device_dtype(model)[1] or torch.float32

    def as_float(n: fx.Node) -> fx.Node:
        if n in qp:
            if n not in deq:
                p = qp[n]
                deq[n] = new.call_function(dequantize_u8, (env[n], p.scale, p.zpk, fdtype))
            return deq[n]
        return env[n]

    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = new.node_copy(node, lambda n: env[n])
            continue
        if node.op == "output":
            new.output(fx.map_arg(node.args[0], as_float))
            continue
        fq = fq_of(node)
        if fq is not None:
            src = node.args[0]
            p = _qp_of(fq)
            if isinstance(src, fx.Node) and src in out_fq and out_fq[src] is node:
                env[node] = env[src]
                qp[node] = qp[src]
            elif isinstance(src, fx.Node) and src in qp:
                ps = qp[src]
                if ps == p:
                    env[node] = env[src]
                else:
                    env[node] = new.call_function(
                        requantize_u8, (env[src], ps.scale, ps.zpk, p.scale, p.zpk, p.hi)
                    )
                qp[node] = p
            else:
                env[node] = new.call_function(quantize_u8, (env[src], p.scale, p.zpk, p.hi))
                qp[node] = p
            continue
        if node in member:
            g = member[node]
            if node is not g.tail:
                continue
            x_old = g.layer.args[0]
            name = str(g.layer.target)
            ofq_node = out_fq.get(node)
            if configure:
                layer = modules[name]
                in_fq = _producer_fq(x_old, modules, qp)
                acc_fq = _producer_fq(g.other, modules, qp) if g.other is not None else None
                ofq = fq_of(ofq_node) if ofq_node is not None else None
                int_layer = IntLayer.from_quant(
                    layer,  # type: ignore[arg-type]
                    input_fq=in_fq,
                    output_fq=ofq,
                    accum_fq=acc_fq,
                    unary=g.act_kind,
                    graph_mode=True,
                )
                set_module(model, name, int_layer)
                modules[name] = int_layer
            args: tuple[Any, ...] = (env[x_old],)
            if g.other is not None:
                args = (*args, env[g.other])
            env[node] = new.call_module(name, args)
            if ofq_node is not None:
                qp[node] = _qp_of(fq_of(ofq_node))  # type: ignore[arg-type]
            continue
        pk = _pass_kind(node, modules)
        x = node.args[0] if node.args else None
        if pk is not None and isinstance(x, fx.Node) and x in qp:
            p = qp[x]
            if pk == "relu":
                env[node] = new.call_function(relu_u8, (env[x], p.zpk, _is_inplace(node, modules)))
            elif pk == "pad":
                pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
                env[node] = new.call_function(
                    pad_u8, (env[x], fx.map_arg(pad, lambda n: env[n]), p.zpk)
                )
            elif isinstance(
                _module_of(node, modules), nn.Dropout | nn.Dropout1d | nn.Dropout2d | nn.Identity
            ):
                env[node] = env[x]
            else:
                env[node] = new.node_copy(node, lambda n: env[n])
            qp[node] = p
            continue
        if _non_tensor(node):
            env[node] = new.node_copy(node, lambda n: env[n])
        else:
            env[node] = new.node_copy(node, as_float)
    new.lint()
    _mark_inplace_accum(new, modules)
    return new


def _mark_inplace_accum(graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Let a fused residual add write into its operand when nothing reads that tensor afterwards."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    ok: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 2:
            continue
        if not isinstance(modules.get(str(node.target)), IntLayer):
            continue
        safe = True
        a = node.args[1]
        seen = 0
        while isinstance(a, fx.Node) and seen < 1000:
            seen += 1
            if a.op == "placeholder" or any(
                order[u] > order[node] for u in a.users if u is not node
            ):
                safe = False
                break
            if a.op == "call_function" and a.target in (quantize_u8, requantize_u8):
                break  # a fresh tensor
            if a.op == "call_module" and isinstance(modules.get(str(a.target)), IntLayer):
                break  # a layer's output: a fresh tensor
            if not a.args:
                safe = False
                break
            a = a.args[0]  # a view or an alias of its input: check the input too
        name = str(node.target)
        ok[name] = ok.get(name, True) and safe
    for name, v in ok.items():
        modules[name].accum_inplace_ok = v  # type: ignore[union-attr]


def _is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    m = _module_of(node, modules)
    if m is not None:
        return bool(getattr(m, "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return bool(node.kwargs.get("inplace", False)) or node.target is torch.relu_


def _producer_fq(
    node: Any, modules: dict[str, nn.Module], qp: dict[fx.Node, _QP]
) -> FakeQuantize | None:
    """The quantizer whose parameters an integer value carries (following integer-exact ops)."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 10000:
        m = _module_of(node, modules)
        if isinstance(m, FakeQuantize):
            return m
        if not node.args:
            return None
        node = node.args[0]
        seen += 1
    return None


# --- the verb --------------------------------------------------------------------------------


def convert(model: nn.Module, *, fuse_siblings: bool = True) -> nn.Module:
    """Turn a fake-quant model (from :func:`torchcompress.quantize`) into a real integer model.

    Every fake-quant layer becomes an :class:`IntLayer`: weights stored as integers (int8, or
    packed two per byte at 3-4 bits and four per byte at 2 bits) with their scales. On CPU the
    layers run the int8 kernels that ship with PyTorch (oneDNN ``qconv2d_pointwise`` /
    ``qlinear_pointwise`` for static activations, fbgemm ``linear_dynamic`` for dynamic ones); on
    CUDA, Linear layers run ``torch._int_mm``. Where no kernel fits a configuration (group-wise or
    asymmetric weights, weight-only layers, more than 8 bits, a CPU where the kernel would saturate,
    ...), the layer dequantizes its weights on the fly and says so in its ``repr``. A model quantized
    in graph mode runs its integer graph: activations stay uint8 between layers, with ReLUs and
    residual adds fused into the convolutions.

    The outputs equal the fake-quant model's up to the rounding of a value that lies exactly
    between two integers (at most one step of a quantized tensor, rarely).

    Linear layers of one module that read the same input with dynamic activations (attention's
    query, key and value) share one GEMM on their concatenated weights (:class:`SiblingGroup`),
    which gives exactly the separate layers' outputs.

    Args:
        model: a model quantized with :func:`torchcompress.quantize`; modified in place.
        fuse_siblings: group sibling Linear layers into one GEMM (see above).

    Returns:
        ``model``, converted.

    Raises:
        CompressionStateError: the model has no fake-quant layer, or one was never calibrated.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = torch.nn.Sequential(torch.nn.Linear(64, 64))
        >>> m = tc.convert(tc.quantize(m, tc.QuantConfig(mode="dynamic")))
        >>> m[0].qweight.dtype, m[0](torch.randn(2, 64)).shape
        (torch.uint8, torch.Size([2, 64]))
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    if not layers:
        raise CompressionStateError(
            f"{type(model).__name__} has no fake-quant layer to convert; call tc.quantize(model, "
            "config, ...) first."
        )
    container = container_of(model)

    bound = model.__dict__.get("forward")
    converted = container.converted if container is not None else False
    try:
        _convert(model, container)
    except BaseException:
        if bound is not None:
            model.__dict__["forward"] = bound
        if container is not None:
            container.converted = converted
        raise
    if fuse_siblings:
        for parent in {id(p): p for p in _parents_of_int_layers(model)}.values():
            link_siblings(parent)
    else:
        for mod in model.modules():
            if isinstance(mod, IntLayer):
                mod.fuse_siblings = False
    io.add_history(model, "convert", {"fuse_siblings": fuse_siblings})
    return model


def _parents_of_int_layers(model: nn.Module) -> list[nn.Module]:
    out = []
    for mod in model.modules():
        if any(isinstance(c, IntLayer) for c in mod.children()):
            out.append(mod)
    return out


def _convert(model: nn.Module, container: Any) -> None:
    from ..select import snapshot_modules

    with snapshot_modules(model):
        from .qat import finalize_for_convert

        finalize_for_convert(model)  # QAT layers: fold BatchNorms, refresh weight ranges
        if container is not None and not container.converted:
            if container.fake_graph is None:  # e.g. unpickled: trace it again
                from .graph import rebuild

                rebuild(model, container)
            int_graph = build_integer_graph(model, container.fake_graph, configure=True)  # type: ignore[arg-type]
            container.converted = True
            container.bind(model, int_graph)
        for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]:
            new = IntLayer.from_quant(
                layer, input_fq=layer.input_quant, output_fq=layer.output_quant
            )
            set_module(model, name, new)
