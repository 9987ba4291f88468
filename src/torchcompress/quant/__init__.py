"""Quantization: integer formats, observers, post-training quantization, real integer execution.

Public surface (also as ``tc.<name>``): :class:`IntSpec`, :class:`QuantConfig`, :func:`quantize`,
:func:`prepare_qat`, :func:`convert`, :func:`kmeans_quantize`, :func:`export_onnx`. QAT helpers
(``tc.quant.<name>``): :func:`freeze_bn_stats`, :func:`unfreeze_bn_stats`, :func:`freeze_observers`,
:func:`unfreeze_observers`, :func:`requantize`, :func:`pact_regularizer`, the callbacks
:class:`FreezeBNStats` / :class:`FreezeObservers` (see :mod:`~torchcompress.quant.qat`).

The pieces, from the inside out:

- :mod:`~torchcompress.quant.functional`: pure maths (ranges to scales and zero points, (fake)
  quantization per tensor/channel/group/token, straight-through rounding, bit packing).
- :mod:`~torchcompress.quant.observers`: registered range estimators with bounded memory.
- :mod:`~torchcompress.quant.modules`: :class:`~torchcompress.quant.modules.FakeQuantize` and the
  fake-quant layers ``QuantLinear`` / ``QuantConv1d`` / ``QuantConv2d``.
- :mod:`~torchcompress.quant.ptq` (:func:`quantize`) and :mod:`~torchcompress.quant.graph` (graph
  mode: activations stay integer between layers).
- :mod:`~torchcompress.quant.converting` (:func:`convert`, ``IntLayer``) and
  :mod:`~torchcompress.quant.kernels` (the kernel registry: oneDNN, fbgemm, ``torch._int_mm``, and
  the exact dequantizing fallback).
- :mod:`~torchcompress.quant.kmeans`, :mod:`~torchcompress.quant.onnx_export`,
  :mod:`~torchcompress.quant.codecs` (save/load and profiler costs).

Contract for quantization-aware training (``tc.prepare_qat``) and later PTQ methods (GPTQ, AWQ,
SmoothQuant), which build on these modules:

1. A quantized layer is a :class:`~torchcompress.quant.modules.QuantLayer` (``QuantLinear``,
   ``QuantConv1d``, ``QuantConv2d``): float master ``weight`` / ``bias`` parameters and three
   quantizer slots, ``weight_quant``, ``input_quant`` and ``output_quant`` (each ``None`` or a
   quantizer). Its forward is ``output_quant(op(input_quant(x), weight_quant(weight)))``, so a
   subclass may override ``quantized_weight()`` (e.g. to fold BatchNorm into the weight during
   training) without touching conversion.
2. A quantizer is a :class:`~torchcompress.quant.modules.FakeQuantize` or anything with the same
   attributes: ``spec`` (:class:`IntSpec`), ``quant_min`` / ``quant_max`` (the integer range used),
   ``granularity`` / ``group_size``, ``scale`` and ``zero_point`` tensors (shapes ``[1]``,
   ``[rows]`` or ``[rows, groups]``), ``dynamic``, ``calibrated``. ``scale`` may be an
   ``nn.Parameter`` (:meth:`~torchcompress.quant.modules.FakeQuantize.learnable_scale`, for LSQ);
   :func:`~torchcompress.quant.functional.fake_quantize` already gives the LSQ step-size gradient
   (multiply it by LSQ's ``1/sqrt(N * qmax)`` with a gradient hook). ``zero_point`` may be a float
   parameter (LSQ+); conversion rounds it. Observers can be frozen (``observing = False``) or fed
   every step (``observing = True``: weights are re-observed exactly, activations accumulate).
3. :func:`convert` turns any ``QuantLayer`` whose quantizers are calibrated into an integer layer
   from exactly these attributes, choosing a kernel per device; PTQ methods that change weights or
   ranges (GPTQ, AWQ) only need to leave a ``QuantLayer`` with its ``weight`` and quantizers set.
4. Every piece of state that matters after loading is a parameter or buffer; observers keep their
   statistics in non-persistent buffers.

Example:
    >>> import torch, torchcompress as tc
    >>> model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    >>> model = tc.quantize(model, tc.QuantConfig(mode="dynamic"))
    >>> model = tc.convert(model)
    >>> model(torch.randn(4, 32)).shape
    torch.Size([4, 8])
"""

from __future__ import annotations

from . import codecs as _codecs  # noqa: F401  (registers codecs and profiler costs)
from . import qat_codecs as _qat_codecs  # noqa: F401  (registers the folded conv+BN codec)
from .converting import IntLayer, convert
from .graph import QuantGraph
from .kernels import KERNELS
from .kmeans import KMeansLayer, kmeans_quantize
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, QuantLayer, QuantLinear
from .observers import OBSERVERS, Observer
from .onnx_export import export_onnx
from .ptq import quantize
from .qat import (
    FreezeBNStats,
    FreezeObservers,
    PACTRegularizer,
    freeze_bn_stats,
    freeze_observers,
    pact_regularizer,
    prepare_qat,
    requantize,
    unfreeze_bn_stats,
    unfreeze_observers,
)
from .qat_modules import LSQQuantize, PACTQuantize, QuantConvBn1d, QuantConvBn2d, STEQuantize
from .spec import IntSpec, QuantConfig

__all__ = [
    "KERNELS",
    "OBSERVERS",
    "FakeQuantize",
    "FreezeBNStats",
    "FreezeObservers",
    "IntLayer",
    "IntSpec",
    "KMeansLayer",
    "LSQQuantize",
    "Observer",
    "PACTQuantize",
    "PACTRegularizer",
    "QuantConfig",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn1d",
    "QuantConvBn2d",
    "QuantGraph",
    "QuantLayer",
    "QuantLinear",
    "STEQuantize",
    "convert",
    "export_onnx",
    "freeze_bn_stats",
    "freeze_observers",
    "kmeans_quantize",
    "pact_regularizer",
    "prepare_qat",
    "quantize",
    "requantize",
    "unfreeze_bn_stats",
    "unfreeze_observers",
]
