"""Save/load codecs and profiler costs of the quantization modules (registered on import)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .. import io
from ..costs import LayerCost, register_cost
from .converting import IntLayer, link_siblings
from .graph import QuantGraph, rebuild
from .kmeans import KMeansLayer
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, QuantLayer, QuantLinear
from .spec import IntSpec

__all__ = ["fq_from_spec", "fq_spec"]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _device_dtype(current: nn.Module | None) -> tuple[torch.device | None, torch.dtype | None]:
    if current is None:
        return None, None
    from ..select import module_device_dtype

    return module_device_dtype(current)


def fq_spec(fq: FakeQuantize | None) -> dict[str, Any] | None:
    """A JSON description of a quantizer (its tensors are saved separately)."""
    if fq is None:
        return None
    obs = fq.observer
    return {
        "spec": fq.spec.to_dict(),
        "role": fq.role,
        "dynamic": fq.dynamic,
        "quant_min": fq.quant_min,
        "quant_max": fq.quant_max,
        "shape": list(fq.shape) if fq.shape is not None else None,
        "observer": fq.observer_name,
        "options": None
        if obs is None
        else {
            "percentile": obs.percentile,
            "averaging_constant": obs.averaging_constant,
            "bins": obs.bins,
        },
        "observe_relu": fq.observe_relu,
        "calibrated": fq.calibrated,
        "learnable_scale": isinstance(fq.scale, nn.Parameter),
        "name": fq.name,
        # quantization-aware training quantizers (torchcompress.quant.qat_modules)
        "qat": fq.qat_state() if hasattr(fq, "qat_state") else None,
    }


def fq_from_spec(d: dict[str, Any] | None) -> FakeQuantize | None:
    """Rebuild a quantizer from :func:`fq_spec` (its tensors then load from the file)."""
    if d is None:
        return None
    from ..errors import ConfigError
    from .observers import OBSERVERS

    observer = d["observer"] if d["observer"] in OBSERVERS else "minmax"
    cls: type[FakeQuantize] = FakeQuantize
    qat = d.get("qat")
    if qat:
        from .qat_modules import QAT_QUANTIZERS

        cls = QAT_QUANTIZERS[qat["method"]]
    try:
        fq = cls(
            IntSpec.from_dict(d["spec"]),
            role=d["role"],
            observer=observer,
            dynamic=d["dynamic"],
            quant_min=d["quant_min"],
            quant_max=d["quant_max"],
            shape=tuple(d["shape"]) if d["shape"] is not None else None,
            observer_options=d.get("options"),
            name=d.get("name", ""),
        )
    except ConfigError:
        raise
    fq.observe_relu = bool(d.get("observe_relu", False))
    fq.calibrated = bool(d.get("calibrated", True))
    if qat:
        fq.load_qat_state(qat)  # type: ignore[attr-defined]
    elif d.get("learnable_scale"):
        fq.learnable_scale()
    return fq


class QuantLayerCodec(io.ModuleCodec):
    """Fake-quant layers (QuantLinear, QuantConv1d, QuantConv2d)."""

    name = "torchcompress.quant.layer"

    def matches(self, module: nn.Module) -> bool:
        return type(module) in (QuantLinear, QuantConv1d, QuantConv2d)

    def encode(self, module: nn.Module) -> dict[str, Any]:
        if not isinstance(module, QuantLayer):
            raise RuntimeError(
                "torchcompress internal error (please report): expected isinstance(module, QuantLayer)"
            )
        spec: dict[str, Any] = {
            "class": type(module).__name__,
            "source": module.source,
            "bias": module.bias is not None,
            "dtype": _dtype_name(module.weight.dtype),
            "weight_quant": fq_spec(module.weight_quant),
            "input_quant": fq_spec(module.input_quant),
            "output_quant": fq_spec(module.output_quant),
        }
        if isinstance(module, QuantLinear):
            spec["geometry"] = {
                "in_features": module.in_features,
                "out_features": module.out_features,
            }
        else:
            if not isinstance(module, QuantConv1d | QuantConv2d):
                raise RuntimeError(
                    "torchcompress internal error (please report): expected isinstance(module, QuantConv1d | QuantConv2d)"
                )
            spec["geometry"] = {
                "in_channels": module.in_channels,
                "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size),
                "stride": list(module.stride),
                "padding": module.padding
                if isinstance(module.padding, str)
                else list(module.padding),
                "dilation": list(module.dilation),
                "groups": module.groups,
                "padding_mode": module.padding_mode,
            }
        return spec

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        device, _ = _device_dtype(current)
        dtype = _dtype(spec["dtype"])
        g = spec["geometry"]
        layer: QuantLayer
        if spec["class"] == "QuantLinear":
            layer = QuantLinear(
                g["in_features"],
                g["out_features"],
                spec["bias"],
                source=spec["source"],
                device=device,
                dtype=dtype,
            )
        else:
            cls = QuantConv2d if spec["class"] == "QuantConv2d" else QuantConv1d
            pad = g["padding"] if isinstance(g["padding"], str) else tuple(g["padding"])
            layer = cls(
                g["in_channels"],
                g["out_channels"],
                tuple(g["kernel_size"]),
                tuple(g["stride"]),
                pad,
                tuple(g["dilation"]),
                g["groups"],
                spec["bias"],
                g["padding_mode"],
                device=device,
                dtype=dtype,
            )
        for role in ("weight", "input", "output"):
            fq = fq_from_spec(spec[f"{role}_quant"])
            if fq is not None:
                fq.to(device=device)
            setattr(layer, f"{role}_quant", fq)
        if current is not None:
            layer.train(current.training)
        return layer


class IntLayerCodec(io.ModuleCodec):
    """Converted integer layers; kernels are re-packed lazily on first use after loading."""

    name = "torchcompress.quant.int_layer"

    def matches(self, module: nn.Module) -> bool:
        return type(module) is IntLayer

    def encode(self, module: nn.Module) -> dict[str, Any]:
        if not isinstance(module, IntLayer):
            raise RuntimeError(
                "torchcompress internal error (please report): expected isinstance(module, IntLayer)"
            )
        return {
            "kind": module.kind,
            "in_features": module.in_features,
            "out_channels": module.out_channels,
            "weight_shape": list(module.weight_shape),
            "wfmt": module.wfmt,
            "act": module.act,
            "out": module.out,
            "accum": module.accum,
            "unary": module.unary,
            "bias": module.bias is not None,
            "dequant_output": module.dequant_output,
            "graph_mode": module.graph_mode,
            "fuse_siblings": module.fuse_siblings,
            "stride": list(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
            "dilation": list(module.dilation),
            "groups": module.groups,
            "padding_mode": module.padding_mode,
            "source": module.source,
            "bias_dtype": _dtype_name(
                module.bias.dtype if module.bias is not None else torch.float32
            ),
        }

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        device, _ = _device_dtype(current)
        kw = dict(spec)
        kw["weight_shape"] = tuple(kw["weight_shape"])
        kw["stride"] = tuple(kw["stride"])
        kw["dilation"] = tuple(kw["dilation"])
        if not isinstance(kw["padding"], str):
            kw["padding"] = tuple(kw["padding"])
        kw["bias_dtype"] = _dtype(kw["bias_dtype"])
        kind = kw.pop("kind")
        return IntLayer(kind, device=device, **kw)

    def after_load(self, module: nn.Module) -> None:
        if not isinstance(module, IntLayer):
            raise RuntimeError(
                "torchcompress internal error (please report): expected isinstance(module, IntLayer)"
            )
        module._kernel = None
        module._qp = {}

    def after_load_model(self, model: nn.Module, name: str) -> None:
        self.after_load(model.get_submodule(name))
        link_siblings(model.get_submodule(name.rpartition(".")[0]))


class KMeansCodec(io.ModuleCodec):
    """Codebook layers."""

    name = "torchcompress.quant.kmeans"

    def matches(self, module: nn.Module) -> bool:
        return type(module) is KMeansLayer

    def encode(self, module: nn.Module) -> dict[str, Any]:
        if not isinstance(module, KMeansLayer):
            raise RuntimeError(
                "torchcompress internal error (please report): expected isinstance(module, KMeansLayer)"
            )
        return {
            "kind": module.kind,
            "weight_shape": list(module.weight_shape),
            "bits": module.bits,
            "bias": module.bias is not None,
            "stride": list(module.stride),
            "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
            "dilation": list(module.dilation),
            "groups": module.groups,
            "padding_mode": module.padding_mode,
            "source": module.source,
            "dtype": _dtype_name(module.bias.dtype if module.bias is not None else torch.float32),
        }

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        device, _ = _device_dtype(current)
        pad = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
        return KMeansLayer(
            spec["kind"],
            tuple(spec["weight_shape"]),
            spec["bits"],
            bias=spec["bias"],
            stride=tuple(spec["stride"]),
            padding=pad,
            dilation=tuple(spec["dilation"]),
            groups=spec["groups"],
            padding_mode=spec["padding_mode"],
            source=spec["source"],
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
        if not isinstance(module, QuantGraph):
            raise RuntimeError(
                "torchcompress internal error (please report): expected isinstance(module, QuantGraph)"
            )
        return {
            "leaf_names": list(module.leaf_names),
            "converted": module.converted,
            "fuse_residual": module.fuse_residual,
            "quantizers": {k: fq_spec(v) for k, v in module.quantizers.items()},  # type: ignore[arg-type]
        }

    def decode(self, spec: dict[str, Any], current: nn.Module | None) -> nn.Module:
        c = QuantGraph(spec["leaf_names"], fuse_residual=spec.get("fuse_residual", True))
        for k, v in spec["quantizers"].items():
            c.quantizers[k] = fq_from_spec(v)  # type: ignore[assignment]
        c.converted = bool(spec["converted"])
        return c

    def after_load_model(self, model: nn.Module, name: str) -> None:
        container = model.get_submodule(name)
        if not isinstance(container, QuantGraph):
            raise RuntimeError(
                "torchcompress internal error (please report): expected isinstance(container, QuantGraph)"
            )
        rebuild(model, container)


for _codec in (QuantLayerCodec(), IntLayerCodec(), KMeansCodec(), QuantGraphCodec()):
    io.register_codec(_codec)


# --- profiler costs ------------------------------------------------------------------------


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def _out_numel(output: Any) -> int:
    if isinstance(output, torch.Tensor):
        return output.numel()
    return 0


def _macs(
    kind: str, weight_shape: tuple[int, ...], groups: int, args: tuple[Any, ...], output: Any
) -> int:
    n_out = _out_numel(output)
    if kind == "linear":
        return n_out * int(weight_shape[1])
    per_out = int(math.prod(weight_shape[1:]))
    return n_out * per_out


@register_cost(QuantLinear, QuantConv1d, QuantConv2d)
def _quant_layer_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    if not isinstance(module, QuantLayer):
        raise RuntimeError(
            "torchcompress internal error (please report): expected isinstance(module, QuantLayer)"
        )
    kind = "linear" if isinstance(module, QuantLinear) else "conv"
    macs = _macs(kind, tuple(module.weight.shape), getattr(module, "groups", 1), args, output)
    params = module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
    return LayerCost(
        macs=macs,
        params=params,
        bytes=_state_bytes(module),
        note="fake-quant (float weights, simulated integers; tc.convert stores integers)",
    )


@register_cost(IntLayer)
def _int_layer_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    if not isinstance(module, IntLayer):
        raise RuntimeError(
            "torchcompress internal error (please report): expected isinstance(module, IntLayer)"
        )
    macs = _macs(module.kind, module.weight_shape, module.groups, args, output)
    params = int(math.prod(module.weight_shape)) + (
        module.bias.numel() if module.bias is not None else 0
    )
    w = module.wfmt
    fmt = "float weights" if w is None else f"int{w['bits']} weights"
    if w is not None and w["bits"] <= 4:
        fmt += " (packed)"
    return LayerCost(
        macs=macs,
        params=params,
        nonzero_params=params,
        bytes=module.stored_bytes(),
        note=f"{fmt}: {module.kernel_note()}",
    )


@register_cost(KMeansLayer)
def _kmeans_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    if not isinstance(module, KMeansLayer):
        raise RuntimeError(
            "torchcompress internal error (please report): expected isinstance(module, KMeansLayer)"
        )
    macs = _macs(module.kind, module.weight_shape, module.groups, args, output)
    params = int(math.prod(module.weight_shape)) + (
        module.bias.numel() if module.bias is not None else 0
    )
    return LayerCost(
        macs=macs,
        params=params,
        bytes=_state_bytes(module),
        note=f"{module.bits}-bit codebook: dequantized on the fly",
    )


@register_cost(FakeQuantize)
def _fq_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> LayerCost:
    return LayerCost(macs=0, params=0, bytes=_state_bytes(module), note="activation quantizer")
