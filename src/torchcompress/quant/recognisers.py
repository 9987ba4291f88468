"""How the quantized forms of :mod:`torchcompress.forms` are recognised (registered on import).

A layer is *fake-quant* (:func:`torchcompress.quantize`: a
:class:`~torchcompress.quant.modules.QuantLayer` with fixed quantizers), *QAT*
(:func:`torchcompress.prepare_qat`: a folded conv+BN layer, or a quantized layer with a training
quantizer), *converted* (:func:`torchcompress.convert`: an
:class:`~torchcompress.quant.int_layer.IntLayer`) or *k-means*
(:func:`torchcompress.kmeans_quantize`: a :class:`~torchcompress.quant.kmeans.KMeansLayer`).

Example:
    >>> import torch, torchcompress as tc
    >>> m = tc.quantize(torch.nn.Sequential(torch.nn.Linear(4, 4)), tc.QuantConfig(mode="dynamic"))
    >>> sorted(tc.forms.forms_of(m[0]))
    ['fake-quant']
"""

from __future__ import annotations

from torch import nn

from .. import forms
from .int_layer import IntLayer
from .kmeans import KMeansLayer
from .modules import QuantLayer
from .qat.conv_bn import QuantConvBn1d, QuantConvBn2d
from .qat.quantizers import QATQuantizer

__all__ = ["is_fake_quant", "is_qat"]


def is_qat(module: nn.Module) -> bool:
    """``module`` trains quantized (made by :func:`torchcompress.prepare_qat`)."""
    if isinstance(module, (QuantConvBn1d, QuantConvBn2d)):
        return True
    return isinstance(module, QuantLayer) and any(
        isinstance(q, QATQuantizer) for q in module.quantizers().values()
    )


def is_fake_quant(module: nn.Module) -> bool:
    """``module`` simulates quantization with fixed quantizers (made by :func:`torchcompress.quantize`)."""
    return isinstance(module, QuantLayer) and not is_qat(module)


forms.register_recogniser("fake-quant", is_fake_quant)
forms.register_recogniser("qat", is_qat)
forms.register_recogniser("converted", lambda m: isinstance(m, IntLayer))
forms.register_recogniser("kmeans", lambda m: isinstance(m, KMeansLayer))
