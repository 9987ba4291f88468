"""Quantization-aware training: :func:`prepare_qat` and its helpers.

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

With ``fold_bn`` each convolution + BatchNorm pair (found as :func:`torchcompress.fuse` finds
them) trains folded (:class:`~torchcompress.quant.qat_modules.QuantConvBn2d`). Train it with
:func:`torchcompress.finetune` (or any loop; DDP included), then :func:`torchcompress.convert`
gives the integer model with the QAT model's eval-mode outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .. import io
from ..batches import iter_batches, run_model
from ..errors import CompressionStateError, ConfigError, DataError, SelectionError, check_choice
from ..select import (
    module_device_dtype,
    replace_modules,
    set_module,
    snapshot_modules,
)
from ..train.callbacks import Callback, TrainState
from . import functional as QF
from .hardware import resolve_reduce_range
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, QuantLayer
from .ptq import (
    _ranges,
    build_quant_layer,
    calibrate,
    forward_restored_on_error,
    select_quant_targets,
)
from .qat_modules import (
    LSQQuantize,
    PACTQuantize,
    QuantConvBn1d,
    QuantConvBn2d,
    STEQuantize,
    _QuantConvBnNd,
)
from .spec import IntSpec, QuantConfig

__all__ = [
    "METHODS",
    "FreezeBNStats",
    "FreezeObservers",
    "PACTRegularizer",
    "finalize_for_convert",
    "freeze_bn_stats",
    "freeze_observers",
    "pact_regularizer",
    "prepare_qat",
    "qat_quantizers",
    "requantize",
    "unfreeze_bn_stats",
    "unfreeze_observers",
]

log = logging.getLogger(__name__)

METHODS = ("ste", "lsq", "pact")
LSQ_INITS = ("observer", "lsq")
PACT_FALLBACKS = ("error", "ste", "lsq")

_RELU_FUNCS = {torch.relu, torch.relu_, torch.nn.functional.relu, torch.nn.functional.relu6}
# ops that keep a ReLU's output a clipped non-negative activation (PACT applies after them)
_KEEP_MODULES = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)
_KEEP_FUNCS = {
    torch.flatten,
    torch.mean,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.avg_pool1d,
    torch.nn.functional.adaptive_avg_pool1d,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.dropout,
}
_KEEP_METHODS = {"mean", "view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}


# --- building the quantizers -----------------------------------------------------------------


def _weight_quantizer(
    method: str, fq: FakeQuantize, w2d: Tensor, config: QuantConfig, lsq_init: str
) -> FakeQuantize:
    """The QAT weight quantizer replacing the PTQ one ``fq`` (same format and integer range)."""
    kw: dict[str, Any] = {
        "role": "weight",
        "observer": config.weight_observer_name,
        "quant_min": fq.quant_min,
        "quant_max": fq.quant_max,
        "shape": fq.shape,
        "observer_options": config.observer_options,
        "name": fq.name,
    }
    new: FakeQuantize
    if method == "lsq":
        new = LSQQuantize(fq.spec, **kw).to(w2d.device)
        if lsq_init == "lsq":
            new.observer.observe(new._grouped(w2d.detach()))  # type: ignore[union-attr]
            new.init_lsq(w2d)  # type: ignore[attr-defined]
        else:
            new.observe(w2d.detach())
            new.calibrate()
        new.observer.reset()  # type: ignore[union-attr]
    else:
        new = STEQuantize(fq.spec, **kw).to(w2d.device)
        new.refresh(w2d)  # type: ignore[attr-defined]
    return new


def _act_quantizer(
    method: str,
    fq: FakeQuantize,
    config: QuantConfig,
    observer: str,
    lsq_init: str,
    pact_alpha: float,
) -> FakeQuantize:
    """The QAT activation quantizer replacing the PTQ one ``fq`` (``method``: ste, lsq or pact)."""
    if fq.dynamic:
        return fq
    kw: dict[str, Any] = {
        "role": "activation",
        "quant_min": fq.quant_min,
        "quant_max": fq.quant_max,
        "observer_options": config.observer_options,
        "name": fq.name,
    }
    device = fq.zero_point.device
    if method == "pact":
        a = fq.spec
        bits = a.bits if fq.quant_max - fq.quant_min >= 2**a.bits - 1 else a.bits - 1
        spec = a.replace(signed=False, symmetric=True)
        kw.update(quant_min=0, quant_max=2**bits - 1)
        new: FakeQuantize = PACTQuantize(spec, alpha=pact_alpha, observer="minmax", **kw)
    elif method == "lsq":
        new = LSQQuantize(fq.spec, observer=config.observer, **kw)
        new.init = lsq_init  # type: ignore[attr-defined]
    else:
        new = STEQuantize(fq.spec, observer=observer, **kw)
    new.observe_relu = fq.observe_relu
    return new.to(device)


def _seed_observer(fq: STEQuantize) -> None:
    """After calibration, start the step-wise statistics from the calibrated range."""
    if fq.observer is None or not fq.calibrated:
        return
    fq.observer.reset()
    s = fq.scale.detach().float().reshape(-1)
    z = fq.zero_point.detach().float().reshape(-1)
    lo = (fq.quant_min - z) * s
    hi = (fq.quant_max - z) * s
    fq.observer.observe(torch.stack([lo, hi], dim=1).reshape(-1, 2))


# --- PACT: which quantizers read a ReLU's output ---------------------------------------------


def _origin(node: Any, modules: dict[str, nn.Module]) -> str:
    """``"relu"``, ``"input"`` (the model's data) or ``"other"`` for the value of ``node``."""
    from .graph import _act_kind, _pass_kind

    seen = 0
    while isinstance(node, fx.Node) and seen < 64:
        seen += 1
        if node.op == "placeholder":
            return "input"
        if _act_kind(node, modules) is not None:
            return "relu"
        if node.op == "call_function" and node.target in _RELU_FUNCS:
            return "relu"
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(m, nn.ReLU | nn.ReLU6):
            return "relu"
        keep = (
            isinstance(m, _KEEP_MODULES)
            or (node.op == "call_function" and node.target in _KEEP_FUNCS)
            or (node.op == "call_method" and node.target in _KEEP_METHODS)
        )
        if (keep or _pass_kind(node, modules) in ("same", "pad", "relu")) and node.args:
            node = node.args[0]
            continue
        return "other"
    return "other"


def _point_origins(plan: Any, model: nn.Module, fuse_residual: bool) -> dict[str, tuple[str, str]]:
    """Graph quantizer name -> (origin of its value, a description for errors)."""
    from .graph import find_groups, plan_points

    modules = dict(model.named_modules())
    targets = set(plan.visible)
    points = plan_points(plan.graph, modules, targets, fuse_residual)
    groups = find_groups(plan.graph, modules, targets, fuse_residual)
    by_layer = {g.layer: g for g in groups.values()}
    out: dict[str, tuple[str, str]] = {}
    for p in points:
        if p.where == "output":
            g = by_layer.get(p.node) or next((g for g in groups.values() if g.tail is p.node), None)
            act = getattr(g, "act", None) if g is not None else None
            if act is not None:
                out[p.name] = ("relu", f"the output of {p.layer!r}")
            else:
                out[p.name] = (_origin(p.node, modules), f"the output of {p.layer!r}")
        elif p.where == "input":
            out[p.name] = (_origin(p.node.args[0], modules), f"the input of {p.layer!r}")
        elif p.where == "accum":
            add = p.node
            layer_name = p.name[len("accum_") :]
            a = add.args[0]
            other = add.args[1] if (isinstance(a, fx.Node) and a.name == layer_name) else a
            o = _origin(other, modules)
            out[p.name] = ("residual" if o == "other" else o, f"the residual added to {p.layer!r}")
        else:  # addin
            i = int(p.name[len("input") : p.name.index("_")])
            o = _origin(p.node.args[i], modules)
            out[p.name] = (
                "residual" if o == "other" else o,
                f"an operand of the add after {p.layer!r}",
            )
    return out


_RELU_NAMES = {"relu", "relu_", "relu6", "hardtanh"}
_KEEP_NAMES = {
    "flatten",
    "view",
    "reshape",
    "mean",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "max_pool1d",
    "max_pool2d",
    "adaptive_max_pool2d",
    "dropout",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "clone",
    "__getitem__",
}


class _ReluTracker(TorchFunctionMode):
    """Follows which tensors are ReLU outputs (or pooled / reshaped ReLU outputs) in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.relu: dict[int, Tensor] = {}  # id -> tensor (kept alive so ids stay unique)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if isinstance(out, Tensor):
            first = args[0] if args else None
            if name in _RELU_NAMES or (
                name in _KEEP_NAMES and isinstance(first, Tensor) and id(first) in self.relu
            ):
                self.relu[id(out)] = out
        return out


def _layer_origins(model: nn.Module, names: list[str], calib_data: Any) -> dict[str, str]:
    """Layer mode: which layers read a ReLU's output (or the model's input), from one batch."""
    tracker = _ReluTracker()
    model_inputs: set[int] = set()
    seen: dict[str, str] = {}
    handles = []
    for name in names:

        def pre(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            x = args[0] if args else None
            kind = "input" if id(x) in model_inputs else "other"
            seen.setdefault(name, "relu" if id(x) in tracker.relu else kind)

        handles.append(model.get_submodule(name).register_forward_pre_hook(pre))
    device, _ = module_device_dtype(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(
                iter_batches(calib_data, max_batches=1, device=device, what="calib_data")
            ):
                inputs = [*batch.args, *batch.kwargs.values()]
                model_inputs.update(id(t) for t in inputs if isinstance(t, Tensor))
                with tracker:
                    run_model(model, batch, index=i, what="calib_data")
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return seen


# --- the verb --------------------------------------------------------------------------------


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
    observer: str | None = None,
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
    finds the pairs) becomes a :class:`~torchcompress.quant.qat_modules.QuantConvBn2d` (or 1d)
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
        method: ``"ste"``, ``"lsq"`` or ``"pact"``.
        calib_data: batches to initialise the activation ranges (any iterable of batches).
        fold_bn: train convolution + BatchNorm pairs folded.
        include: glob patterns of layers to quantize (default: every Linear / Conv).
        exclude: glob patterns of layers to keep in float.
        max_batches: use at most this many calibration batches.
        graph: ``"auto"`` (plan on the ``torch.fx`` graph where the model traces) or ``"layer"``.
        fuse_residual: see :func:`torchcompress.quantize`.
        observer: the activation observer of ``"ste"`` (see above).
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
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config)
    if not isinstance(config, QuantConfig):
        raise ConfigError(
            f"prepare_qat() takes a QuantConfig as its config, got {type(config).__name__}."
        )
    check_choice("method", method, METHODS, owner="prepare_qat")
    check_choice("lsq_init", lsq_init, LSQ_INITS, owner="prepare_qat")
    check_choice("pact_fallback", pact_fallback, PACT_FALLBACKS, owner="prepare_qat")
    if graph not in ("auto", "layer"):
        raise ConfigError(f"prepare_qat: graph={graph!r} must be 'auto' or 'layer'.")
    if not (isinstance(pact_alpha, int | float) and pact_alpha > 0):
        raise ConfigError(f"prepare_qat: pact_alpha must be a positive number, got {pact_alpha!r}.")
    if any(isinstance(m, FakeQuantize) for m in model.modules()):
        raise CompressionStateError(
            f"{type(model).__name__} is already quantized (it holds fake-quant modules); start "
            "prepare_qat from the float model, or use tc.quant.requantize to change bit widths."
        )
    act = config.activation
    dynamic = act is not None and config.mode == "dynamic"
    if dynamic and method != "ste":
        raise ConfigError(
            f"method={method!r} learns static activation ranges; QuantConfig(mode='dynamic') "
            "computes them from each input. Use mode='static', or method='ste'."
        )
    if method == "lsq" and act is not None and calib_data is None:
        raise DataError(
            "method='lsq' initialises the activation step sizes from calibration data (Esser et "
            "al. 2020), but calib_data is None. Pass a few batches of training inputs as "
            "calib_data=..., or use activation=None (weight-only), or method='ste'."
        )
    if method == "pact" and act is None:
        raise ConfigError(
            "method='pact' learns activation clipping, but config.activation is None; use "
            "method='ste' or 'lsq' for weight-only QAT."
        )
    if observer is not None:
        from .observers import OBSERVERS

        OBSERVERS.get(observer)
    act_observer = observer or (config.observer if config.observer != "minmax" else "moving_minmax")

    targets = select_quant_targets(model, include, exclude, "quantization")
    if not targets:
        raise SelectionError(
            f"{type(model).__name__} has no layer to quantize (Linear, Conv1d, Conv2d or HF Conv1D"
            f"{' after exclude=' + repr(exclude) if exclude else ''})."
        )
    device, _ = module_device_dtype(model)
    reduce = resolve_reduce_range(config.reduce_range, device)
    static = act is not None and not dynamic
    opts = {
        "method": method,
        "act_observer": act_observer,
        "lsq_init": lsq_init,
        "pact_alpha": float(pact_alpha),
        "pact_fallback": pact_fallback,
    }
    with forward_restored_on_error(model), snapshot_modules(model):
        pairs = _prepare(
            model,
            config,
            calib_data,
            targets,
            static and graph == "auto",
            fold_bn,
            reduce,
            max_batches,
            progress,
            fuse_residual,
            opts,
        )
    io.add_history(
        model,
        "prepare_qat",
        config.to_dict(),
        method=method,
        fold_bn=[list(p) for p in pairs],
        lsq_init=lsq_init,
        observer=act_observer,
        include=include if include is None or isinstance(include, str) else list(include),
        exclude=exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        graph="fx" if hasattr(model, "quant_graph") else "layer",
    )
    return model


def _example(calib_data: Any) -> Any:
    if calib_data is None:
        return None
    try:
        reiterable = iter(calib_data) is not calib_data
    except TypeError:
        reiterable = isinstance(calib_data, torch.Tensor | dict)
    if not reiterable:
        return None
    try:
        return next(iter(iter_batches(calib_data, max_batches=1, what="calib_data")))
    except (DataError, StopIteration, TypeError):
        return None


def _find_pairs(model: nn.Module, names: set[str], calib_data: Any) -> list[tuple[str, str]]:
    from ..fusion import fusion_pairs

    if not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model.modules()):
        return []
    try:
        pairs = fusion_pairs(model, example_inputs=_example(calib_data))
    except ConfigError as e:
        raise ConfigError(
            f"prepare_qat(fold_bn=True) cannot see how the BatchNorms of {type(model).__name__} "
            f"are used ({e}). Pass calib_data (one batch is followed through the model), or "
            "fold_bn=False."
        ) from e
    out = []
    for layer_name, bn_name in pairs:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        if layer_name not in names or not isinstance(layer, nn.Conv1d | nn.Conv2d):
            continue
        want = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
        if type(bn) is want and bn.track_running_stats:
            out.append((layer_name, bn_name))
    return out


def _prepare(
    model: nn.Module,
    config: QuantConfig,
    calib_data: Any,
    targets: list[tuple[str, nn.Module]],
    use_graph: bool,
    fold_bn: bool,
    reduce: str,
    max_batches: int | None,
    progress: bool | None,
    fuse_residual: bool,
    opts: dict[str, Any],
) -> list[tuple[str, str]]:
    method = opts["method"]
    names = [n for n, _ in targets]
    pairs = _find_pairs(model, set(names), calib_data) if fold_bn else []
    bns = {layer: model.get_submodule(bn) for layer, bn in pairs}
    if pairs:
        replace_modules(model, {bn: (lambda old: nn.Identity()) for _, bn in pairs})
    plan = None
    if use_graph:
        from .graph import prepare_graph

        plan = prepare_graph(model, names, fuse_residual=fuse_residual)
    layer_origins: dict[str, str] = {}
    if method == "pact" and plan is None:
        if calib_data is None:
            raise ConfigError(
                f"method='pact' must find which layers read a ReLU's output, but "
                f"{type(model).__name__} does not trace with torch.fx (or graph='layer'); pass "
                "calib_data (one batch is followed through the model)."
            )
        layer_origins = _layer_origins(model, names, calib_data)

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
            layer = _conv_bn(layer, bn)  # type: ignore[arg-type]
        if layer.weight_quant is not None:
            w = layer.folded_weight() if isinstance(layer, _QuantConvBnNd) else layer.weight
            layer.weight_quant = _weight_quantizer(
                method,
                layer.weight_quant,
                w.detach().reshape(layer.weight_shape2d),
                config,
                opts["lsq_init"],
            )
        if layer.input_quant is not None:
            layer.input_quant = _act_for(
                layer.input_quant,
                layer_origins.get(name, "other"),
                f"the input of {name!r}",
                config,
                opts,
            )
        return layer

    replace_modules(model, {n: (lambda old, n=n: factory(old, n)) for n in names})
    quantizers: dict[str, list[FakeQuantize]] = {}
    if plan is not None:
        origins = _point_origins(plan, model, fuse_residual) if method == "pact" else {}
        installed = plan.install(model, config, reduce)
        container = model.quant_graph
        owner = {id(fq): layer for layer, fqs in installed.items() for fq in fqs}
        for pname in list(container.quantizers.keys()):
            old_fq = container.quantizers[pname]
            origin, what = origins.get(pname, ("other", pname))
            new = _act_for(old_fq, origin, what, config, opts)  # type: ignore[arg-type]
            container.quantizers[pname] = new
            quantizers.setdefault(owner.get(id(old_fq), pname), []).append(new)
    for name in names:
        layer = model.get_submodule(name)
        fq = layer.input_quant if isinstance(layer, QuantLayer) else None
        if fq is not None and not fq.dynamic:
            quantizers.setdefault(name, []).append(fq)
    if calib_data is not None and quantizers:
        calibrate(model, calib_data, quantizers, max_batches=max_batches, progress=progress)
        for fqs in quantizers.values():
            for fq in fqs:
                if isinstance(fq, STEQuantize):
                    fq.observing = True
                    _seed_observer(fq)
    else:
        for fqs in quantizers.values():
            for fq in fqs:
                fq.enabled = True
                fq.observing = isinstance(fq, STEQuantize)
    return pairs


def _act_for(
    fq: FakeQuantize, origin: str, what: str, config: QuantConfig, opts: dict[str, Any]
) -> FakeQuantize:
    method = opts["method"]
    if method == "pact" and origin != "relu":
        if origin == "input":  # the model's own inputs: data, not an activation
            method = "ste"
        elif origin == "residual":  # a residual operand (e.g. a shortcut): not a layer's activation
            method = "ste" if opts["pact_fallback"] == "error" else opts["pact_fallback"]
        elif opts["pact_fallback"] == "error":
            raise ConfigError(
                f"method='pact' clips ReLU activations, but {what} is not the output of a ReLU "
                "(or ReLU6). Exclude that layer (exclude=[...]), or pass pact_fallback='lsq' or "
                "'ste' to quantize such activations with that method."
            )
        else:
            method = opts["pact_fallback"]
    return _act_quantizer(
        method, fq, config, opts["act_observer"], opts["lsq_init"], opts["pact_alpha"]
    )


def _conv_bn(layer: QuantConv1d | QuantConv2d, bn: nn.Module) -> _QuantConvBnNd:
    cls = QuantConvBn2d if isinstance(layer, QuantConv2d) else QuantConvBn1d
    new = cls(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        layer.bias is not None,
        layer.padding_mode,
        device="meta",
    )
    new.weight = layer.weight
    new.bias = layer.bias
    new._init_bn(bn)  # type: ignore[arg-type]
    new.weight_quant = layer.weight_quant
    new.input_quant = layer.input_quant
    new.output_quant = layer.output_quant
    new.train(bn.training)
    return new


# --- helpers -----------------------------------------------------------------------------------


def qat_quantizers(model: nn.Module) -> Iterator[tuple[str, FakeQuantize]]:
    """``(name, quantizer)`` for every QAT quantizer (STE, LSQ, PACT) of ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, STEQuantize | LSQQuantize | PACTQuantize):
            yield name, m


