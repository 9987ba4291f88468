"""The one calibration loop: run data through a model and gather statistics of its layers.

:func:`collect` takes the layers to observe and the statistics each needs (by name, from
:data:`~torchcompress.calibration.statistics.STATISTICS`), runs the data once (twice when
per-sample gradients are asked for) and returns one :class:`LayerStats` per layer:

- the model runs in eval mode (BatchNorm statistics and dropout do not drift; every module's flag
  is restored), under ``torch.no_grad`` unless a statistic needs gradients; gradients are taken with
  ``torch.autograd.grad`` with respect to each layer's *effective* weight (after a parametrization
  such as a pruning mask), so parameters' ``.grad`` and ``requires_grad`` flags are left as they were;
- statistics accumulate in bounded memory, whatever the amount of data; hooks are always removed;
- under ``torch.distributed`` every statistic is all-reduced (see
  :mod:`~torchcompress.calibration.distributed`), so every rank decides as one process would;
- a layer the data never reached, or statistics holding NaN/Inf, are clear errors naming every
  such layer.

:func:`run_batches` is the data loop itself, for modules that observe inside their own forward
(fake-quantizers with observers).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.calibration import collect
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> stats = collect(model, torch.randn(8, 4), {"0": ["input_sq", "xtx"], "2": ["input_max"]})
    >>> stats["0"]["xtx"].shape, stats["0"].rows, stats.batches
    (torch.Size([1, 4, 4]), 8, 1)
    >>> bool(stats["2"]["input_max"] >= 0)  # after the ReLU
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..batches import Batch, batch_size, count_batches, iter_batches, run_model
from ..errors import CalibrationError, ConfigError, NumericalError
from ..layers import Geometry, LayerKind, geometry, layer_kind, stored_weight
from ..progress import progress_bar
from ..select import module_device_dtype
from .distributed import all_reduce_counts, all_reduce_statistics
from .statistics import STATISTICS, Statistic

__all__ = ["Collected", "LayerStats", "LossFn", "collect", "run_batches", "split_batch"]

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], Tensor]


@dataclass
class LayerStats:
    """The finalised statistics of one layer, by statistic name.

    Attributes:
        geometry: the layer's geometry (``None`` when built by hand).
        values: statistic name -> finalised value (only statistics that saw something).
        counts: statistic name -> what it saw (rows, batches or samples).
        calls: forward calls of the layer seen.
        rows: output positions seen (tokens, or samples x pixels): the rows its weight multiplied.
    """

    geometry: Geometry | None = None
    values: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    rows: int = 0

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.values[name]
        except KeyError:
            raise CalibrationError(
                f"No {name!r} statistic was collected for this layer (collected: "
                f"{sorted(self.values) or 'none'}); the data may never have reached it."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def get(self, name: str, default: Tensor | None = None) -> Tensor | None:
        """The value of ``name``, or ``default`` if it was not collected."""
        return self.values.get(name, default)

    def count(self, name: str) -> int:
        """How much the statistic ``name`` saw (0 if it was not requested or saw nothing)."""
        return self.counts.get(name, 0)


class Collected(dict[str, LayerStats]):
    """What :func:`collect` returns: layer name -> :class:`LayerStats`.

    Attributes:
        batches: batches run (summed over ranks).
    """

    batches: int = 0


@dataclass
class _Layer:
    name: str
    module: nn.Module
    kind: LayerKind
    geometry: Geometry
    stats: dict[str, Statistic]
    calls: int = 0
    rows: int = 0
    captured: list[Tensor] = field(default_factory=list)

    def of(self, observes: str, per_sample: bool | None = None) -> list[Statistic]:
        return [
            s
            for s in self.stats.values()
            if s.observes == observes and (per_sample is None or s.per_sample == per_sample)
        ]


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    for v in [*args, *kwargs.values()]:
        if isinstance(v, Tensor):
            return v
    return None


def split_batch(batch: Batch) -> list[Batch]:
    """Split a batch into single-sample batches (tensors whose leading dimension is the batch)."""
    size = batch_size(batch)

    def cut(obj: Any, i: int) -> Any:
        if isinstance(obj, Tensor) and obj.dim() > 0 and obj.shape[0] == size:
            return obj[i : i + 1]
        if isinstance(obj, tuple):
            return tuple(cut(o, i) for o in obj)
        if isinstance(obj, list):
            return [cut(o, i) for o in obj]
        if isinstance(obj, dict):
            return {k: cut(v, i) for k, v in obj.items()}
        return obj

    if size <= 1:
        return [batch]
    return [
        Batch(args=cut(batch.args, i), kwargs=cut(batch.kwargs, i), target=cut(batch.target, i))
        for i in range(size)
    ]


def run_batches(
    model: nn.Module,
    data: Any,
    *,
    step: Callable[[Batch, int], Any] | None = None,
    grad: bool = False,
    max_batches: int | None = None,
    progress: bool | None = None,
    desc: str = "calibration",
    what: str = "calib_data",
) -> int:
    """Run every batch of ``data`` through ``model`` in eval mode; return the number of batches.

    Batches go to the model's device; every module's train/eval flag is restored afterwards.

    Args:
        model: the model.
        data: any iterable of batches (see :mod:`torchcompress.batches`).
        step: ``step(batch, index)`` run instead of the plain forward (e.g. forward + loss).
        grad: run with autograd on (default: under ``torch.no_grad``).
        max_batches: stop after this many batches.
        progress: show a progress bar (``None``: when interactive).
        desc: the progress bar's label.
        what: the data argument's name, for error messages.

    Raises:
        DataError: ``data`` is empty or a batch does not fit the model.
    """
    device, _ = module_device_dtype(model)
    total = count_batches(data)
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    n = 0
    try:
        with torch.set_grad_enabled(grad):
            batches = iter_batches(data, max_batches=max_batches, device=device, what=what)
            for i, batch in enumerate(
                progress_bar(batches, desc=desc, total=total, enabled=progress)
            ):
                if step is None:
                    run_model(model, batch, index=i, what=what)
                else:
                    step(batch, i)
                n += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
    return n


def _make_layers(model: nn.Module, requests: Mapping[str, Iterable[str]]) -> list[_Layer]:
    layers = []
    for name, wanted in requests.items():
        if isinstance(wanted, str):
            raise ConfigError(
                f"requests[{name!r}] must be a list of statistic names, got the string {wanted!r}."
            )
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"collect: {type(model).__name__} has no layer {name!r}.") from None
        geo = geometry(module, name)
        kind = layer_kind(module)
        device = stored_weight(module).device
        stats = {s: STATISTICS.get(s)(geo, device) for s in sorted(set(wanted))}
        layers.append(_Layer(name, module, kind, geo, stats))  # type: ignore[arg-type]
    return layers


def _grad_leaves(module: nn.Module) -> list[Tensor]:
    """The leaf tensors the effective weight is computed from."""
    if parametrize.is_parametrized(module, "weight"):
        return list(module.parametrizations["weight"].parameters())  # type: ignore[index]
    return [module.weight]  # type: ignore[list-item]


class _Session:
    """Hooks and gradient bookkeeping of one :func:`collect` call."""

    def __init__(
        self, model: nn.Module, layers: list[_Layer], loss_fn: LossFn | None, what: str
    ) -> None:
        self.model = model
        self.layers = layers
        self.loss_fn = loss_fn
        self.what = what
        self.handles: list[Any] = []
        self.flags: list[tuple[Tensor, bool]] = []
        self.observing = True  # count calls and update input/output statistics

    def install(self, grad_layers: list[_Layer]) -> None:
        for lay in self.layers:
            self.handles.append(lay.module.register_forward_hook(self._hook(lay), with_kwargs=True))
        for lay in {id(lay): lay for lay in grad_layers}.values():
            for leaf in _grad_leaves(lay.module):
                self.flags.append((leaf, leaf.requires_grad))
                leaf.requires_grad_(True)
            if parametrize.is_parametrized(lay.module, "weight"):
                plist = lay.module.parametrizations["weight"]  # type: ignore[index]
                self.handles.append(plist.register_forward_hook(self._capture(lay)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for leaf, flag in reversed(self.flags):
            leaf.requires_grad_(flag)
        self.flags.clear()

    def _hook(self, lay: _Layer) -> Callable[..., None]:
        inputs, outputs = lay.of("input"), lay.of("output")

        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if not isinstance(out, Tensor) or not self.observing:
                return
            lay.calls += 1
            lay.rows += lay.geometry.output_positions(out)
            x = _first_tensor(args, kwargs)
            if x is not None:
                for st in inputs:
                    st.update(x)
            for st in outputs:
                st.update(out)

        return hook

    @staticmethod
    def _capture(lay: _Layer) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.requires_grad:
                lay.captured.append(out)

        return hook

    def gradients(self, batch: Batch, index: int, per_sample: bool) -> None:
        """Forward, loss and the gradient of each layer's effective weight for one batch."""
        wanted = [lay for lay in self.layers if lay.of("weight_grad", per_sample)]
        out = run_model(self.model, batch, index=index, what=self.what)
        loss = self.loss_fn(out, batch.target)  # type: ignore[misc]
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise CalibrationError(
                f"loss_fn must return a scalar tensor; batch {index} gave {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
                + "."
            )
        sources: list[tuple[_Layer, list[Tensor]]] = []
        for lay in wanted:
            if parametrize.is_parametrized(lay.module, "weight"):
                if lay.captured:
                    sources.append((lay, list(lay.captured)))
            else:
                sources.append((lay, [lay.module.weight]))  # type: ignore[list-item]
        flat = [t for _, ts in sources for t in ts]
        if not loss.requires_grad or not flat:
            raise CalibrationError(
                f"The loss of batch {index} does not depend on the targeted layers' weights (no "
                "gradient); check loss_fn and that the model is not run under torch.no_grad()."
            )
        gs = torch.autograd.grad(loss.reshape(()), flat, allow_unused=True)
        i = 0
        for lay, ts in sources:
            total: Tensor | None = None
            for _ in ts:
                g = gs[i]
                i += 1
                if g is not None:
                    g = g.detach().float()
                    total = g if total is None else total + g
            if total is not None:
                canon = lay.kind.to_canonical(lay.module, total)
                for st in lay.of("weight_grad", per_sample):
                    st.update(canon)
        for lay in self.layers:
            lay.captured.clear()


