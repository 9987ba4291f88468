"""The kernel protocol of integer layers: the registries :data:`KERNELS` and
:data:`RUNTIME_KERNELS`, the :class:`Kernel` base, the dequantizing fallback
:class:`DequantKernel` and :func:`select_kernel`, which picks the first kernel that runs a layer
(the layers themselves are in :mod:`~torchcompress.quant.int_layer`).

Example:
    >>> from torchcompress.quant.kernel_base import KERNELS, RUNTIMES
    >>> RUNTIMES
    ('cache', 'lowbit', 'w4a8')
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layers import Geometry
from ..layers import forward as layer_forward
from ..registry import Registry
from . import functional as QF
from .modules import QuantizedModule

__all__ = ["KERNELS", "RUNTIMES", "RUNTIME_KERNELS", "DequantKernel", "Kernel", "select_kernel"]

IntLayer = QuantizedModule  # what kernels run: an integer layer (int_layer.IntLayer)

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