def freeze_observers(model: nn.Module) -> nn.Module:
    """Stop updating the STE ranges (weights and activations keep their current range).

    Example:
        >>> import torch, torchcompress as tc
        >>> m = tc.prepare_qat(torch.nn.Sequential(torch.nn.Linear(4, 4)), method="ste")
        >>> _ = tc.quant.freeze_observers(m)
    """
    for _, fq in qat_quantizers(model):
        if isinstance(fq, STEQuantize):
            fq.observing = False
    return model


def unfreeze_observers(model: nn.Module) -> nn.Module:
    """Resume updating the STE ranges at every training step."""
    for _, fq in qat_quantizers(model):
        if isinstance(fq, STEQuantize):
            fq.observing = True
    return model


def freeze_bn_stats(model: nn.Module) -> nn.Module:
    """Folded conv+BN layers use (and stop updating) their running statistics.

    After this the training-mode forward of every :class:`~torchcompress.quant.qat_modules.QuantConvBn2d`
    computes exactly what the converted layer computes (Krishnamoorthi 2018 freezes the
    statistics for the last part of training).

    Example:
        >>> import torch, torchcompress as tc
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> m = tc.prepare_qat(m, method="ste", graph="layer", calib_data=[torch.randn(2, 3, 8, 8)])
        >>> bool(tc.quant.freeze_bn_stats(m)[0].stats_frozen)
        True
    """
    for m in model.modules():
        if isinstance(m, _QuantConvBnNd):
            m.stats_frozen.fill_(True)
    return model


