"""Fake-quant modules: a quantizer (:class:`FakeQuantize`) and the layers that use it.

:class:`FakeQuantize` simulates an integer format on a tensor: it observes (calibration), holds
the resulting ``scale`` and ``zero_point`` as buffers, and fake-quantizes (quantize then dequantize,
straight-through gradients). :class:`QuantLinear`, :class:`QuantConv1d` and :class:`QuantConv2d`
keep float master weights and fake-quantize their weight, their input and, where the integer model
re-quantizes it, their output. They compute exactly what :func:`torchcompress.convert` runs with
integer kernels. Every module quantization puts in place of a dense layer derives from
:class:`QuantizedModule`: it keeps the :class:`~torchcompress.layers.Geometry` of the layer it replaced
(``geometry``, any registered layer kind: Linear, convolutions, Hugging Face's ``Conv1D``, a kind
registered from outside) and runs its layer through :func:`torchcompress.layers.forward`. Quantizers
and quantized layers are leaves of :mod:`torchcompress.tracing` (never traced into).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CalibrationError, ConfigError, NumericalError
from ..layers import Geometry
from ..layers import forward as layer_forward
from ..tracing import register_leaf
from . import functional as QF
from .geometry import geometry_repr
from .granularity import granularity
from .observers import Observer, ObserverSpec, observer_spec
from .spec import IntSpec

__all__ = [
    "FakeQuantize",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantLayer",
    "QuantLinear",
    "QuantizedModule",
    "quant_layer_class",
]


@register_leaf
class QuantizedModule(nn.Module):
    """Base of every module quantization puts in place of a dense layer (fake-quant, integer,
    codebook): the quantization verbs leave these alone, and ``geometry`` (a
    :class:`~torchcompress.layers.Geometry`) is the dense map the layer computes."""

    geometry: Geometry

    @property
    def kind(self) -> str:
        """The registered layer kind of the layer it replaced (``geometry.kind``)."""
        return self.geometry.kind


@register_leaf
class FakeQuantize(nn.Module):
    """Simulated integer quantization of a weight or an activation.

    States (plain attributes): ``observing`` (feed inputs to the observer), ``enabled`` (apply the
    fake quantization), ``dynamic`` (activations: compute the range of every input at run time,
    per tensor or per token, as the dynamic integer kernels do).

    Contract for quantization-aware training and conversion: a quantizer exposes ``spec``
    (its :class:`IntSpec`), ``quant_min`` / ``quant_max`` (the integer range actually used, which
    may be narrower than the spec's, see ``QuantConfig.reduce_range``), ``scale`` and ``zero_point``
    (tensors of shape ``[1]``, ``[rows]`` or ``[rows, groups]``; ``scale`` may be made an
    ``nn.Parameter`` with :meth:`learnable_scale`), ``dynamic`` and ``calibrated``. Anything
    exposing these converts with :func:`torchcompress.convert`.

    Args:
        spec: the integer format.
        role: ``"weight"`` or ``"activation"`` (activations widen their range to include zero).
        observer: a registered observer name, its spec (e.g. ``Percentile(99.9)``), or an
            :class:`~torchcompress.quant.observers.Observer`.
        dynamic: activations only; ranges from each input (min/max), nothing calibrated.
        quant_min: integer range actually used (default: the spec's full range).
        quant_max: see ``quant_min``.
        shape: ``(rows, cols)`` of the canonical 2-D weight (weights only).
        observer_options: options for an observer given by name (``percentile``, ``bins``, ...;
            those it does not take are ignored).
        name: the owning layer's qualified name, used in error messages.

    Example:
        >>> import torch
        >>> from torchcompress.quant import IntSpec
        >>> from torchcompress.quant.modules import FakeQuantize
        >>> fq = FakeQuantize(IntSpec(8, symmetric=False, signed=False), role="activation")
        >>> fq.observing, fq.enabled = True, False
        >>> _ = fq(torch.linspace(0, 2.55, 100))
        >>> fq.calibrate()
        >>> round(float(fq.scale), 4), int(fq.zero_point)
        (0.01, 0)
    """

    def __init__(
        self,
        spec: IntSpec,
        *,
        role: str = "activation",
        observer: str | ObserverSpec | Observer = "minmax",
        dynamic: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        shape: tuple[int, int] | None = None,
        observer_options: dict[str, Any] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if role not in ("weight", "activation"):
            raise ConfigError(f"FakeQuantize: role must be 'weight' or 'activation', got {role!r}.")
        self.spec = spec
        self.role = role
        self.dynamic = bool(dynamic)
        self.quant_min = spec.qmin if quant_min is None else int(quant_min)
        self.quant_max = spec.qmax if quant_max is None else int(quant_max)
        self.granularity = spec.granularity
        self.group_size = spec.group_size
        self.name = name
        self.include_zero = role == "activation"
        if role == "weight":
            if shape is None:
                raise ConfigError(
                    f"FakeQuantize {name!r}: a weight quantizer needs shape=(rows, cols)."
                )
            self.shape = (int(shape[0]), int(shape[1]))
            qshape = QF.qparam_shape(*self.shape, spec.granularity, spec.group_size)
        else:
            self.shape = None
            qshape = (1,)
        self.register_buffer("scale", torch.ones(qshape))
        self.scale._tc_keep_dtype = True  # replace_modules keeps it float32
        self.register_buffer("zero_point", torch.zeros(qshape, dtype=torch.int32))
        if isinstance(observer, Observer):
            self.observer_spec = observer.spec
            self.observer: Observer | None = observer
        else:
            self.observer_spec = observer_spec(observer, **(observer_options or {}))
            self.observer = None if self.dynamic else self.make_observer()
        self.observing = False
        self.enabled = True
        self.calibrated = self.dynamic
        #: observe ``max(x, 0)`` (an output followed by a ReLU in the integer graph)
        self.observe_relu = False

    @property
    def observer_name(self) -> str:
        """The registered name of the quantizer's observer."""
        return self.observer_spec.name

    def make_observer(self) -> Observer:
        """A fresh observer of :attr:`observer_spec` for the quantizer's current integer range."""
        obs = self.observer_spec.build(
            self.quant_min,
            self.quant_max,
            symmetric=self.spec.symmetric,
            include_zero=self.include_zero,
            exact=self.role == "weight",
        )
        return obs.to(self.zero_point.device)

    def _apply(self, fn: Any, recurse: bool = True) -> FakeQuantize:
        super()._apply(fn, recurse)
        _keep_float32(self, ("scale",))
        return self

    def refresh(self, weight2d: Tensor) -> None:
        """Bring a weight quantizer's range up to date with ``weight2d`` before conversion.

        Post-training quantizers keep the range they were calibrated with (a no-op here);
        quantizers whose range follows the weight during training recompute it.
        """

    # -- calibration ----------------------------------------------------------------------

    def observe(self, x: Tensor) -> None:
        """Feed ``x`` to the observer (checking it is finite)."""
        if self.observer is None:
            return
        x = x.detach()
        if not bool(torch.isfinite(x).all()):
            what = "weight" if self.role == "weight" else "input activations"
            raise NumericalError(
                f"NaN or Inf in the {what} of {self.name or 'a quantized layer'}; quantization "
                "ranges cannot be computed. Fix the model or the data (a non-finite weight, an "
                "overflow in float16, a division by zero upstream)."
            )
        if self.observe_relu:
            x = x.clamp(min=0)
        self.observer.observe(self._grouped(x))

    def calibrate(self) -> None:
        """Set ``scale`` and ``zero_point`` from what the observer saw."""
        if self.dynamic:
            return
        if self.observer is None:
            raise CalibrationError(
                f"{self.name or 'a quantizer'}: it has no observer to calibrate from (it was built "
                "around an explicit range); build it with an observer name or spec."
            )
        scale, zp = self.observer.qparams()
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape).to(self.scale))
            self.zero_point.copy_(zp.reshape(self.zero_point.shape).to(self.zero_point))
        self.calibrated = True

    def begin_range_pass(self) -> None:
        """Calibration's first pass, for observers that need one (histograms): track only the
        range of the activations (see :meth:`~torchcompress.quant.observers.Observer.begin_range_pass`)."""
        if self.observer is not None:
            self.observer.begin_range_pass()

    def end_range_pass(self) -> None:
        """Fix the range the first pass saw (all-reduced across ranks under ``torch.distributed``)."""
        if self.observer is not None:
            self.observer.end_range_pass(self.zero_point.device)

    def all_reduce(self) -> None:
        """Combine what the quantizer observed on every rank before :meth:`calibrate` (a no-op in
        one process; every rank calls it, in the same order)."""
        if self.observer is not None:
            self.observer.all_reduce(self.zero_point.device)

    def learnable_scale(self) -> nn.Parameter:
        """Turn ``scale`` into an ``nn.Parameter`` (for LSQ-style training); the state key is unchanged."""
        if isinstance(self.scale, nn.Parameter):
            return self.scale
        value = self.scale.detach().clone()
        del self._buffers["scale"]
        self.scale = nn.Parameter(value)
        return self.scale

    def _grouped(self, x: Tensor) -> Tensor:
        if self.role == "weight":
            return QF.to_groups(x.reshape(self.shape), self.granularity, self.group_size)  # type: ignore[arg-type]
        return x.reshape(1, -1)

    def elements_per_scale(self, x: Tensor) -> int:
        """How many elements share one scale (LSQ's ``N``): of the weight, or, for activations,
        the features of one example (Esser et al.'s ``N_F``)."""
        if self.role == "weight":
            rows, cols = self.shape  # type: ignore[misc]
            return granularity(self.granularity).elements_per_scale(rows, cols, self.group_size)
        return max(1, x.numel() // max(1, x.shape[0] if x.dim() > 1 else 1))

    # -- simulation -----------------------------------------------------------------------

    def qparams_for(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The scale and zero point applied to ``x`` (stored, or computed from ``x`` if dynamic)."""
        if not self.dynamic:
            return self.scale, self.zero_point
        return QF.dynamic_qparams(
            x, self.granularity, self.quant_min, self.quant_max, symmetric=self.spec.symmetric
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observe(x)
        if not self.enabled:
            return x
        if self.role == "weight":
            return QF.fake_quantize_weight(
                x,
                self.scale,
                self.zero_point,
                self.quant_min,
                self.quant_max,
                self.granularity,
                self.group_size,
            )
        s, z = self.qparams_for(x)
        return QF.fake_quantize(x, s, z, self.quant_min, self.quant_max)

    def extra_repr(self) -> str:
        rng = ""
        if (self.quant_min, self.quant_max) != (self.spec.qmin, self.spec.qmax):
            rng = f", range=[{self.quant_min}, {self.quant_max}]"
        how = "dynamic" if self.dynamic else self.observer_name
        return f"{self.spec.short()}{rng}, {how}"


def _keep_float32(module: nn.Module, names: tuple[str, ...]) -> None:
    """Scales stay float32 whatever the model's dtype (``.half()``, ``.to(torch.bfloat16)``)."""
    for n in names:
        t = getattr(module, n, None)
        if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float32:
            if isinstance(t, nn.Parameter):
                t.data = t.data.float()
            else:
                module._buffers[n] = t.float()


class QuantLayer(QuantizedModule):
    """Base of the fake-quant layers: float master ``weight``/``bias`` plus quantizers.

    Args:
        geometry: the dense map (``None``: a subclass sets it up).
        device: where the (uninitialised) weight and the zero bias are allocated.
        dtype: their dtype.
        source: the class name of the layer it replaces.

    Attributes:
        geometry: the layer's :class:`~torchcompress.layers.Geometry` (the weight is stored in its
            canonical layout ``(out, in / groups, *kernel)``).
        weight_quant: quantizer of the weight (``None``: float weight).
        input_quant: quantizer of the input (``None``: float input, or an input already quantized
            upstream in the integer graph).
        output_quant: quantizer of the output, where the integer model re-quantizes it.
        source: the class the layer replaced (``"Linear"``, ``"Conv1D"``, ``"Conv1d"``, ``"Conv2d"``).
    """

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        geometry: Geometry | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        self.weight_quant: FakeQuantize | None = None
        self.input_quant: FakeQuantize | None = None
        self.output_quant: FakeQuantize | None = None
        self.source = source
        if geometry is not None:
            self.geometry = geometry
            self.weight = nn.Parameter(
                torch.empty(geometry.weight_shape, device=device, dtype=dtype)
            )
            self.bias = (
                nn.Parameter(torch.zeros(geometry.out_features, device=device, dtype=dtype))
                if geometry.bias
                else None
            )

    @classmethod
    def from_geometry(
        cls,
        geometry: Geometry,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        source: str = "",
    ) -> QuantLayer:
        """A layer of this class for ``geometry`` (uninitialised weight, zero bias if it has one)."""
        layer = cls.__new__(cls)
        QuantLayer.__init__(layer, geometry, device=device, dtype=dtype)
        layer.source = source or layer.default_source()
        return layer

    def default_source(self) -> str:
        """The name of the torch layer this class stands for (``"Linear"``, ``"Conv2d"``)."""
        return "Linear"

    @property
    def weight_shape2d(self) -> tuple[int, int]:
        """``(rows, cols)`` of the canonical 2-D weight (output channels by flattened inputs)."""
        w = self.weight
        return int(w.shape[0]), int(w[0].numel())

    def weight_to_quantize(self) -> Tensor:
        """The float weight the weight quantizer sees (the master weight; a training layer may
        fold more into it, e.g. a BatchNorm)."""
        return self.weight

    def quantized_weight(self) -> Tensor:
        """The weight as the integer model sees it (fake-quantized), in the weight's shape."""
        w = self.weight_to_quantize()
        if self.weight_quant is None:
            return w
        return self.weight_quant(w.reshape(self.weight_shape2d)).reshape(w.shape)

    def _op(self, x: Tensor, weight: Tensor) -> Tensor:
        return self._run(x, weight, self.bias)

    def _run(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's map with ``weight`` and ``bias`` (cast to the input's dtype)."""
        b = None if bias is None else bias.to(x.dtype)
        return layer_forward(self.geometry, x, weight.to(x.dtype), b)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = self._op(x, self.quantized_weight())
        if self.output_quant is not None:
            y = self.output_quant(y)
        obs = self.__dict__.get("_output_observer")
        if obs is not None and obs.observing:
            obs.observe(y.detach())
        return y

    def observe_output_with(self, fq: FakeQuantize) -> None:
        """Feed the layer's output to ``fq`` while it observes, without applying it (a range only
        an export uses; ``fq`` belongs to another module, e.g. the graph's container)."""
        self.__dict__["_output_observer"] = fq

    def finalized(self) -> QuantLayer:
        """The plain fake-quant layer :func:`torchcompress.convert` turns into integers: this layer,
        with its weight quantizer's range brought up to date (:meth:`FakeQuantize.refresh`).
        Training layers (e.g. with a BatchNorm folded in) return a new plain layer."""
        if self.weight_quant is not None:
            self.weight_quant.refresh(self.weight.detach().reshape(self.weight_shape2d))
        return self

    def quantizers(self) -> dict[str, FakeQuantize]:
        """The layer's quantizers by role (``weight``, ``input``, ``output``)."""
        out = {}
        for role in ("weight", "input", "output"):
            q = getattr(self, f"{role}_quant")
            if q is not None:
                out[role] = q
        return out

    def extra_repr(self) -> str:
        s = geometry_repr(self.geometry) + f", bias={self.bias is not None}"
        return s + (
            f", {self.geometry.kind}" if self.geometry.kind not in ("linear", "conv") else ""
        )


class QuantLinear(QuantLayer):
    """Fake-quant ``nn.Linear``, and of any layer kind that is a map over the last dimension
    (Hugging Face's ``Conv1D``, a kind registered from outside), with the weight in the canonical
    ``(out, in)`` layout.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = tc.quantize(torch.nn.Sequential(torch.nn.Linear(8, 4)),
        ...                 tc.QuantConfig(mode="dynamic"))
        >>> type(m[0]).__name__, m[0](torch.randn(2, 8)).shape
        ('QuantLinear', torch.Size([2, 4]))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        source: str = "Linear",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        geo = Geometry("linear", int(in_features), int(out_features), bias=bias)
        super().__init__(geo, device=device, dtype=dtype, source=source)

    @property
    def in_features(self) -> int:
        """Input features."""
        return self.geometry.in_features

    @property
    def out_features(self) -> int:
        """Output features."""
        return self.geometry.out_features

    def extra_repr(self) -> str:
        src = "" if self.source == "Linear" else f", from {self.source}"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{src}"


class _QuantConvNd(QuantLayer):
    _nd = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...] | int,
        stride: tuple[int, ...] | int = 1,
        padding: tuple[int, ...] | int | str = 0,
        dilation: tuple[int, ...] | int = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        def nd(v: Any) -> tuple[int, ...]:
            return tuple(int(i) for i in v) if isinstance(v, list | tuple) else (int(v),) * self._nd

        geo = Geometry(
            "conv",
            int(in_channels),
            int(out_channels),
            kernel_size=nd(kernel_size),
            stride=nd(stride),
            padding=padding if isinstance(padding, str) else nd(padding),
            dilation=nd(dilation),
            groups=int(groups),
            padding_mode=padding_mode,
            bias=bias,
        )
        super().__init__(geo, device=device, dtype=dtype, source=f"Conv{self._nd}d")

    def default_source(self) -> str:
        return f"Conv{self._nd}d"

    # the attributes of torch's convolutions, read from the geometry
    @property
    def in_channels(self) -> int:
        """Input channels."""
        return self.geometry.in_features

    @property
    def out_channels(self) -> int:
        """Output channels."""
        return self.geometry.out_features

    @property
    def kernel_size(self) -> tuple[int, ...]:
        """The kernel size."""
        return self.geometry.kernel_size

    @property
    def stride(self) -> tuple[int, ...]:
        """The stride."""
        return self.geometry.stride

    @property
    def padding(self) -> tuple[int, ...] | str:
        """The padding (numbers, ``"same"`` or ``"valid"``)."""
        return self.geometry.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        """The dilation."""
        return self.geometry.dilation

    @property
    def groups(self) -> int:
        """The groups."""
        return self.geometry.groups

    @property
    def padding_mode(self) -> str:
        """The padding mode."""
        return self.geometry.padding_mode

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class QuantConv2d(_QuantConvNd):
    """Fake-quant ``nn.Conv2d`` (weight groups run along the flattened ``in/groups * kh * kw`` axis)."""

    _nd = 2


class QuantConv1d(_QuantConvNd):
    """Fake-quant ``nn.Conv1d``."""

    _nd = 1


class QuantConv3d(_QuantConvNd):
    """Fake-quant ``nn.Conv3d``."""

    _nd = 3


#: the fake-quant class of a convolution, by its number of spatial dimensions
_CONV_CLASSES: dict[int, type[QuantLayer]] = {
    c._nd: c for c in (QuantConv1d, QuantConv2d, QuantConv3d)
}


def quant_layer_class(geometry: Geometry) -> type[QuantLayer]:
    """The fake-quant layer class of a geometry: :class:`QuantLinear` for maps over the last
    dimension (any kind without a kernel), ``QuantConv1d/2d/3d`` for 1- to 3-D kernels.

    Raises:
        ConfigError: a kernel with more spatial dimensions.
    """
    if not geometry.kernel_size:
        return QuantLinear
    try:
        return _CONV_CLASSES[geometry.spatial_dims]
    except KeyError:
        raise ConfigError(
            f"No fake-quant layer for a {geometry.spatial_dims}-D kernel ({geometry.kind!r})."
        ) from None
