"""Save/load codec of the folded conv+BN training layers (registered on import).

The quantizers of QAT models (STE, LSQ, PACT) are described by
:func:`~torchcompress.quant.codecs.fq_spec` (its ``"qat"`` entry); profiler costs of the layers
come from the fake-quant layers' cost function (looked up along the class hierarchy).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from torch import nn

from ... import io
from ..codecs import QuantLayerCodec, layer_from_spec, layer_spec
from ..modules import QuantLayer
from .conv_bn import QuantConvBn1d, QuantConvBn2d, _QuantConvBnNd

__all__ = ["QuantConvBnCodec"]


class QuantConvBnCodec(QuantLayerCodec):
    """``QuantConvBn2d`` / ``QuantConvBn1d``: the convolution, its quantizers and its BatchNorm."""

    name = "torchcompress.quant.conv_bn"
    classes: ClassVar[dict[str, type[QuantLayer]]] = {
        c.__name__: c for c in (QuantConvBn2d, QuantConvBn1d)
    }

    def encode(self, module: nn.Module) -> dict[str, Any]:
        m = cast(_QuantConvBnNd, module)
        spec = layer_spec(m)
        bn = m.bn
        spec["bn"] = {
            "num_features": bn.num_features,
            "eps": bn.eps,
            "momentum": bn.momentum,
            "affine": bn.affine,
        }
        return spec

    def decode(self, spec: dict[str, Any], current: nn.Module | None) -> nn.Module:
        layer = cast(_QuantConvBnNd, layer_from_spec(spec, current, self.classes))
        b = spec["bn"]
        bn = layer.bn_type(  # type: ignore[call-arg]
            b["num_features"], eps=b["eps"], momentum=b["momentum"], affine=b["affine"]
        )
        layer._init_bn(bn.to(device=layer.weight.device))  # type: ignore[arg-type]
        if current is not None:  # the BatchNorm follows the layer's mode
            layer.train(current.training)
        return layer


io.register_codec(QuantConvBnCodec())