def unfreeze_bn_stats(model: nn.Module) -> nn.Module:
    """Folded conv+BN layers normalise with batch statistics again while training."""
    for m in model.modules():
        if isinstance(m, _QuantConvBnNd):
            m.stats_frozen.fill_(False)
    return model


class FreezeBNStats(Callback):
    """A :func:`torchcompress.finetune` callback: :func:`freeze_bn_stats` after ``after_steps`` steps.

    Args:
        after_steps: optimizer steps before freezing.

    Example:
        >>> cb = FreezeBNStats(after_steps=200)
    """

    def __init__(self, after_steps: int) -> None:
        if isinstance(after_steps, bool) or not isinstance(after_steps, int) or after_steps < 0:
            raise ConfigError(
                f"FreezeBNStats.after_steps must be an int >= 0, got {after_steps!r}."
            )
        self.after_steps = after_steps

    def on_train_begin(self, state: TrainState) -> None:
        if self.after_steps == 0:
            freeze_bn_stats(state.model)

    def on_step_end(self, state: TrainState) -> None:
        if state.step >= self.after_steps:
            freeze_bn_stats(state.model)


class FreezeObservers(Callback):
    """A :func:`torchcompress.finetune` callback: :func:`freeze_observers` after ``after_steps`` steps.

    Args:
        after_steps: optimizer steps before freezing.

    Example:
        >>> cb = FreezeObservers(after_steps=300)
    """

    def __init__(self, after_steps: int) -> None:
        if isinstance(after_steps, bool) or not isinstance(after_steps, int) or after_steps < 0:
            raise ConfigError(
                f"FreezeObservers.after_steps must be an int >= 0, got {after_steps!r}."
            )
        self.after_steps = after_steps

    def on_train_begin(self, state: TrainState) -> None:
        if self.after_steps == 0:
            freeze_observers(state.model)

    def on_step_end(self, state: TrainState) -> None:
        if state.step >= self.after_steps:
            freeze_observers(state.model)


