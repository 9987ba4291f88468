"""Quantization: integer formats, observers, post-training quantization, real integer execution.

Public surface (also as ``tc.<name>``): :class:`IntSpec`, :class:`QuantConfig`, :func:`quantize`,
:func:`prepare_qat`, :func:`convert`, :func:`kmeans_quantize`, :func:`export_onnx`, and the
block-by-block methods :func:`gptq` / :class:`GPTQConfig`, :func:`awq` / :class:`AWQConfig`,
:func:`smoothquant` / :class:`SmoothQuantConfig`. Observer specs
(``tc.quant.<name>``): :class:`MinMax`, :class:`MovingMinMax`, :class:`Percentile`, :class:`MSE`,
:class:`KL`, :class:`SAWB` (``QuantConfig(observer=tc.quant.Percentile(99.9))``). QAT helpers
(``tc.quant.<name>``): :func:`freeze_bn_stats`, :func:`unfreeze_bn_stats`, :func:`freeze_observers`,
:func:`unfreeze_observers`, :func:`requantize`, :func:`pact_regularizer`, the callbacks
:class:`FreezeBNStats` / :class:`FreezeObservers`, the method registry :data:`QAT_METHODS` (see
:mod:`~torchcompress.quant.qat`).

The pieces, in their import order (a module imports only modules above it in this list; verbs
import helpers, helpers never import verbs):

1. Formats and maths: :mod:`~torchcompress.quant.granularity` (one strategy per way of sharing
   scales), :mod:`~torchcompress.quant.functional` (pure maths: ranges to scales and zero points,
   (fake) quantization, straight-through rounding, bit packing, uint8 activations),
   :mod:`~torchcompress.quant.geometry` (quantization's helpers on the shared layer model,
   :mod:`torchcompress.layers`: every registered layer kind is quantized from its ``Geometry``),
   :mod:`~torchcompress.quant.hardware` (what this CPU's int8 kernels do exactly).
2. Observers: :mod:`~torchcompress.quant.observers` (registered range estimators, each with a typed
   spec of its options: :class:`Percentile`, :class:`MSE`, ...; combined across ranks under
   ``torch.distributed``).
3. Specs: :mod:`~torchcompress.quant.spec` (:class:`IntSpec`, :class:`QuantConfig`).
4. Modules: :mod:`~torchcompress.quant.modules` (:class:`~torchcompress.quant.modules.FakeQuantize`
   and the fake-quant layers ``QuantLinear`` / ``QuantConv1d`` / ``QuantConv2d`` / ``QuantConv3d``;
   leaves of :mod:`torchcompress.tracing`).
5. Building and calibration: :mod:`~torchcompress.quant.build` (target selection, layer and
   quantizer building, integer ranges), :mod:`~torchcompress.quant.calib` (calibration on the
   shared engine, :mod:`torchcompress.calibration`: the quantizers' passes over the data, their
   all-reduce across ranks, the reach check), :mod:`~torchcompress.quant.ops` (how quantization
   reads a graph traced by :mod:`torchcompress.tracing`: the shared op taxonomy seen from integers).
6. The integer layer and its kernels: :mod:`~torchcompress.quant.int_layer` (``IntLayer``, the kernel
   registry and the exact dequantizing fallback), :mod:`~torchcompress.quant.kernels` (oneDNN,
   fbgemm, ``torch._int_mm``), :mod:`~torchcompress.quant.siblings` (sibling Linear layers sharing
   one GEMM).
7. Graphs: :mod:`~torchcompress.quant.graph` (graph mode: quantization planned on the traced graph,
   activations integer between layers) and :mod:`~torchcompress.quant.int_graph` (its integer graph).
8. Verbs: :mod:`~torchcompress.quant.ptq` (:func:`quantize`), :mod:`~torchcompress.quant.kmeans`
   (:func:`kmeans_quantize`), :mod:`~torchcompress.quant.qat` (:func:`prepare_qat`: its quantizers
   and folded conv+BN layers, which need only the modules above, the method registry, ReLU
   origins, callbacks), :mod:`~torchcompress.quant.converting` (:func:`convert`).
9. Codecs and export: :mod:`~torchcompress.quant.codecs` and ``qat.codecs`` (save/load),
   :mod:`~torchcompress.quant.costs` (profiler costs), :mod:`~torchcompress.quant.recognisers`
   (the quantized forms of :mod:`torchcompress.forms`), :mod:`~torchcompress.quant.onnx_export`
   (:func:`export_onnx`).
10. Block-by-block post-training methods, on :class:`torchcompress.calibration.SequentialRunner`:
    :mod:`~torchcompress.quant.blockwise` (their configs' base, targets, building layers with the
    weights and ranges a method computed), :mod:`~torchcompress.quant.scaling` (per-input-channel
    scales folded into the producing op, or :class:`InputScaled`), :mod:`~torchcompress.quant.scale_search`
    (ranking candidate scales by the block's output error), then the verbs
    :mod:`~torchcompress.quant.gptq` (:func:`gptq`), :mod:`~torchcompress.quant.awq` (:func:`awq`)
    and :mod:`~torchcompress.quant.smoothquant` (:func:`smoothquant`).

Contract for quantization-aware training (``tc.prepare_qat``) and later PTQ methods (GPTQ, AWQ,
SmoothQuant), which build on these modules:

1. A quantized layer is a :class:`~torchcompress.quant.modules.QuantLayer` (``QuantLinear``,
   ``QuantConv1d``, ``QuantConv2d``, ``QuantConv3d``): a ``geometry``
   (:class:`~torchcompress.layers.Geometry` of the layer it replaced), float master ``weight`` /
   ``bias`` parameters (the weight in the canonical layout) and three quantizer slots, ``weight_quant``, ``input_quant`` and ``output_quant`` (each ``None`` or a
   quantizer). Its forward is ``output_quant(op(input_quant(x), weight_quant(weight)))``, so a
   subclass may override ``weight_to_quantize()`` (e.g. to fold BatchNorm into the weight during
   training) and ``finalized()`` (the plain layer conversion starts from) without touching
   conversion.
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

from . import codecs as _codecs  # noqa: F401  (registers the codecs)
from . import costs as _costs  # noqa: F401  (registers the profiler costs)
from . import recognisers as _recognisers  # noqa: F401  (registers the quantized forms)
from .awq import AWQConfig, awq
from .converting import RUNTIMES, IntLayer, convert, set_runtime
from .gptq import GPTQConfig, gptq
from .graph import QuantGraph
from .kernels import KERNELS
from .kmeans import KMeansLayer, kmeans_quantize
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, QuantConv3d, QuantLayer, QuantLinear
from .observers import (
    KL,
    MSE,
    OBSERVERS,
    SAWB,
    MinMax,
    MovingMinMax,
    Observer,
    ObserverSpec,
    Percentile,
)
from .onnx_export import export_onnx
from .ptq import quantize
from .qat import (
    QAT_METHODS,
    FreezeBNStats,
    FreezeObservers,
    LSQQuantize,
    PACTQuantize,
    PACTRegularizer,
    QuantConvBn1d,
    QuantConvBn2d,
    STEQuantize,
    freeze_bn_stats,
    freeze_observers,
    pact_regularizer,
    prepare_qat,
    requantize,
    unfreeze_bn_stats,
    unfreeze_observers,
)
from .qat import codecs as _qat_codecs  # noqa: F401  (registers the folded conv+BN codec)
from .scaling import InputScaled
from .smoothquant import SmoothQuantConfig, smoothquant
from .spec import IntSpec, QuantConfig

__all__ = [
    "KERNELS",
    "KL",
    "MSE",
    "OBSERVERS",
    "QAT_METHODS",
    "RUNTIMES",
    "SAWB",
    "AWQConfig",
    "FakeQuantize",
    "FreezeBNStats",
    "FreezeObservers",
    "GPTQConfig",
    "InputScaled",
    "IntLayer",
    "IntSpec",
    "KMeansLayer",
    "LSQQuantize",
    "MinMax",
    "MovingMinMax",
    "Observer",
    "ObserverSpec",
    "PACTQuantize",
    "PACTRegularizer",
    "Percentile",
    "QuantConfig",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantConvBn1d",
    "QuantConvBn2d",
    "QuantGraph",
    "QuantLayer",
    "QuantLinear",
    "STEQuantize",
    "SmoothQuantConfig",
    "awq",
    "convert",
    "export_onnx",
    "freeze_bn_stats",
    "freeze_observers",
    "gptq",
    "kmeans_quantize",
    "pact_regularizer",
    "prepare_qat",
    "quantize",
    "requantize",
    "set_runtime",
    "smoothquant",
    "unfreeze_bn_stats",
    "unfreeze_observers",
]
