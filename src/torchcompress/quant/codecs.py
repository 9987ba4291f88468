"""Save/load codecs of the quantization modules (registered on import).

Each codec writes a JSON description (:func:`torchcompress.save`) from which :func:`torchcompress.load`
rebuilds the module before its tensors load: a quantizer is described by :func:`fq_spec` (its
format, integer range, observer and options, and for quantization-aware training its method), a
layer by its class, its :class:`~torchcompress.layers.Geometry` (``Geometry.to_dict``) and its
quantizers. Files written before quantized layers carried a geometry (their constructor arguments:
sizes, ``kind`` ``"linear"``/``"conv1d"``/``"conv2d"`` and convolution arguments) and before observer
specs existed (observer options ``percentile``, ``averaging_constant``, ``bins`` in every quantizer)
load as they were saved; an observer, a training method or a layer kind that is not registered is
an error naming it, never a silent substitute.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import io
from ..errors import CompressionStateError, ConfigError
from ..layers import LAYER_KINDS, Geometry
from ..select import module_device_dtype
from .geometry import legacy_geometry
from .graph import QuantGraph
from .int_graph import rebuild
from .int_layer import IntLayer
from .kmeans import KMeansLayer
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, QuantConv3d, QuantLayer, QuantLinear
from .observers import OBSERVERS, observer_spec
from .qat.methods import QAT_METHODS
from .siblings import link_siblings
from .spec import IntSpec

__all__ = [
    "IntLayerCodec",
    "KMeansCodec",
    "QuantGraphCodec",
    "QuantLayerCodec",
    "fq_from_spec",
    "fq_spec",
    "geometry_from_spec",
    "layer_from_spec",
    "layer_spec",
]

_ROLES = ("weight", "input", "output")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _device_dtype(current: nn.Module | None) -> tuple[torch.device | None, torch.dtype | None]:
    return (None, None) if current is None else module_device_dtype(current)


def _to_json(args: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments as JSON values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def _from_json(args: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from JSON (lists become tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def fq_spec(fq: FakeQuantize | None) -> dict[str, Any] | None:
    """A JSON description of a quantizer (its tensors are saved separately)."""
    if fq is None:
        return None
    return {
        "spec": fq.spec.to_dict(),
        "role": fq.role,
        "dynamic": fq.dynamic,
        "quant_min": fq.quant_min,
        "quant_max": fq.quant_max,
        "shape": list(fq.shape) if fq.shape is not None else None,
        "observer": fq.observer_name,
        "options": None if fq.observer is None else fq.observer_spec.to_dict(),
        "observe_relu": fq.observe_relu,
        "calibrated": fq.calibrated,
        "learnable_scale": isinstance(fq.scale, nn.Parameter),
        "name": fq.name,
        # quantization-aware training quantizers (torchcompress.quant.qat)
        "qat": fq.qat_state() if hasattr(fq, "qat_state") else None,
    }


def fq_from_spec(d: dict[str, Any] | None) -> FakeQuantize | None:
    """Rebuild a quantizer from :func:`fq_spec` (its tensors then load from the file).

    Raises:
        CompressionStateError: the file names an observer or a training method that is not
            registered (import the module that registers it first).
    """
    if d is None:
        return None
    where = f"the quantizer {d.get('name') or ''!r}".replace(" ''", "")
    if d["observer"] not in OBSERVERS:
        raise CompressionStateError(
            f"The file's {where} uses the observer {d['observer']!r}, which is not registered "
            f"(registered: {', '.join(OBSERVERS.names())}). Import the module that registers it "
            "before loading."
        )
    cls: type[FakeQuantize] = FakeQuantize
    qat = d.get("qat")
    if qat:
        if qat["method"] not in QAT_METHODS:
            raise CompressionStateError(
                f"The file's {where} was trained with the QAT method {qat['method']!r}, which is "
                f"not registered (registered: {', '.join(QAT_METHODS.names())}). Import the "
                "module that registers it before loading."
            )
        cls = QAT_METHODS.get(qat["method"]).quantizer
    try:
        fq = cls(
            IntSpec.from_dict(d["spec"]),
            role=d["role"],
            observer=observer_spec(d["observer"], **(d.get("options") or {})),
            dynamic=d["dynamic"],
            quant_min=d["quant_min"],
            quant_max=d["quant_max"],
            shape=tuple(d["shape"]) if d["shape"] is not None else None,
            name=d.get("name", ""),
        )
    except ConfigError as e:
        raise CompressionStateError(f"The file's {where} cannot be rebuilt: {e}") from e
    fq.observe_relu = bool(d.get("observe_relu", False))
    fq.calibrated = bool(d.get("calibrated", True))
    if qat:
        fq.load_qat_state(qat)  # type: ignore[attr-defined]
    elif d.get("learnable_scale"):
        fq.learnable_scale()
    return fq


def geometry_from_spec(d: dict[str, Any], where: str) -> Geometry:
    """The :class:`~torchcompress.layers.Geometry` a file records (``Geometry.to_dict``).

    Raises:
        CompressionStateError: its layer kind is not registered (import the module registering
            it first), or the description is not a geometry.
    """
    if d.get("kind") not in LAYER_KINDS:
        raise CompressionStateError(
            f"The file's {where} is a layer of kind {d.get('kind')!r}, which is not registered "
            f"(registered: {', '.join(LAYER_KINDS.names())}). Register it "
            "(torchcompress.layers.LAYER_KINDS.add) before loading."
        )
    try:
        return Geometry.from_dict(d)
    except ConfigError as e:
        raise CompressionStateError(f"The file's {where} cannot be rebuilt: {e}") from e


def layer_spec(module: QuantLayer) -> dict[str, Any]:
    """A JSON description of a fake-quant layer: class, geometry, quantizers."""
    return {
        "class": parametrize.type_before_parametrizations(module).__name__,
        "source": module.source,
        "bias": module.bias is not None,
        "dtype": _dtype_name(module.weight.dtype),
        **{f"{role}_quant": fq_spec(getattr(module, f"{role}_quant")) for role in _ROLES},
        "geometry": module.geometry.to_dict(),
    }


def layer_from_spec(
    spec: dict[str, Any],
    current: nn.Module | None,
    classes: dict[str, type[QuantLayer]],
) -> QuantLayer:
    """Rebuild a fake-quant layer of one of ``classes`` (by name) from :func:`layer_spec`."""
    device, _ = _device_dtype(current)
    cls = classes[spec["class"]]
    args = spec["geometry"]
    if "kind" in args:
        geo = geometry_from_spec(args, f"layer of class {spec['class']!r}")
        layer = cls.from_geometry(geo, device=device, dtype=_dtype(spec["dtype"]))
    else:  # written before layers carried a geometry: the constructor arguments
        layer = cls(  # type: ignore[call-arg]
            **_from_json(args),
            bias=spec["bias"],
            device=device,
            dtype=_dtype(spec["dtype"]),
        )
    layer.source = spec["source"]
    for role in _ROLES:
        fq = fq_from_spec(spec[f"{role}_quant"])
        if fq is not None:
            fq.to(device=device)
        setattr(layer, f"{role}_quant", fq)
    if current is not None:
        layer.train(current.training)
    return layer


class QuantLayerCodec(io.ModuleCodec):
    """Fake-quant layers (QuantLinear, QuantConv1d, QuantConv2d, QuantConv3d)."""

    name = "torchcompress.quant.layer"
    classes: ClassVar[dict[str, type[QuantLayer]]] = {
        c.__name__: c for c in (QuantLinear, QuantConv1d, QuantConv2d, QuantConv3d)
    }

    def matches(self, module: nn.Module) -> bool:
        # a layer that kept a pruning mask is of torch's parametrized subclass (masks: an overlay)
        return parametrize.type_before_parametrizations(module) in self.classes.values()

    def encode(self, module: nn.Module) -> dict[str, Any]:
        return layer_spec(cast(QuantLayer, module))

    def decode(self, spec: dict[str, Any], current: nn.Module | None) -> nn.Module:
        return layer_from_spec(spec, current, self.classes)


#: the constructor arguments of :class:`IntLayer` recorded by :class:`IntLayerCodec` (besides its
#: geometry)
_INT_LAYER_ARGS = (
    "wfmt",
    "act",
    "out",
    "accum",
    "unary",
    "dequant_output",
    "graph_mode",
    "fuse_siblings",
    "source",
    "runtime",
)

#: the convolution arguments files written before layers carried a geometry record
_LEGACY_CONV_ARGS = ("stride", "padding", "dilation", "groups", "padding_mode")


def _geometry_of_spec(spec: dict[str, Any], what: str) -> Geometry:
    """The geometry of an integer or codebook layer's description (of either format)."""
    if isinstance(spec.get("geometry"), dict):
        return geometry_from_spec(spec["geometry"], what)
    conv = {k: _from_json({k: spec[k]})[k] for k in _LEGACY_CONV_ARGS if k in spec}
    return legacy_geometry(spec["weight_shape"], bias=bool(spec["bias"]), **conv)


