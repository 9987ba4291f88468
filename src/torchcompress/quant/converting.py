"""Real integer models: :func:`convert`.

Every fake-quant layer becomes an :class:`~torchcompress.quant.int_layer.IntLayer`; a model
quantized in graph mode gets its integer graph (:mod:`~torchcompress.quant.int_graph`); sibling
Linear layers are linked to share one GEMM (:mod:`~torchcompress.quant.siblings`).
"""

from __future__ import annotations

from torch import nn

from .. import forms, io
from ..errors import CompressionStateError, ConfigError
from ..select import set_module, snapshot_modules
from .build import finalize_for_convert
from .graph import QuantGraph, container_of
from .int_graph import build_integer_graph, rebuild
from .int_layer import RUNTIMES, IntLayer
from .kmeans import KMeansLayer
from .lowbit import CudaInt4Kernel, W4A8Kernel  # registers the runtime modes' kernels
from .modules import FakeQuantize, QuantLayer
from .siblings import SiblingGroup, link_siblings

__all__ = [
    "RUNTIMES",
    "CudaInt4Kernel",
    "IntLayer",
    "SiblingGroup",
    "W4A8Kernel",
    "convert",
    "link_siblings",
    "set_runtime",
]


def convert(model: nn.Module, *, fuse_siblings: bool = True, runtime: str = "cache") -> nn.Module:
    """Turn a fake-quant model (from :func:`torchcompress.quantize`) into a real integer model.

    Every fake-quant layer becomes an :class:`IntLayer`: weights stored as integers (int8, or
    packed two per byte at 3-4 bits and four per byte at 2 bits) with their scales. On CPU the
    layers run the int8 kernels that ship with PyTorch (oneDNN ``qconv2d_pointwise`` /
    ``qlinear_pointwise`` for static activations, fbgemm ``linear_dynamic`` for dynamic ones); on
    CUDA, Linear layers run ``torch._int_mm``. Where no kernel fits a configuration (group-wise or
    asymmetric weights, weight-only layers, more than 8 bits, a CPU where the kernel would saturate,
    ...), the layer dequantizes its weights on the fly and says so in its ``repr``. A model quantized
    in graph mode runs its integer graph: activations stay uint8 between layers, with ReLUs and
    residual adds fused into the convolutions.

    The outputs equal the fake-quant model's up to the rounding of a value that lies exactly
    between two integers (at most one step of a quantized tensor, rarely).

    Linear layers of one module that read the same input with dynamic activations (attention's
    query, key and value) share one GEMM on their concatenated weights (:class:`SiblingGroup`),
    which gives exactly the separate layers' outputs.

    Weight-only layers (``activation=None``), k-means layers (:func:`torchcompress.kmeans_quantize`)
    and the other dequantizing fallbacks trade memory against speed at run time; ``runtime``
    chooses (saved with the model; :func:`torchcompress.load` restores it; the file always keeps
    the low-bit weights):

    - ``"cache"`` (default): dequantize the weights on the first call and keep them: float speed,
      float weights in memory at run time. The default because it is the only mode that never runs
      slower than the float model, on every device and batch size (dequantizing at every call ran
      1.07-1.19x slower than fp32 on CNNs and about 4x on a weight-bound MLP; see BENCHMARKS.md).
    - ``"lowbit"``: keep only the low-bit weights in memory; run the device's low-bit kernel where
      there is one (CUDA: torch's int4 tinygemm kernel for 4-bit group-wise weights, bfloat16
      activations), else dequantize at every call (slower than float).
    - ``"w4a8"`` (CPU, opt-in): weights up to 8 bits (symmetric, per tensor or per channel)
      unpacked once to int8 for fbgemm's GEMM with activations quantized per call (dynamic uint8
      per tensor): much faster than float on weight-bound Linear layers, but an approximation of
      the weight-only model. Layers it cannot run are cached.

    The ``repr`` of each layer and :func:`torchcompress.profile` say which runs, and the profile's
    note gives the bytes held at run time where they exceed the stored bytes. :func:`set_runtime`
    switches the mode of a converted (or k-means) model.

    Args:
        model: a model quantized with :func:`torchcompress.quantize`; modified in place.
        fuse_siblings: group sibling Linear layers into one GEMM (see above).
        runtime: ``"cache"``, ``"lowbit"`` or ``"w4a8"`` (see above).

    Returns:
        ``model``, converted.

    Raises:
        CompressionStateError: the model has no fake-quant layer, or one was never calibrated.
        ConfigError: ``runtime`` is not one of the modes above.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = torch.nn.Sequential(torch.nn.Linear(64, 64))
        >>> m = tc.convert(tc.quantize(m, tc.QuantConfig(mode="dynamic")))
        >>> m[0].qweight.dtype, m[0](torch.randn(2, 64)).shape
        (torch.uint8, torch.Size([2, 64]))
        >>> w4 = tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), activation=None)
        >>> m = tc.convert(tc.quantize(torch.nn.Sequential(torch.nn.Linear(64, 64)), w4))
        >>> m[0].runtime, tc.quant.set_runtime(m, "lowbit")[0].runtime
        ('cache', 'lowbit')
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"convert(runtime={runtime!r}) must be one of {list(RUNTIMES)}.")
    forms.check(model, "convert")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    if not layers:
        raise CompressionStateError(
            f"{type(model).__name__} has no fake-quant layer to convert; call tc.quantize(model, "
            "config, ...) first."
        )
    container = container_of(model)
    _check_calibrated(layers)

    bound = model.__dict__.get("forward")
    converted = container.converted if container is not None else False
    try:
        _convert(model, container)
    except BaseException:
        if bound is not None:
            model.__dict__["forward"] = bound
        if container is not None:
            container.converted = converted
        raise
    if fuse_siblings:
        for parent in {id(p): p for p in _parents_of_int_layers(model)}.values():
            link_siblings(parent)
    else:
        for mod in model.modules():
            if isinstance(mod, IntLayer):
                mod.fuse_siblings = False
    _set_runtime(model, runtime)  # (any k-means layers of the model too)
    io.add_history(model, "convert", {"fuse_siblings": fuse_siblings, "runtime": runtime})
    return model


def _check_calibrated(layers: list[tuple[str, QuantLayer]]) -> None:
    """Name every layer with a quantizer that was never calibrated, all at once, before anything
    changes (graph-mode activation quantizers are checked where the integer graph is built)."""
    missing = [
        name
        for name, layer in layers
        for q in (layer.weight_quant, layer.input_quant, layer.output_quant)
        if isinstance(q, FakeQuantize) and not q.calibrated
    ]
    if missing:
        names = ", ".join(repr(n) for n in dict.fromkeys(missing))
        raise CompressionStateError(
            f"Quantizers of {names} were never calibrated; run tc.quantize with calib_data "
            "(static mode), or train the model prepared for QAT, before tc.convert."
        )


def set_runtime(model: nn.Module, runtime: str) -> nn.Module:
    """Switch the runtime mode of every converted and k-means layer of ``model`` (see
    :func:`convert`): ``"cache"``, ``"lowbit"`` or ``"w4a8"`` (k-means layers: ``"w4a8"`` has no
    codebook kernel, they cache). Saved with the model.

    Args:
        model: a converted or k-means-quantized model; modified in place.
        runtime: the mode.

    Returns:
        ``model``.

    Raises:
        ConfigError: an unknown mode.
        CompressionStateError: the model has no converted or k-means layer.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = tc.kmeans_quantize(torch.nn.Sequential(torch.nn.Linear(16, 8)), bits=2)
        >>> "at every call" in repr(tc.quant.set_runtime(m, "lowbit")[0])
        True
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"set_runtime(runtime={runtime!r}) must be one of {list(RUNTIMES)}.")
    if not _set_runtime(model, runtime):
        raise CompressionStateError(
            f"{type(model).__name__} has no converted or k-means layer; call tc.convert or "
            "tc.kmeans_quantize first."
        )
    io.add_history(model, "set_runtime", {"runtime": runtime})
    return model


def _set_runtime(model: nn.Module, runtime: str) -> bool:
    """Set the runtime mode of every integer and k-means layer; whether there was one."""
    found = False
    for mod in model.modules():
        if isinstance(mod, IntLayer | KMeansLayer):
            mod.set_runtime(runtime)
            found = True
    return found


def _parents_of_int_layers(model: nn.Module) -> list[nn.Module]:
    out = []
    for mod in model.modules():
        if any(isinstance(c, IntLayer) for c in mod.children()):
            out.append(mod)
    return out


def _convert(model: nn.Module, container: QuantGraph | None) -> None:
    with snapshot_modules(model):
        finalize_for_convert(model)  # QAT layers: fold BatchNorms, refresh weight ranges
        if container is not None and not container.converted:
            if container.fake_graph is None:  # e.g. unpickled: trace it again
                rebuild(model, container)
            int_graph = build_integer_graph(model, container.fake_graph, configure=True)  # type: ignore[arg-type]
            container.converted = True
            container.bind(model, int_graph)
        for name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]:
            new = IntLayer.from_quant(
                layer, input_fq=layer.input_quant, output_fq=layer.output_quant
            )
            set_module(model, name, new)