def collect(
    model: nn.Module,
    data: Any,
    requests: Mapping[str, Iterable[str]],
    *,
    loss_fn: LossFn | None = None,
    max_batches: int | None = None,
    progress: bool | None = None,
    desc: str = "calibration",
    what: str = "calib_data",
    require_all: bool = True,
) -> Collected:
    """Gather the requested statistics of the named layers over ``data``.

    Args:
        model: the model (its train/eval flags and ``requires_grad`` flags are restored).
        data: any iterable of batches (see :mod:`torchcompress.batches`).
        requests: layer name -> names of the statistics it needs (an empty list: only its calls
            and rows are counted).
        loss_fn: ``(model_output, target) -> scalar`` for gradient statistics.
        max_batches: stop after this many batches.
        progress: show a progress bar (``None``: when interactive).
        desc: the progress bar's label.
        what: the data argument's name, for error messages.
        require_all: raise if a layer never ran (else its ``calls`` stays 0 and it has no values).

    Returns:
        Layer name -> :class:`LayerStats` (in the order of ``requests``), with ``batches``.

    Raises:
        ConfigError: an unknown layer or statistic, or gradient statistics without ``loss_fn``.
        UnsupportedModuleError: a named module is not a weight layer of a registered kind.
        DataError: ``data`` is empty or a batch does not fit the model.
        CalibrationError: layers the data never reached (all named), or a loss that is not a
            differentiable scalar.
        NumericalError: statistics holding NaN or Inf (every such layer named).
    """
    layers = _make_layers(model, requests)
    grad_batch = [lay for lay in layers if lay.of("weight_grad", False)]
    grad_sample = [lay for lay in layers if lay.of("weight_grad", True)]
    if (grad_batch or grad_sample) and loss_fn is None:
        raise ConfigError("collect: gradient statistics need loss_fn=(output, target) -> loss.")
    session = _Session(model, layers, loss_fn, what)
    batches = 0
    try:
        session.install(grad_batch + grad_sample)
        needs_first = any(lay.of("input") or lay.of("output") for lay in layers) or grad_batch
        if needs_first or not grad_sample:
            step = None
            if grad_batch:

                def step(batch: Batch, i: int) -> None:
                    session.gradients(batch, i, False)

            batches = run_batches(
                model,
                data,
                step=step,
                grad=bool(grad_batch),
                max_batches=max_batches,
                progress=progress,
                desc=desc,
                what=what,
            )
            session.observing = False  # the per-sample pass updates gradient statistics only
        if grad_sample:

            def sample_step(batch: Batch, i: int) -> None:
                for sample in split_batch(batch):
                    session.gradients(sample, i, True)

            n = run_batches(
                model,
                data,
                step=sample_step,
                grad=True,
                max_batches=max_batches,
                progress=progress,
                desc=f"{desc} (per sample)",
                what=what,
            )
            batches = batches or n
    finally:
        session.remove()
    return _finish(model, layers, batches, what, require_all)