class IntLayerCodec(io.ModuleCodec):
    """Converted integer layers; kernels are re-packed lazily on first use after loading."""

    name = "torchcompress.quant.int_layer"
    #: the integer layers of later calls of a shared layer live in the graph container
    creates_missing = True

    def matches(self, module: nn.Module) -> bool:
        return type(module) is IntLayer

    def encode(self, module: nn.Module) -> dict[str, Any]:
        m = cast(IntLayer, module)
        out = _to_json({k: getattr(m, k) for k in _INT_LAYER_ARGS})
        out["geometry"] = m.geometry.to_dict()
        out["bias"] = m.bias is not None
        out["bias_dtype"] = _dtype_name(m.bias.dtype if m.bias is not None else torch.float32)
        return out

    def decode(self, spec: dict[str, Any], current: nn.Module | None) -> nn.Module:
        device, _ = _device_dtype(current)
        geo = _geometry_of_spec(spec, "integer layer")
        kw = {k: spec[k] for k in _INT_LAYER_ARGS if k in spec}
        return IntLayer(geo, bias_dtype=_dtype(spec["bias_dtype"]), device=device, **kw)

    def after_load(self, module: nn.Module) -> None:
        m = cast(IntLayer, module)
        m._kernel = None
        m._qp = {}

    def after_load_model(self, model: nn.Module, name: str) -> None:
        self.after_load(model.get_submodule(name))
        link_siblings(model.get_submodule(name.rpartition(".")[0]))


