"""Quantization-aware training: :func:`prepare_qat`.

:func:`prepare_qat` turns a float model into a trainable fake-quant model, planned exactly as
:func:`torchcompress.quantize` plans post-training quantization (on the ``torch.fx`` graph where the
model traces, so every quantizer sits where the integer model quantizes; layer by layer otherwise),
with quantizers that train:

- ``method="ste"``: ranges re-estimated at every step (weights exactly, activations with an
  observer, a moving min/max by default), straight-through gradients (Jacob et al. 2018).
- ``method="lsq"``: Learned Step Size Quantization (Esser et al., ICLR 2020) of weights and
  activations, learned offsets for asymmetric formats (LSQ+, Bhalgat et al. 2020).
- ``method="pact"``: PACT (Choi et al. 2018) learned clipping of ReLU activations; weights as in
  ``"ste"`` (choose e.g. ``weight_observer="sawb"``, the same authors' weight scheme).

The methods are classes in :data:`~torchcompress.quant.qat.methods.QAT_METHODS`. With ``fold_bn``
each convolution + BatchNorm pair (found as :func:`torchcompress.fuse` finds them) trains folded
(:class:`~torchcompress.quant.qat.conv_bn.QuantConvBn2d`). Train it with
:func:`torchcompress.finetune` (or any loop; DDP included), then :func:`torchcompress.convert`
gives the integer model with the QAT model's eval-mode outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ... import forms, io
from ...errors import CompressionStateError, ConfigError, SelectionError
from ...fusion import fusion_pairs
from ...layers import layer_kind
from ...select import module_device_dtype, replace_modules, snapshot_modules
from ..build import (
    build_quant_layer,
    check_targets,
    forward_restored_on_error,
    select_quant_targets,
)
from ..calib import calibrate, example_batch
from ..geometry import geometry_of
from ..graph import GraphPlan, prepare_graph
from ..hardware import resolve_reduce_range
from ..modules import FakeQuantize, QuantLayer
from ..observers import ObserverSpec
from ..spec import QuantConfig
from .conv_bn import FOLDABLE_BN, conv_bn_class
from .methods import QAT_METHODS, QATMethod, QATOptions
from .origins import layer_origins, point_origins
from .quantizers import QATQuantizer

__all__ = ["prepare_qat"]


def prepare_qat(
    model: nn.Module,
    config: QuantConfig | dict[str, Any] | None = None,
    method: str = "ste",
    calib_data: Iterable[Any] | Any = None,
    fold_bn: bool = True,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    graph: str = "auto",
    fuse_residual: bool = True,
    observer: str | ObserverSpec | None = None,
    lsq_init: str = "observer",
    pact_alpha: float = 10.0,
    pact_fallback: str = "error",
    progress: bool | None = None,
) -> nn.Module:
    """Prepare a model for quantization-aware training (STE, LSQ or PACT), in place.

    The model is planned as :func:`torchcompress.quantize` plans it (same layers, same quantizer
    positions, same integer ranges, ``reduce_range`` included), but its quantizers train:

    - ``"ste"``: fake-quantized weights whose range is re-observed at every step, activations
      through an observer updated at every training step (``observer``; default: the config's
      observer if it is not the plain ``"minmax"``, else ``"moving_minmax"``, whose running
      average follows the activations as they change) and frozen with :func:`freeze_observers`.
      Straight-through gradients. ``calib_data`` is optional (it initialises the ranges).
    - ``"lsq"``: Learned Step Size Quantization (Esser et al., "Learned Step Size Quantization",
      ICLR 2020): every step size is an ``nn.Parameter`` with the gradient scaled by
      ``1 / sqrt(N * Qp)``; asymmetric formats also learn the offset (LSQ+, Bhalgat et al. 2020).
      Step sizes start from calibration: ``lsq_init="observer"`` (the config's observers) or
      ``"lsq"`` (the paper's ``2 * mean|x| / sqrt(Qp)``). Needs ``calib_data`` when activations
      are quantized.
    - ``"pact"``: PACT (Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural
      Networks", 2018): each quantizer reading a ReLU / ReLU6 output (a module, or ``F.relu`` /
      ``torch.relu`` where the model traces) gets a learned clipping value ``alpha`` (initialised
      from ``calib_data``'s maximum if given, else ``pact_alpha``) and an unsigned ``[0, 2^b - 1]``
      range of ``alpha / (2^b - 1)`` steps. The model's own inputs are quantized as in ``"ste"``;
      an activation that is not a ReLU's output is an error unless ``pact_fallback`` is ``"ste"``
      or ``"lsq"`` (then that method quantizes it). Add :func:`pact_regularizer` to the loss.
      Weights are quantized as in ``"ste"`` (``weight_observer="sawb"`` is the authors' choice).

    With ``fold_bn`` every convolution followed by a BatchNorm (found as :func:`torchcompress.fuse`
    finds the pairs) becomes a :class:`~torchcompress.quant.qat.QuantConvBn2d` (or 1d)
    training with the BatchNorm folded into the quantized weight and batch-statistics correction
    (Krishnamoorthi 2018); :func:`freeze_bn_stats` switches to the running statistics (do it for
    the last part of training, e.g. ``FreezeBNStats(after_steps=...)``).

    Every piece of state exists after this call (a fresh model prepared the same way loads a
    trained checkpoint with ``load_state_dict``). The model keeps its train/eval mode: call
    ``model.train()`` (``tc.finetune`` does) to train. :func:`torchcompress.convert` turns the
    trained model into the integer model, whose outputs match its eval-mode outputs.

    Args:
        model: the float model; modified in place.
        config: the formats (a :class:`QuantConfig`; default int8 per-channel weights, uint8
            activations). ``mode="dynamic"`` is supported with ``"ste"`` only.
        method: ``"ste"``, ``"lsq"`` or ``"pact"`` (or another method registered in
            :data:`~torchcompress.quant.qat.QAT_METHODS`).
        calib_data: batches to initialise the activation ranges (any iterable of batches).
        fold_bn: train convolution + BatchNorm pairs folded.
        include: glob patterns of layers to quantize (default: every Linear / Conv).
        exclude: glob patterns of layers to keep in float.
        max_batches: use at most this many calibration batches.
        graph: ``"auto"`` (plan on the ``torch.fx`` graph where the model traces) or ``"layer"``.
        fuse_residual: see :func:`torchcompress.quantize`.
        observer: the activation observer of ``"ste"`` (a name or a spec such as
            ``tc.quant.MovingMinMax(0.1)``; see above).
        lsq_init: ``"observer"`` or ``"lsq"``.
        pact_alpha: initial clipping value without ``calib_data`` (the paper's 10).
        pact_fallback: ``"error"``, ``"ste"`` or ``"lsq"``: how PACT quantizes an activation that
            is not a ReLU output.
        progress: show a progress bar while calibrating.

    Returns:
        ``model``, ready to train.

    Raises:
        ConfigError: an unknown method or option, ``mode="dynamic"`` with LSQ/PACT, PACT on an
            activation that is not a ReLU (naming it), PACT on a model that neither traces nor
            has ``calib_data`` to find its ReLUs.
        DataError: LSQ without ``calib_data``, or batches that do not fit the model.
        SelectionError: no layer to quantize.
        CalibrationError: ``calib_data`` never reaches a quantized layer.

    Example:
        >>> import torch, torchcompress as tc
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
        ...     torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(288, 4))
        >>> calib = [torch.randn(8, 3, 8, 8) for _ in range(2)]
        >>> cfg = tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"),
        ...                      activation=tc.IntSpec(4, symmetric=False, signed=False))
        >>> model = tc.prepare_qat(model, cfg, method="lsq", calib_data=calib)
        >>> type(model[0]).__name__, type(model.quant_graph.quantizers["output__0"]).__name__
        ('QuantConvBn2d', 'LSQQuantize')
        >>> data = [(x, torch.zeros(8, dtype=torch.long)) for x in calib]
        >>> model = tc.convert(tc.finetune(model, data, progress=False))
    """
    config = QuantConfig() if config is None else config
    forms.check(model, "prepare_qat", include=include, exclude=exclude)
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config)
    if not isinstance(config, QuantConfig):
        raise ConfigError(
            f"prepare_qat() takes a QuantConfig as its config, got {type(config).__name__}."
        )
    options = QATOptions(
        observer=observer,
        lsq_init=lsq_init,
        pact_alpha=pact_alpha,
        pact_fallback=pact_fallback,
    )
    qmethod = QAT_METHODS.get(method)(config, options)
    if graph not in ("auto", "layer"):
        raise ConfigError(f"prepare_qat: graph={graph!r} must be 'auto' or 'layer'.")
    if any(isinstance(m, FakeQuantize) for m in model.modules()):
        raise CompressionStateError(
            f"{type(model).__name__} is already quantized (it holds fake-quant modules); start "
            "prepare_qat from the float model, or use tc.quant.requantize to change bit widths."
        )
    qmethod.check(calib_data)
    act = config.activation
    dynamic = act is not None and config.mode == "dynamic"

    targets = select_quant_targets(model, include, exclude, "quantization")
    if not targets:
        raise SelectionError(
            f"{type(model).__name__} has no layer to quantize (Linear, Conv, HF Conv1D or another "
            f"registered layer kind{' after exclude=' + repr(exclude) if exclude else ''})."
        )
    check_targets(targets, config)
    device, _ = module_device_dtype(model)
    reduce = resolve_reduce_range(config.reduce_range, device)
    static = act is not None and not dynamic
    with forward_restored_on_error(model), snapshot_modules(model):
        pairs = _prepare(
            model,
            qmethod,
            calib_data,
            targets,
            static and graph == "auto",
            fold_bn,
            reduce,
            max_batches,
            progress,
            fuse_residual,
        )
    io.add_history(
        model,
        "prepare_qat",
        config.to_dict(),
        **qmethod.history(),
        fold_bn=[list(p) for p in pairs],
        include=include if include is None or isinstance(include, str) else list(include),
        exclude=exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        graph="fx" if hasattr(model, "quant_graph") else "layer",
    )
    return model


def _find_pairs(model: nn.Module, names: set[str], calib_data: Any) -> list[tuple[str, str]]:
    """The (convolution, BatchNorm) pairs among the targets that train folded."""
    if not any(isinstance(m, FOLDABLE_BN) for m in model.modules()):
        return []
    try:
        pairs = fusion_pairs(model, example_inputs=example_batch(calib_data))
    except ConfigError as e:
        raise ConfigError(
            f"prepare_qat(fold_bn=True) cannot see how the BatchNorms of {type(model).__name__} "
            f"are used ({e}). Pass calib_data (one batch is followed through the model), or "
            "fold_bn=False."
        ) from e
    out = []
    for layer_name, bn_name in pairs:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        cls = conv_bn_class(geometry_of(layer)) if layer_kind(layer) is not None else None
        if layer_name not in names or cls is None:
            continue
        if type(bn) is cls.bn_type and bn.track_running_stats:
            out.append((layer_name, bn_name))
    return out


def _prepare(
    model: nn.Module,
    qmethod: QATMethod,
    calib_data: Any,
    targets: list[tuple[str, nn.Module]],
    use_graph: bool,
    fold_bn: bool,
    reduce: str,
    max_batches: int | None,
    progress: bool | None,
    fuse_residual: bool,
) -> list[tuple[str, str]]:
    config = qmethod.config
    names = [n for n, _ in targets]
    pairs = _find_pairs(model, set(names), calib_data) if fold_bn else []
    bns = {layer: model.get_submodule(bn) for layer, bn in pairs}
    if pairs:
        replace_modules(model, {bn: (lambda old: nn.Identity()) for _, bn in pairs})
    plan: GraphPlan | None = None
    if use_graph:
        plan = prepare_graph(model, names, fuse_residual=fuse_residual)
    origins: dict[str, str] = {}
    if qmethod.needs_origins and plan is None:
        if calib_data is None:
            raise ConfigError(
                f"method={qmethod.name!r} must find which layers read a ReLU's output, but "
                f"{type(model).__name__} does not trace with torch.fx (or graph='layer'); pass "
                "calib_data (one batch is followed through the model)."
            )
        origins = layer_origins(model, names, calib_data)

    def factory(old: nn.Module, name: str) -> QuantLayer:
        layer = build_quant_layer(
            old,
            name,
            config,
            reduce=reduce,
            with_input_quant=plan is None or name not in plan.visible,
        )
        bn = bns.get(name)
        if bn is not None:
            layer = conv_bn_class(layer.geometry).from_layer(layer, bn)  # type: ignore[union-attr, arg-type]
        if layer.weight_quant is not None:
            w2d = layer.weight_to_quantize().detach().reshape(layer.weight_shape2d)
            layer.weight_quant = qmethod.weight_quantizer(layer.weight_quant, w2d)
        if layer.input_quant is not None:
            layer.input_quant = qmethod.activation_quantizer(
                layer.input_quant, origins.get(name, "other"), f"the input of {name!r}"
            )
        return layer

    replace_modules(model, {n: (lambda old, n=n: factory(old, n)) for n in names})
    quantizers: dict[str, list[FakeQuantize]] = {}
    if plan is not None:
        points = point_origins(plan, model, fuse_residual) if qmethod.needs_origins else {}
        installed = plan.install(model, config, reduce)
        container = model.quant_graph
        owner = {id(fq): layer for layer, fqs in installed.items() for fq in fqs}
        for pname in list(container.quantizers.keys()):
            old_fq = container.quantizers[pname]
            origin, what = points.get(pname, ("other", pname))
            new = qmethod.activation_quantizer(old_fq, origin, what)  # type: ignore[arg-type]
            container.quantizers[pname] = new
            quantizers.setdefault(owner.get(id(old_fq), pname), []).append(new)
    for name in names:
        layer = model.get_submodule(name)
        fq = layer.input_quant if isinstance(layer, QuantLayer) else None
        if fq is not None and not fq.dynamic:
            quantizers.setdefault(name, []).append(fq)
    calibrated = calib_data is not None and bool(quantizers)
    if calibrated:
        calibrate(model, calib_data, quantizers, max_batches=max_batches, progress=progress)
    for fqs in quantizers.values():
        for fq in fqs:
            if isinstance(fq, QATQuantizer):
                fq.start_training(calibrated)
    return pairs
