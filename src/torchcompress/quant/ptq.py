"""Post-training quantization: :func:`quantize`."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .. import io
from ..batches import count_batches, iter_batches, run_model
from ..errors import (
    CalibrationError,
    ConfigError,
    DataError,
    NumericalError,
    SelectionError,
    UnsupportedModuleError,
)
from ..progress import progress_bar
from ..select import (
    module_device_dtype,
    read_by_parent,
    replace_modules,
    select_modules,
    snapshot_modules,
)
from . import functional as QF
from .hardware import resolve_reduce_range
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, QuantLayer, QuantLinear
from .spec import IntSpec, QuantConfig

__all__ = ["quantizable_types", "quantize"]

log = logging.getLogger(__name__)


def _hf_conv1d() -> type[nn.Module] | None:
    """transformers' ``Conv1D`` if transformers is imported (never imports it just to check)."""
    if "transformers" not in sys.modules:
        return None
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def quantizable_types() -> tuple[type[nn.Module], ...]:
    """The layer types :func:`quantize` handles: Linear, Conv1d, Conv2d and (if loaded) HF ``Conv1D``."""
    types: list[type[nn.Module]] = [nn.Linear, nn.Conv1d, nn.Conv2d]
    hf = _hf_conv1d()
    if hf is not None:
        types.append(hf)
    return tuple(types)


def _not_read_by_parent(
    model: nn.Module, include: str | Sequence[str] | None, family: str
) -> Callable[[str, nn.Module], bool]:
    """A selection predicate leaving out the children whose parent reads their weights directly
    (``nn.MultiheadAttention.out_proj``): a quantized replacement would never run.

    Raises:
        UnsupportedModuleError: such a child is named exactly in ``include``.
    """
    owned = read_by_parent(model)
    named = [include] if isinstance(include, str) else list(include or [])
    for name in named:
        if name in owned:
            raise UnsupportedModuleError(
                f"{owned[name]}, so a {family} replacement would never run. Remove it from include=."
            )
    skipped = sorted(owned)
    if skipped:
        log.info("%s: left in float (read by their parent): %s", family, ", ".join(skipped))
    return lambda name, _module: name not in owned


def select_quant_targets(
    model: nn.Module, include: str | Sequence[str] | None, exclude: Any, family: str
) -> list[tuple[str, nn.Module]]:
    """The layers a quantization verb (``quantize``, ``prepare_qat``, ``kmeans_quantize``) replaces.

    Linear, Conv1d, Conv2d and HF Conv1D picked by ``include``/``exclude``, leaving out layers
    that are already quantized and children whose parent reads their weights directly.
    """
    return select_modules(
        model,
        include,
        exclude,
        types=quantizable_types(),
        predicate=_not_read_by_parent(model, include, family),
        skip_types=_skip_types(),
        family=family,
    )


@contextlib.contextmanager
def forward_restored_on_error(model: nn.Module) -> Iterator[None]:
    """Put back the model's instance-level ``forward`` (graph mode binds one) if the block fails."""
    bound = model.__dict__.get("forward")
    try:
        yield
    except BaseException:
        if bound is None:
            model.__dict__.pop("forward", None)
        else:
            model.__dict__["forward"] = bound
        raise


def _skip_types() -> tuple[type[nn.Module], ...]:
    from .converting import IntLayer
    from .kmeans import KMeansLayer

    return (QuantLayer, IntLayer, KMeansLayer)


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    if isinstance(module, nn.Conv1d | nn.Conv2d):
        return f"{type(module).__name__} {module.in_channels}->{module.out_channels}"
    return type(module).__name__


