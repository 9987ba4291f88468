"""Quantization-aware training: :func:`prepare_qat` and its helpers.

:func:`prepare_qat` turns a float model into a trainable fake-quant model, planned exactly as
:func:`torchcompress.quantize` plans post-training quantization, with quantizers that train. The
package, from the inside out:

- :mod:`~torchcompress.quant.qat.quantizers`: the training quantizers (:class:`STEQuantize`,
  :class:`LSQQuantize`, :class:`PACTQuantize`) with their training behaviour.
- :mod:`~torchcompress.quant.qat.conv_bn`: convolutions training with their BatchNorm folded
  (:class:`QuantConvBn2d`, :class:`QuantConvBn1d`).
- :mod:`~torchcompress.quant.qat.methods`: the methods, one class each in :data:`QAT_METHODS`
  (``"ste"``, ``"lsq"``, ``"pact"``; a new method is one class).
- :mod:`~torchcompress.quant.qat.origins`: which activations are ReLU outputs (for PACT).
- :mod:`~torchcompress.quant.qat.prepare`: the verb :func:`prepare_qat`.
- :mod:`~torchcompress.quant.qat.callbacks`: freezing BatchNorm statistics and observers
  (functions and :func:`torchcompress.finetune` callbacks), PACT's regularizer, :func:`requantize`.
- :mod:`~torchcompress.quant.qat.codecs`: saving and loading the folded conv+BN layers.

Example:
    >>> import torch, torchcompress as tc
    >>> from torchcompress.quant import qat
    >>> sorted(qat.QAT_METHODS.names())
    ['lsq', 'pact', 'ste']
    >>> m = tc.prepare_qat(torch.nn.Sequential(torch.nn.Linear(4, 4)), method="ste")
    >>> _ = qat.freeze_observers(m)
"""

from __future__ import annotations

from ..build import finalize_for_convert
from .callbacks import (
    FreezeBNStats,
    FreezeObservers,
    PACTRegularizer,
    freeze_bn_stats,
    freeze_observers,
    pact_regularizer,
    qat_quantizers,
    requantize,
    unfreeze_bn_stats,
    unfreeze_observers,
)
from .conv_bn import QuantConvBn1d, QuantConvBn2d
from .methods import LSQ, PACT, QAT_METHODS, STE, QATMethod, QATOptions
from .prepare import prepare_qat
from .quantizers import LSQQuantize, PACTQuantize, QATQuantizer, STEQuantize, grad_scale

__all__ = [
    "LSQ",
    "PACT",
    "QAT_METHODS",
    "STE",
    "FreezeBNStats",
    "FreezeObservers",
    "LSQQuantize",
    "PACTQuantize",
    "PACTRegularizer",
    "QATMethod",
    "QATOptions",
    "QATQuantizer",
    "QuantConvBn1d",
    "QuantConvBn2d",
    "STEQuantize",
    "finalize_for_convert",
    "freeze_bn_stats",
    "freeze_observers",
    "grad_scale",
    "pact_regularizer",
    "prepare_qat",
    "qat_quantizers",
    "requantize",
    "unfreeze_bn_stats",
    "unfreeze_observers",
]