class PACTRegularizer:
    """PACT's L2 penalty ``weight / 2 * sum(alpha^2)`` over the clipping values of a model.

    Callable as ``regularizer(model) -> scalar Tensor`` for ``tc.finetune(..., regularizer=...)``.

    Args:
        weight: the coefficient (the paper's ``lambda_alpha``; it uses the weight decay, e.g. 2e-4).

    Example:
        >>> import torch
        >>> reg = PACTRegularizer(1e-3)
        >>> float(reg(torch.nn.Linear(2, 2)))  # no PACT quantizer: zero
        0.0
    """

    def __init__(self, weight: float = 2e-4) -> None:
        if not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(f"PACTRegularizer.weight must be a number >= 0, got {weight!r}.")
        self.weight = float(weight)

    def __call__(self, model: nn.Module) -> Tensor:
        alphas = [m.alpha for m in model.modules() if isinstance(m, PACTQuantize)]
        if not alphas:
            p = next(iter(model.parameters()), None)
            return torch.zeros((), device=p.device if p is not None else None)
        return 0.5 * self.weight * sum((a.float() ** 2).sum() for a in alphas)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"PACTRegularizer(weight={self.weight})"


def pact_regularizer(weight: float = 2e-4) -> PACTRegularizer:
    """The L2 penalty on PACT's clipping values, for ``tc.finetune(regularizer=...)``.

    Example:
        >>> import torchcompress as tc
        >>> reg = tc.quant.pact_regularizer(1e-4)
    """
    return PACTRegularizer(weight)