class KMeansCodec(io.ModuleCodec):
    """Codebook layers."""

    name = "torchcompress.quant.kmeans"

    def matches(self, module: nn.Module) -> bool:
        return type(module) is KMeansLayer

    def encode(self, module: nn.Module) -> dict[str, Any]:
        m = cast(KMeansLayer, module)
        return {
            "geometry": m.geometry.to_dict(),
            "bits": m.bits,
            "source": m.source,
            "runtime": m.runtime,
            "bias": m.bias is not None,
            "dtype": _dtype_name(m.bias.dtype if m.bias is not None else torch.float32),
        }

    def decode(self, spec: dict[str, Any], current: nn.Module | None) -> nn.Module:
        device, _ = _device_dtype(current)
        geo = _geometry_of_spec(spec, "codebook layer")
        return KMeansLayer(
            geo,
            spec["bits"],
            source=spec.get("source", ""),
            runtime=spec.get("runtime", "cache"),
            dtype=_dtype(spec["dtype"]),
            device=device,
        )


class QuantGraphCodec(io.ModuleCodec):
    """The graph-mode container: re-traces the fresh model and re-binds its (integer) graph."""

    name = "torchcompress.quant.graph"
    creates_missing = True

    def matches(self, module: nn.Module) -> bool:
        return type(module) is QuantGraph

    def encode(self, module: nn.Module) -> dict[str, Any]:
        return {
            "leaf_names": list(module.leaf_names),  # type: ignore[arg-type]
            "converted": module.converted,
            "fuse_residual": module.fuse_residual,
            "quantizers": {k: fq_spec(v) for k, v in module.quantizers.items()},  # type: ignore[union-attr, arg-type]
            "export_ranges": {k: fq_spec(v) for k, v in module.export_ranges.items()},  # type: ignore[union-attr, arg-type]
        }

    def decode(self, spec: dict[str, Any], current: nn.Module | None) -> nn.Module:
        c = QuantGraph(spec["leaf_names"], fuse_residual=spec.get("fuse_residual", True))
        for k, v in spec["quantizers"].items():
            c.quantizers[k] = fq_from_spec(v)  # type: ignore[assignment]
        for k, v in spec.get("export_ranges", {}).items():
            c.export_ranges[k] = fq_from_spec(v)  # type: ignore[assignment]
        c.converted = bool(spec["converted"])
        return c

    def after_load_model(self, model: nn.Module, name: str) -> None:
        rebuild(model, model.get_submodule(name))  # type: ignore[arg-type]


for _codec in (QuantLayerCodec(), IntLayerCodec(), KMeansCodec(), QuantGraphCodec()):
    io.register_codec(_codec)
