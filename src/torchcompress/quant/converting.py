"""Real integer models: :func:`convert`.

Every fake-quant layer becomes an :class:`~torchcompress.quant.int_layer.IntLayer`; a model
quantized in graph mode gets its integer graph (:mod:`~torchcompress.quant.int_graph`); sibling
Linear layers are linked to share one GEMM (:mod:`~torchcompress.quant.siblings`).
"""

from __future__ import annotations

from torch import nn

from .. import forms, io
from ..errors import CompressionStateError
from ..select import set_module, snapshot_modules
from .build import finalize_for_convert
from .graph import QuantGraph, container_of
from .int_graph import build_integer_graph, rebuild
from .int_layer import IntLayer
from .modules import QuantLayer
from .siblings import SiblingGroup, link_siblings

__all__ = ["IntLayer", "SiblingGroup", "convert", "link_siblings"]


def convert(model: nn.Module, *, fuse_siblings: bool = True) -> nn.Module:
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

    Args:
        model: a model quantized with :func:`torchcompress.quantize`; modified in place.
        fuse_siblings: group sibling Linear layers into one GEMM (see above).

    Returns:
        ``model``, converted.

    Raises:
        CompressionStateError: the model has no fake-quant layer, or one was never calibrated.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = torch.nn.Sequential(torch.nn.Linear(64, 64))
        >>> m = tc.convert(tc.quantize(m, tc.QuantConfig(mode="dynamic")))
        >>> m[0].qweight.dtype, m[0](torch.randn(2, 64)).shape
        (torch.uint8, torch.Size([2, 64]))
    """
    forms.check(model, "convert")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLayer)]
    if not layers:
        raise CompressionStateError(
            f"{type(model).__name__} has no fake-quant layer to convert; call tc.quantize(model, "
            "config, ...) first."
        )
    container = container_of(model)

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
    io.add_history(model, "convert", {"fuse_siblings": fuse_siblings})
    return model


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