# --- changing bit widths mid-training -------------------------------------------------------


def _new_range(fq: FakeQuantize, spec: IntSpec, rng: tuple[int, int] | None) -> tuple[int, int]:
    if isinstance(fq, PACTQuantize):
        bits = spec.bits
        return 0, 2**bits - 1
    return rng if rng is not None else (spec.qmin, spec.qmax)


def _rescale(fq: FakeQuantize, qmin: int, qmax: int) -> None:
    """Keep the real range ``[(qmin - z) s, (qmax - z) s]`` on the new integer range."""
    if isinstance(fq, PACTQuantize):
        return
    with torch.no_grad():
        s = fq.scale.detach().double()
        z = fq.zero_point.detach().double()
        lo = (fq.quant_min - z) * s
        hi = (fq.quant_max - z) * s
        if bool((z == 0).all()) and fq.spec.symmetric:
            new_s = s * (fq.quant_max / max(qmax, 1))
            new_z = z
        else:
            new_s = (hi - lo) / (qmax - qmin)
            new_z = qmin - lo / new_s
            if fq.role == "activation":
                new_z = new_z.clamp(qmin, qmax)
        fq.scale.copy_(new_s.clamp(min=QF.SCALE_EPS).to(fq.scale.dtype))
        fq.zero_point.copy_(new_z.round().to(fq.zero_point.dtype))


