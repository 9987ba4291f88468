"""Save/load codec of the folded conv+BN training layers (registered on import).

The quantizers of QAT models (STE, LSQ, PACT) are described by
:func:`~torchcompress.quant.codecs.fq_spec` (its ``"qat"`` entry); profiler costs of the layers
come from the fake-quant layers' cost function (looked up along the class hierarchy).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import io
from .codecs import QuantLayerCodec, _device_dtype, _dtype, fq_from_spec
from .qat_modules import QuantConvBn1d, QuantConvBn2d, _QuantConvBnNd

__all__ = ["QuantConvBnCodec"]


class QuantConvBnCodec(QuantLayerCodec):
    """``QuantConvBn2d`` / ``QuantConvBn1d``: the convolution, its quantizers and its BatchNorm."""

    name = "torchcompress.quant.conv_bn"

    def matches(self, module: nn.Module) -> bool:
        return type(module) in (QuantConvBn2d, QuantConvBn1d)

    def encode(self, module: nn.Module) -> dict[str, Any]:
        if not isinstance(module, _QuantConvBnNd):
            raise TypeError(f"QuantConvBnCodec cannot encode a {type(module).__name__}")
        spec = super().encode(module)
        bn = module.bn
        spec["class"] = type(module).__name__
        spec["bn"] = {
            "num_features": bn.num_features,
            "eps": bn.eps,
            "momentum": bn.momentum,
            "affine": bn.affine,
        }
        return spec

    def decode(self, spec: dict[str, Any], current: nn.Module | None) -> nn.Module:
        device, _ = _device_dtype(current)
        dtype = _dtype(spec["dtype"])
        g = spec["geometry"]
        cls = QuantConvBn2d if spec["class"] == "QuantConvBn2d" else QuantConvBn1d
        bn_cls = nn.BatchNorm2d if cls is QuantConvBn2d else nn.BatchNorm1d
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
        b = spec["bn"]
        bn = bn_cls(b["num_features"], eps=b["eps"], momentum=b["momentum"], affine=b["affine"])
        layer._init_bn(bn.to(device=device))
        for role in ("weight", "input", "output"):
            fq = fq_from_spec(spec[f"{role}_quant"])
            if fq is not None:
                fq.to(device=device)
            setattr(layer, f"{role}_quant", fq)
        if current is not None:
            layer.train(current.training)
        return layer


io.register_codec(QuantConvBnCodec())