def _finish(
    model: nn.Module, layers: list[_Layer], batches: int, what: str, require_all: bool
) -> Collected:
    order = sorted(layers, key=lambda lay: lay.name)
    all_reduce_statistics([st for lay in order for _, st in sorted(lay.stats.items())])
    device, _ = module_device_dtype(model)
    counts = all_reduce_counts(
        [batches] + [v for lay in order for v in (lay.calls, lay.rows)], device
    )
    batches = counts[0]
    for i, lay in enumerate(order):
        lay.calls, lay.rows = counts[1 + 2 * i], counts[2 + 2 * i]
    never = [lay.name for lay in layers if lay.calls == 0]
    if never and require_all:
        shown = ", ".join(repr(n) for n in never[:8]) + (" ..." if len(never) > 8 else "")
        one = len(never) == 1
        raise CalibrationError(
            f"{'Layer' if one else f'{len(never)} layers:'} {shown} {'was' if one else 'were'} "
            f"never run by {what}, so {'it has' if one else 'they have'} no statistics. Their "
            "forward never ran on the batches (a branch not taken, a module whose parent uses its "
            "weight directly, inputs of the wrong kind). Exclude them (exclude=[...]) or pass data "
            "that reaches them."
        )
    out = Collected()
    out.batches = batches
    bad: list[str] = []
    for lay in layers:
        res = LayerStats(geometry=lay.geometry, calls=lay.calls, rows=lay.rows)
        for key, st in lay.stats.items():
            res.counts[key] = st.count
            if st.count > 0:
                value = st.finalize()
                res.values[key] = value
                if not bool(torch.isfinite(value).all()) and lay.name not in bad:
                    bad.append(lay.name)
        out[lay.name] = res
    if bad:
        raise NumericalError(
            f"The statistics of {', '.join(repr(n) for n in bad[:8])} hold NaN or Inf values: "
            "check the model, its weights and the data (e.g. fp16 overflow)."
        )
    log.debug("collected statistics of %d layers over %d batches", len(out), batches)
    return out