def _ranges(
    config: QuantConfig, reduce: str
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """Integer ranges of weights and activations after ``reduce_range``."""
    w, a = config.weight, config.activation
    wr = (w.qmin, w.qmax) if w is not None else None
    ar = (a.qmin, a.qmax) if a is not None else None
    pair = w is not None and a is not None and w.bits == 8 and a.bits == 8 and w.signed
    if pair and reduce == "weight":
        wr = QF.qrange(7, True)
    elif pair and reduce == "activation":
        ar = QF.qrange(7, a.signed)  # type: ignore[union-attr]
    return wr, ar


def build_quant_layer(
    old: nn.Module,
    name: str,
    config: QuantConfig,
    *,
    reduce: str = "none",
    with_input_quant: bool = True,
) -> QuantLayer:
    """The fake-quant replacement of ``old`` (Linear, Conv1d, Conv2d or HF Conv1D) for ``config``.

    Weight ranges are computed here (the weight is observed once); activation quantizers are left
    observing, to be calibrated (static) or are dynamic.

    Raises:
        ConfigError: the group size does not divide the layer's input dimension.
        NumericalError: the weight holds NaN or Inf.
    """
    hf = _hf_conv1d()
    layer: QuantLayer
    if isinstance(old, nn.Linear):
        # "meta": no throw-away allocation; the original parameters are taken over
        layer = QuantLinear(old.in_features, old.out_features, old.bias is not None, device="meta")
        layer.weight = old.weight
        layer.bias = old.bias
    elif hf is not None and isinstance(old, hf):
        w = old.weight  # [in, out]
        layer = QuantLinear(w.shape[0], w.shape[1], True, source="Conv1D", device="meta")
        layer.weight = nn.Parameter(w.detach().t().contiguous(), requires_grad=w.requires_grad)
        layer.bias = old.bias
    elif isinstance(old, nn.Conv2d | nn.Conv1d):
        cls = QuantConv2d if isinstance(old, nn.Conv2d) else QuantConv1d
        layer = cls(
            old.in_channels,
            old.out_channels,
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            old.groups,
            old.bias is not None,
            old.padding_mode,
            device="meta",
        )
        layer.weight = old.weight
        layer.bias = old.bias
    else:
        raise ConfigError(f"{name!r}: cannot quantize a {type(old).__name__}.")
    if not bool(torch.isfinite(layer.weight.detach()).all()):
        raise NumericalError(
            f"The weight of {name!r} ({_describe(old)}) holds NaN or Inf; it cannot be quantized."
        )
    wr, ar = _ranges(config, reduce)
    opts = config.observer_options
    rows, cols = layer.weight_shape2d
    if config.weight is not None:
        ws = config.weight
        if ws.granularity == "group" and cols % ws.group_size:  # type: ignore[operator]
            raise ConfigError(
                f"IntSpec.group_size={ws.group_size} does not divide the input dimension of "
                f"{name!r} ({_describe(old)}: {cols} inputs per output channel). Pick a divisor of "
                f"{cols}, or exclude the layer."
            )
        wq = FakeQuantize(
            ws,
            role="weight",
            observer=config.weight_observer_name,
            quant_min=wr[0],  # type: ignore[index]
            quant_max=wr[1],  # type: ignore[index]
            shape=(rows, cols),
            observer_options=opts,
            name=name,
        ).to(layer.weight.device)
        wq.observe(layer.weight.detach().reshape(rows, cols))
        wq.calibrate()
        wq.observer.reset()  # type: ignore[union-attr]
        layer.weight_quant = wq
    if config.activation is not None and with_input_quant:
        layer.input_quant = make_activation_quant(
            config, name, conv=not isinstance(layer, QuantLinear), arange=ar
        ).to(layer.weight.device)
    return layer


def make_activation_quant(
    config: QuantConfig,
    name: str,
    *,
    conv: bool = False,
    arange: tuple[int, int] | None = None,
    spec: IntSpec | None = None,
) -> FakeQuantize:
    """An activation quantizer for ``config`` (observing if static, dynamic otherwise)."""
    a = spec or config.activation
    if a is None:
        raise ConfigError(f"{name!r}: the config quantizes no activation.")
    if conv and a.granularity == "token":
        log.warning(
            "%s is a convolution: per-token activation scales apply to Linear inputs; "
            "using one dynamic scale per tensor for it.",
            name,
        )
        a = a.replace(granularity="tensor")
    lo, hi = arange if arange is not None else (a.qmin, a.qmax)
    fq = FakeQuantize(
        a,
        role="activation",
        observer=config.observer,
        dynamic=config.mode == "dynamic",
        quant_min=lo,
        quant_max=hi,
        observer_options=config.observer_options,
        name=name,
    )
    if not fq.dynamic:
        fq.observing, fq.enabled = True, False
    return fq


def calibrate(
    model: nn.Module,
    calib_data: Any,
    quantizers: dict[str, list[FakeQuantize]],
    *,
    max_batches: int | None = None,
    progress: bool | None = None,
) -> int:
    """Run ``calib_data`` through ``model`` with ``quantizers`` observing, then set their ranges.

    Returns:
        The number of batches run.

    Raises:
        DataError: ``calib_data`` is empty or a batch does not fit the model.
        CalibrationError: some targeted layers never received an input.
        NumericalError: NaN or Inf in an observed activation.
    """
    device, _ = module_device_dtype(model)
    for fqs in quantizers.values():
        for fq in fqs:
            fq.observing, fq.enabled = True, False
    modes = {m: m.training for m in model.modules()}
    model.eval()
    n = 0
    try:
        with torch.no_grad():
            batches = iter_batches(
                calib_data, max_batches=max_batches, device=device, what="calib_data"
            )
            total = count_batches(calib_data)
            if max_batches is not None and total is not None:
                total = min(total, max_batches)
            for i, batch in enumerate(
                progress_bar(batches, desc="calibrating", total=total, enabled=progress)
            ):
                run_model(model, batch, index=i, what="calib_data")
                n += 1
    finally:
        for m, t in modes.items():
            m.training = t
    missing = [
        name
        for name, fqs in quantizers.items()
        if any(fq.observer is not None and not fq.observer.observed for fq in fqs)
    ]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise CalibrationError(
            f"calib_data produced no activations for {len(missing)} targeted layer(s): {shown}. "
            "Their forward never ran on the calibration batches (a branch not taken, a module the "
            "model does not call, or inputs of the wrong kind). Exclude them (exclude=[...]) or "
            "pass data that reaches them."
        )
    for fqs in quantizers.values():
        for fq in fqs:
            fq.observing = False
            if fq.observer is not None:
                fq.calibrate()
                fq.observer.reset()
            fq.enabled = True
    return n


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

    Every Linear, Conv1d, Conv2d and Hugging Face ``Conv1D`` (or those ``include``/``exclude``
    select) becomes a :class:`~torchcompress.quant.modules.QuantLinear` /
    ``QuantConv1d`` / ``QuantConv2d``: float master weights, fake-quantized weights (ranges from
    ``config.weight_observer``) and, unless ``config.activation`` is ``None`` (weight-only),
    fake-quantized inputs:

    - ``mode="static"``: activation ranges are calibrated now from ``calib_data`` with
      ``config.observer`` (streaming statistics, bounded memory). Where the model traces with
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
        raise SelectionError(
            f"{type(model).__name__} has no layer to quantize (Linear, Conv1d, Conv2d or HF Conv1D"
            f"{' after exclude=' + repr(exclude) if exclude else ''}); if it is already quantized, "
            "start again from the float model."
        )
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
        plan = None
        if use_graph:
            from .graph import prepare_graph

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
        elif calib_data is not None:
            _check_data(model, calib_data, [n for n, _ in targets], max_batches)


def _fold_batchnorms(model: nn.Module, calib_data: Any) -> None:
    """Fold BatchNorms into their layers (:func:`torchcompress.fuse`), as integer kernels run them."""
    from ..fusion import fuse

    example = None
    try:
        reiterable = iter(calib_data) is not calib_data
    except TypeError:
        reiterable = isinstance(calib_data, torch.Tensor | dict)
    if reiterable:  # never consume a batch of a one-shot iterator
        try:
            example = next(iter(iter_batches(calib_data, max_batches=1, what="calib_data")))
        except (DataError, StopIteration, TypeError):
            example = None
    fuse(model, example_inputs=example)


def _check_data(model: nn.Module, data: Any, names: list[str], max_batches: int | None) -> None:
    """Run ``data`` once: every target must get a finite input."""
    seen: set[str] = set()
    handles = []
    for name in names:
        layer = model.get_submodule(name)

        def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                if not bool(torch.isfinite(x).all()):
                    raise NumericalError(f"NaN or Inf in the input activations of {name!r}.")
                seen.add(name)

        handles.append(layer.register_forward_pre_hook(hook))
    device, _ = module_device_dtype(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(
                iter_batches(data, max_batches=max_batches or 8, device=device, what="calib_data")
            ):
                run_model(model, batch, index=i, what="calib_data")
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    missing = [n for n in names if n not in seen]
    if missing:
        raise CalibrationError(
            f"calib_data produced no activations for {', '.join(repr(m) for m in missing[:8])}."
        )