def requantize(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Change the bit widths of a QAT model mid-training, keeping what was learned.

    Only the bit widths (and ``reduce_range``) may change; the granularities, symmetry and
    signedness must stay. LSQ step sizes (and offsets) and STE ranges are rescaled so that the
    real clipping range is kept on the new integer range; PACT's ``alpha`` is kept (its steps
    become ``alpha / (2^b - 1)``); folded BatchNorms and every weight are untouched. STE observers
    restart their statistics from the rescaled range.

    Args:
        model: a model from :func:`prepare_qat`; modified in place.
        config: the new formats.

    Returns:
        ``model``.

    Raises:
        CompressionStateError: ``model`` has no QAT quantizer.
        ConfigError: ``config`` changes more than the bit widths, or drops weight/activation quantization.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = tc.prepare_qat(torch.nn.Sequential(torch.nn.Linear(8, 8)), method="ste",
        ...                    config=tc.QuantConfig(activation=None))
        >>> m = tc.quant.requantize(m, tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), activation=None))
        >>> m[0].weight_quant.spec.bits
        4
    """
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config)
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"requantize() takes a QuantConfig, got {type(config).__name__}.")
    fqs = list(qat_quantizers(model))
    if not fqs:
        raise CompressionStateError(
            f"{type(model).__name__} has no quantization-aware training quantizer; call "
            "tc.prepare_qat first."
        )
    device, _ = module_device_dtype(model)
    reduce = resolve_reduce_range(config.reduce_range, device)
    wr, ar = _ranges(config, reduce)
    plan = []
    for name, fq in fqs:
        new_spec = config.weight if fq.role == "weight" else config.activation
        if new_spec is None:
            raise ConfigError(
                f"requantize cannot drop {fq.role} quantization ({name!r} is quantized); only bit "
                "widths change. Prepare the float model again instead."
            )
        old = fq.spec
        keep = ("symmetric", "signed", "granularity", "group_size")
        if isinstance(fq, PACTQuantize):
            keep = ("granularity",)
        changed = [k for k in keep if getattr(old, k) != getattr(new_spec, k)]
        if changed:
            raise ConfigError(
                f"requantize only changes bit widths, but the new {fq.role} IntSpec changes "
                f"{', '.join(changed)} of {name!r} ({old.short()} -> {new_spec.short()})."
            )
        rng = wr if fq.role == "weight" else ar
        plan.append((name, fq, new_spec, _new_range(fq, new_spec, rng)))
    for _name, fq, new_spec, (qmin, qmax) in plan:
        _rescale(fq, qmin, qmax)
        fq.spec = (
            new_spec if not isinstance(fq, PACTQuantize) else fq.spec.replace(bits=new_spec.bits)
        )
        fq.quant_min, fq.quant_max = qmin, qmax
        if fq.observer is not None:
            from .observers import make_observer

            was = fq.observer
            fq.observer = make_observer(
                fq.observer_name,
                qmin=qmin,
                qmax=qmax,
                symmetric=fq.spec.symmetric,
                include_zero=fq.include_zero,
                exact=fq.role == "weight",
                **config.observer_options,
            ).to(fq.zero_point.device)
            del was
            if isinstance(fq, STEQuantize) and fq.role == "activation":
                _seed_observer(fq)
    io.add_history(model, "requantize", config.to_dict())
    return model


# --- conversion --------------------------------------------------------------------------------


def finalize_for_convert(model: nn.Module) -> None:
    """Make a QAT model plain fake-quant before :func:`torchcompress.convert` (called by it).

    Folded conv+BN layers become fake-quant convolutions with the folded weight and bias, and the
    STE weight ranges are recomputed from the current weights.
    """
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, _QuantConvBnNd)]:
        set_module(model, name, m.to_quant_layer())
    for m in model.modules():
        if isinstance(m, QuantLayer) and isinstance(m.weight_quant, STEQuantize):
            m.weight_quant.refresh(m.weight.detach().reshape(m.weight_shape2d))
