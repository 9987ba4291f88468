"""Post-training quantization: :func:`quantize`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from .. import forms, io
from ..errors import ConfigError, DataError, SelectionError
from ..fusion import fuse
from ..select import module_device_dtype, replace_modules, snapshot_modules
from .build import (
    build_quant_layer,
    check_targets,
    forward_restored_on_error,
    refuse_if_done,
    select_quant_targets,
)
from .calib import calibrate, check_reaches, example_batch
from .graph import prepare_graph
from .hardware import resolve_reduce_range
from .modules import FakeQuantize, QuantLayer
from .spec import QuantConfig

__all__ = ["quantize"]


def quantize(
    model: nn.Module,
    config: QuantConfig | None = None,
    calib_data: Iterable[Any] | Any = None,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    graph: str = "auto",
    fold_bn: bool = True,
    fuse_residual: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """Post-training quantization: replace layers with fake-quant layers that simulate integers exactly.

    Every layer of a registered layer kind (:mod:`torchcompress.layers`: Linear, Conv1d/2d/3d,
    Hugging Face ``Conv1D``, kinds registered from outside), or those ``include``/``exclude``
    select, becomes a :class:`~torchcompress.quant.modules.QuantLinear` (maps over the last
    dimension) / ``QuantConv1d`` / ``QuantConv2d`` / ``QuantConv3d``: float master weights,
    fake-quantized weights (ranges from ``config.weight_observer``) and, unless
    ``config.activation`` is ``None`` (weight-only), fake-quantized inputs:

    - ``mode="static"``: activation ranges are calibrated now from ``calib_data`` with
      ``config.observer`` (streaming statistics, bounded memory; histogram observers read the data
      twice, see :mod:`~torchcompress.quant.calib`). Under ``torch.distributed`` the ranks'
      statistics are combined: with ``"minmax"``, ``"percentile"``, ``"mse"`` or ``"kl"`` every
      rank gets exactly the scales of one process on all the data. Where the model traces with
      ``torch.fx`` (``graph="auto"``), quantization is planned on the whole graph, as the integer
      model will run it: BatchNorms after convolutions are folded (``fold_bn``), activations stay
      quantized between layers (a ReLU, a residual add into a convolution, max-pooling and
      reshapes work on integers), and a quantizer sits only where the integer model quantizes. Parts that do
      not trace are left as they are; a model whose top level does not trace is quantized layer by
      layer (``graph="layer"`` forces that).
    - ``mode="dynamic"``: activation ranges are the min/max of each input at run time (per tensor,
      or per token with ``IntSpec(granularity="token")``), as the dynamic int8 kernels compute them.

    The fake-quant model computes what :func:`torchcompress.convert` runs with integer kernels, so
    its accuracy is the converted model's.

    Args:
        model: the model; modified in place.
        config: the recipe (default ``QuantConfig()``: int8 per-channel weights, uint8 per-tensor
            static activations, min/max ranges).
        calib_data: calibration batches (any iterable of batches: a DataLoader, a list of tensors,
            dicts of keyword arguments, ...). Required for static activation quantization; optional
            otherwise (it is then run once to check it reaches every layer and is finite).
        include: glob patterns of layers to quantize (default: every supported layer).
        exclude: glob patterns of layers to keep in float.
        max_batches: use at most this many calibration batches.
        graph: ``"auto"`` (plan on the traced graph where possible) or ``"layer"``.
        fold_bn: in static mode, fold each BatchNorm into the preceding layer first
            (:func:`torchcompress.fuse`: eval-mode statistics; the BatchNorm becomes an identity),
            as the integer model runs it.
        fuse_residual: in graph mode, fuse a residual add (and its ReLU) into the convolution
            before it, so the convolution's output is never re-quantized on its own (fewer
            roundings, the fastest torch integer graph). ``False`` quantizes the convolution's
            output and the sum separately, the structure onnxruntime fuses into ``QLinearAdd``
            (choose it for models exported to onnxruntime).
        progress: show a progress bar (default: when interactive).

    Returns:
        ``model``, quantized (fake-quant).

    Raises:
        ConfigError: a bad config, or a group size that does not divide a layer's input dimension.
        SelectionError: no layer to quantize, or a pattern that matches nothing.
        CompressionStateError: the layers are in a form quantize may not follow (see
            :mod:`torchcompress.forms`), or all already quantized.
        DataError: static mode without ``calib_data``, or batches that do not fit the model.
        CalibrationError: calibration data that never reaches a targeted layer.
        NumericalError: NaN or Inf in a weight or an activation.

    Example:
        >>> import torch, torchcompress as tc
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> calib = [torch.randn(8, 16) for _ in range(4)]
        >>> model = tc.quantize(model, tc.QuantConfig(), calib)  # static, planned on the fx graph
        >>> sorted(model.quant_graph.quantizers)  # the input, and after Linear+ReLU
        ['input__0', 'output__0']
        >>> model = tc.convert(model)  # uint8 between the two layers, int8 kernels
    """
    forms.check(model, "quantize", include=include, exclude=exclude)
    config = QuantConfig() if config is None else config
    if not isinstance(config, QuantConfig):
        if isinstance(config, dict):
            config = QuantConfig.from_dict(config)
        else:
            raise ConfigError(
                f"quantize() takes a QuantConfig as its config, got {type(config).__name__}."
            )
    if graph not in ("auto", "layer"):
        raise ConfigError(f"graph={graph!r} must be 'auto' or 'layer'.")
    static = config.activation is not None and config.mode == "static"
    if static and calib_data is None:
        raise DataError(
            "Static quantization (mode='static') calibrates activation ranges from calib_data, "
            "but calib_data is None. Pass a few hundred samples of representative inputs (a "
            "DataLoader, or a list of batches), or use mode='dynamic' or activation=None "
            "(weight-only)."
        )
    targets = select_quant_targets(model, include, exclude, "quantization")
    if not targets:
        refuse_if_done(model, "quantize", exclude)
        raise SelectionError(
            f"{type(model).__name__} has no layer to quantize (Linear, Conv, HF Conv1D or another "
            "registered layer kind"
            f"{' after exclude=' + repr(exclude) if exclude else ''}); if it is already quantized, "
            "start again from the float model."
        )
    check_targets(targets, config)
    device, _ = module_device_dtype(model)
    reduce = resolve_reduce_range(config.reduce_range, device)
    use_graph = static and graph == "auto"
    with forward_restored_on_error(model):
        _quantize(
            model,
            config,
            calib_data,
            targets,
            static,
            use_graph,
            fold_bn,
            reduce,
            max_batches,
            progress,
            fuse_residual,
        )
    io.add_history(
        model,
        "quantize",
        config.to_dict(),
        include=include if include is None or isinstance(include, str) else list(include),
        exclude=exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        graph="fx" if hasattr(model, "quant_graph") else "layer",
    )
    return model


def _quantize(
    model: nn.Module,
    config: QuantConfig,
    calib_data: Any,
    targets: list[tuple[str, nn.Module]],
    static: bool,
    use_graph: bool,
    fold_bn: bool,
    reduce: str,
    max_batches: int | None,
    progress: bool | None,
    fuse_residual: bool = True,
) -> None:
    with snapshot_modules(model):
        if static and fold_bn:
            _fold_batchnorms(model, calib_data)
        if not static and calib_data is not None:
            # nothing to calibrate: check the data reaches every (still float) target, finitely
            check_reaches(model, calib_data, [n for n, _ in targets], max_batches)
        plan = None
        if use_graph:
            plan = prepare_graph(model, [n for n, _ in targets], fuse_residual=fuse_residual)
        factories = {
            name: (
                lambda old, name=name: build_quant_layer(
                    old,
                    name,
                    config,
                    reduce=reduce,
                    with_input_quant=plan is None or name not in plan.visible,
                )
            )
            for name, _ in targets
        }
        replace_modules(model, factories)
        quantizers: dict[str, list[FakeQuantize]] = {}
        if plan is not None:
            quantizers = plan.install(model, config, reduce)
        for name, _ in targets:
            layer = model.get_submodule(name)
            if (
                isinstance(layer, QuantLayer)
                and layer.input_quant is not None
                and not layer.input_quant.dynamic
            ):
                quantizers.setdefault(name, []).append(layer.input_quant)
        if quantizers:
            calibrate(model, calib_data, quantizers, max_batches=max_batches, progress=progress)


def _fold_batchnorms(model: nn.Module, calib_data: Any) -> None:
    """Fold BatchNorms into their layers (:func:`torchcompress.fuse`), as integer kernels run them."""
    fuse(model, example_inputs=example_batch(calib_data))
