"""``tc.prune`` and ``tc.finalize``: masks on the weights of Linear and convolution layers."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import forms, io
from ..calibration import STATISTICS, LayerStats
from ..errors import (
    CalibrationError,
    CompressionStateError,
    ConfigError,
    DataError,
    ErrorCollector,
    NumericalError,
    SelectionError,
    UnsupportedModuleError,
)
from ..layers import check_finite, layer_kind, supported_types
from ..select import matches, select_modules, snapshot_modules
from .calibration import LossFn, Target, collect_statistics
from .config import PruneConfig
from .criteria import CRITERIA, Criterion
from .functional import choose, normalize_scores, per_row_keep
from .masking import apply_mask, bake_masks, get_mask, is_masked, masked_tensor_names, original
from .patterns import Candidates, Pattern, make_pattern

__all__ = ["finalize", "prune", "select_targets"]

log = logging.getLogger(__name__)

Patterns = str | Sequence[str] | None


def _as_list(p: Patterns) -> list[str]:
    if p is None:
        return []
    return [p] if isinstance(p, str) else list(p)


def _shared_weights(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def select_targets(
    model: nn.Module, include: Patterns = None, exclude: Patterns = None
) -> list[Target]:
    """The layers :func:`prune` would mask, as :class:`~torchcompress.sparsity.calibration.Target`.

    Every module a registered layer kind accepts (Linear, Conv1d/2d/3d, Hugging Face Conv1D) with a
    floating-point weight, filtered by ``include``/``exclude``. A layer whose weight is shared with
    another module (tied embeddings) is left alone unless named in ``include`` (then it is an error:
    masking one user of a tied weight would silently untie it).

    Raises:
        SelectionError: a pattern matches nothing, or nothing prunable is selected.
        UnsupportedModuleError: a module named in ``include`` cannot be pruned.
    """
    inc = _as_list(include)
    shared = _shared_weights(model)

    def ok(name: str, m: nn.Module) -> bool:
        if layer_kind(m) is None:
            return False
        w = original(m, "weight")
        return isinstance(w, torch.Tensor) and w.is_floating_point()

    found = select_modules(
        model, include, exclude, types=supported_types(model), predicate=ok, family="pruning"
    )
    out: list[Target] = []
    for name, m in found:
        if id(original(m, "weight")) in shared:
            if name in inc:
                raise UnsupportedModuleError(
                    f"Module {name!r} shares its weight with another module (tied weights); "
                    "masking it would untie them. Remove it from include=."
                )
            log.warning("pruning: %s shares its weight with another module; left alone", name)
            continue
        kind = layer_kind(m)
        if kind is None:
            raise RuntimeError("torchcompress internal error (please report): kind is not set")
        out.append(Target(name, m, kind))
    if not out:
        raise SelectionError(
            f"No layer of {type(model).__name__} can be pruned"
            + (f" with include={include!r}" if include else "")
            + (f", exclude={exclude!r}" if exclude else "")
            + " (pruning supports "
            + ", ".join(t.__name__ for t in supported_types())
            + ", and Hugging Face Conv1D)."
        )
    return out


def _as_config(config: PruneConfig | Mapping[str, Any] | None) -> PruneConfig:
    if config is None:
        return PruneConfig()
    if isinstance(config, PruneConfig):
        return config
    if isinstance(config, Mapping):
        return PruneConfig.from_dict(dict(config))
    raise ConfigError(
        f"config must be a PruneConfig (or a dict of its fields), got {type(config).__name__}."
    )


def _resolve(
    cfg: PruneConfig,
    targets: Sequence[Target],
    overrides: Mapping[str, PruneConfig | Mapping[str, Any]] | None,
) -> list[PruneConfig]:
    out = [cfg] * len(targets)
    if not overrides:
        return out
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            "overrides must map name patterns to PruneConfig fields, e.g. {'fc': {'sparsity': 0.3}}."
        )
    for pat, ov in overrides.items():
        hit = False
        for i, t in enumerate(targets):
            if not matches(t.name, [pat]):
                continue
            hit = True
            if isinstance(ov, PruneConfig):
                out[i] = ov
            elif isinstance(ov, Mapping):
                try:
                    out[i] = out[i].replace(**dict(ov))
                except ConfigError as e:
                    raise ConfigError(f"overrides[{pat!r}] for layer {t.name!r}: {e}") from None
            else:
                raise ConfigError(
                    f"overrides[{pat!r}] must be a dict of PruneConfig fields or a PruneConfig, "
                    f"got {type(ov).__name__}."
                )
        if not hit:
            names = [t.name for t in targets]
            raise SelectionError(
                f"overrides pattern {pat!r} matches no pruned layer (targets: "
                f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''})."
            )
    return out


@dataclass
class _Layer:
    target: Target
    cfg: PruneConfig
    pattern: Pattern
    criterion: Criterion
    w: torch.Tensor  # canonical float32 original
    alive: torch.Tensor  # canonical bool (current keep-mask, all True with regrow)
    scores: torch.Tensor | None = None
    cands: Candidates | None = None
    chosen: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def numel(self) -> int:
        return self.w.numel()

    @property
    def dead(self) -> int:
        return int((~self.alive).sum())


def _reprune_error(names: str, current: float, target: float) -> ConfigError:
    return ConfigError(
        f"{names} already {current:.2%} sparse; sparsity={target:g} would bring pruned weights "
        "back. Prune to at least the current sparsity, or pass regrow=True (PruneConfig(regrow=True)) "
        "to recompute the masks from scratch."
    )


def _tolerance(layers: Sequence[_Layer]) -> int:
    tol = 0
    for lay in layers:
        if lay.cands is None:
            raise RuntimeError("torchcompress internal error (please report): lay.cands is not set")
        if len(lay.cands):
            tol = max(tol, int(lay.cands.sizes.max()), lay.pattern.max_group_size(lay.w))
    return tol


def _select_pool(layers: list[_Layer]) -> None:
    cfg = layers[0].cfg
    s = cfg.target_sparsity
    pattern = layers[0].pattern
    if cfg.scope == "output":
        for lay in layers:
            rows = lay.w.shape[0]
            if lay.scores is None:
                raise RuntimeError(
                    "torchcompress internal error (please report): lay.scores is not set"
                )
            dead = lay.dead
            target = round(s * lay.numel)
            if not cfg.regrow and dead > target + rows:
                raise _reprune_error(f"Layer {lay.name!r} is", dead / lay.numel, s)
            keep = per_row_keep(lay.scores.reshape(rows, -1), lay.alive.reshape(rows, -1), s)
            lay.keep = keep.reshape(lay.alive.shape)
        return
    total = sum(lay.numel for lay in layers)
    dead = sum(lay.dead for lay in layers)
    target = round(s * total)
    if not cfg.regrow and dead - target > _tolerance(layers):
        who = f"Layer {layers[0].name!r} is" if len(layers) == 1 else "The targeted layers are"
        raise _reprune_error(who, dead / total, s)
    if pattern.full(s):
        chosen = [
            torch.ones(len(lay.cands), dtype=torch.bool, device=lay.w.device) for lay in layers
        ]  # type: ignore[arg-type]
    else:
        scores, sizes, forced = [], [], []
        for lay in layers:
            c = lay.cands
            if c is None:
                raise RuntimeError("torchcompress internal error (please report): c is not set")
            sc = c.scores
            if len(layers) > 1:
                sc = normalize_scores(sc, ~c.forced, cfg.normalize)
            scores.append(sc)
            sizes.append(c.sizes)
            forced.append(c.forced)
        budgets = None
        if len(layers) > 1 and cfg.min_density > 0:
            budgets = [
                max(0, (lay.numel - lay.dead) - math.ceil(cfg.min_density * lay.numel))
                for lay in layers
            ]
        try:
            chosen = choose(scores, sizes, forced, target - dead, budgets=budgets)
        except ConfigError as e:
            raise ConfigError(
                f"Cannot reach sparsity={s:g} over {', '.join(lay.name for lay in layers[:4])}"
                f"{', ...' if len(layers) > 4 else ''} with min_density={cfg.min_density:g}: {e}"
            ) from None
    for lay, ch in zip(layers, chosen):
        if lay.scores is None:
            raise RuntimeError(
                "torchcompress internal error (please report): lay.scores is not set"
            )
        lay.chosen = ch
        lay.keep = lay.pattern.expand(ch, lay.scores, lay.alive)


def _drop_unreached(
    model: nn.Module,
    layers: list[_Layer],
    stats: dict[str, LayerStats],
    needs: dict[str, set[str]],
    include: list[str],
    fresh: set[str],
) -> list[_Layer]:
    """Leave alone the layers a data criterion got no statistics for (unless named in include).

    This happens when a parent module uses a layer's weight directly instead of calling the layer
    (``nn.MultiheadAttention.out_proj`` under Wanda), or when the loss does not depend on a layer.
    """
    kept = []
    for lay in layers:
        missing = [
            "gradients" if STATISTICS.get(stat).observes == "weight_grad" else "inputs"
            for stat in sorted(needs.get(lay.name, ()))
            if stats[lay.name].count(stat) == 0
        ]
        if not missing:
            kept.append(lay)
            continue
        msg = (
            f"Layer {lay.name!r} got no {missing[0]} from data for criterion="
            f"{lay.cfg.criterion!r}: it is not called as a module in the forward (its parent may use "
            "its weight directly), or the loss does not depend on it."
        )
        if lay.name in include:
            raise CalibrationError(
                msg + " Use a data-free criterion for it, e.g. overrides="
                f"{{{lay.name!r}: {{'criterion': 'magnitude'}}}}."
            )
        log.warning("pruning: %s Left unpruned.", msg)
        if lay.name in fresh:
            bake_masks(lay.target.module)  # remove the all-ones mask this call added
    if not kept:
        raise CalibrationError(
            f"No targeted layer of {type(model).__name__} got statistics from data; check that "
            "data runs the model and that the loss depends on the pruned layers."
        )
    return kept


def _broadcast(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    if not (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        return masks
    out = []
    for m in masks:
        t = m.to(torch.uint8).contiguous()
        torch.distributed.broadcast(t, src=0)
        out.append(t.bool())
    return out


def prune(
    model: nn.Module,
    config: PruneConfig | Mapping[str, Any] | None = None,
    data: Any = None,
    loss_fn: LossFn | None = None,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    overrides: Mapping[str, PruneConfig | Mapping[str, Any]] | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """Prune the weights of a model's Linear and convolution layers with masks, in place.

    Each targeted layer gets a boolean mask on its weight (see
    :mod:`torchcompress.sparsity.masking`): pruned weights are exactly zero in every forward and
    stay zero through training. Scores come from the criterion, the pattern groups them, and the
    scope decides how many to prune where:

    - ``scope="layer"``: each layer to exactly ``sparsity`` (to the nearest whole group);
    - ``scope="global"``: one ranking over all targeted layers (after ``normalize``), pruning
      ``sparsity`` of their weights in total, each layer keeping at least ``min_density``;
    - ``scope="output"``: each output row to ``sparsity`` (Wanda's comparison group).

    Layers with identical (overridden) configs share one global ranking. Calling ``prune`` again
    re-prunes: weights already pruned stay pruned and ``sparsity`` is the new *total*; a target
    below what is already pruned is an error unless ``regrow=True``. Data-driven criteria
    (``taylor``, ``fisher``, ``wanda``) run the model on ``data`` in eval mode (train/eval flags are
    restored) and keep only running statistics. If anything fails, the model is left as it was.

    Args:
        model: the model to prune in place.
        config: a :class:`PruneConfig` (or a dict of its fields); default ``PruneConfig()``
            (50% unstructured magnitude pruning of each layer).
        data: batches for data-driven criteria (a DataLoader, a tensor, ``(inputs, targets)``
            tuples or dicts of keyword arguments).
        loss_fn: ``(model_output, target) -> scalar`` for ``taylor``/``fisher``; default
            cross-entropy of the output's logits against the targets.
        include: glob patterns of layer names to prune (default: every supported layer).
        exclude: glob patterns of layer names to leave dense.
        overrides: ``{name_pattern: {field: value}}`` (or ``{pattern: PruneConfig}``) changing the
            config of matching layers, e.g. ``{"fc": {"sparsity": 0.3}}``; later patterns win.
        progress: show a progress bar over ``data`` (default: when on a terminal).

    Returns:
        ``model``, with masks.

    Raises:
        ConfigError: a bad config or override, or a target below the current sparsity.
        ShapeError: a layer cannot take the pattern (e.g. ``m`` does not divide its inputs).
        DataError: a data-driven criterion without ``data``, or data that does not fit.
        SelectionError: include/exclude/overrides patterns that match nothing.
        CompressionStateError: a targeted layer is already quantized (prune before quantizing;
            see :mod:`torchcompress.forms`).

    Example:
        >>> import torch, torchcompress as tc
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> _ = tc.prune(model, tc.PruneConfig(sparsity=0.75, scope="global", min_density=0.1))
        >>> round(tc.sparsity_report(model).sparsity, 4)
        0.75
        >>> _ = tc.prune(model, tc.PruneConfig(sparsity=0.9), include=["0"])  # re-prune layer 0
        >>> round(tc.sparsity_report(model)["0"].sparsity, 2)
        0.9
    """
    forms.check(model, "prune", include=include, exclude=exclude)
    cfg = _as_config(config)
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(f"loss_fn must be callable (output, target) -> loss, got {loss_fn!r}.")
    targets = select_targets(model, include, exclude)
    cfgs = _resolve(cfg, targets, overrides)
    layers: list[_Layer] = []
    needs: dict[str, set[str]] = {}
    misfits = ErrorCollector("Some layers cannot take their pattern")
    for t, c in zip(targets, cfgs):
        pattern = make_pattern(c.pattern, c.n, c.m)
        with misfits.catch():
            pattern.check(t.name, t.kind, t.module)
        crit = CRITERIA.get(c.criterion)
        if crit.needs_data:
            if data is None:
                raise DataError(
                    f"criterion={c.criterion!r} (layer {t.name!r}) is computed from data; pass "
                    "data= (e.g. a DataLoader of calibration batches) or use a data-free criterion "
                    "('magnitude', 'l1', 'l2', 'random')."
                )
            needs[t.name] = set(crit.statistics)
        layers.append(
            _Layer(
                target=t,
                cfg=c,
                pattern=pattern,
                criterion=crit,
                w=torch.empty(0),
                alive=torch.empty(0, dtype=torch.bool),
            )
        )

    misfits.raise_if_any()
    check_finite([(t.name, t.module) for t in targets], "pruned")
    with snapshot_modules(model):
        fresh: set[str] = set()  # layers masked by this call (an all-ones mask for now)
        for lay in layers:
            m = lay.target.module
            if not is_masked(m):
                w = original(m, "weight")
                apply_mask(m, "weight", torch.ones(w.shape, dtype=torch.bool, device=w.device))
                fresh.add(lay.name)
        stats: dict[str, LayerStats] = {}
        if needs:
            mb = [c.max_batches for t, c in zip(targets, cfgs) if t.name in needs]
            max_batches = None if any(b is None for b in mb) else max(b for b in mb if b)
            stats = collect_statistics(
                model,
                [lay.target for lay in layers],
                needs,
                data,
                loss_fn,
                max_batches=max_batches,
                progress=progress,
            )
            layers = _drop_unreached(model, layers, stats, needs, _as_list(include), fresh)
        pools: dict[Any, list[_Layer]] = {}
        for lay in layers:
            t, kind = lay.target, lay.target.kind
            lay.w = kind.to_canonical(t.module, original(t.module, "weight")).detach().float()
            mask = get_mask(t.module)
            if mask is None:
                raise RuntimeError("torchcompress internal error (please report): mask is not set")
            lay.alive = (
                torch.ones_like(lay.w, dtype=torch.bool)
                if lay.cfg.regrow
                else kind.to_canonical(t.module, mask).clone()
            )
            layer_stats = stats[t.name] if t.name in stats else LayerStats(kind.geometry(t.module))
            scores = lay.criterion.scores(
                lay.w, layer_stats, name=t.name, seed=lay.cfg.seed
            ).float()
            if not bool(torch.isfinite(scores).all()):
                raise NumericalError(
                    f"Layer {t.name!r}: the {lay.cfg.criterion!r} scores contain NaN or Inf "
                    "(check the weights and the data for NaN/Inf)."
                )
            lay.scores = scores
            lay.cands = lay.pattern.candidates(scores, lay.alive, lay.criterion.reduce)
            key: Any = lay.cfg if lay.cfg.scope == "global" else ("layer", t.name)
            pools.setdefault(key, []).append(lay)
        for pool in pools.values():
            _select_pool(pool)
        keeps = _broadcast([lay.keep for lay in layers])  # type: ignore[misc]
        for lay, keep in zip(layers, keeps):
            m, kind = lay.target.module, lay.target.kind
            apply_mask(m, "weight", kind.from_canonical(m, keep))
            bias = getattr(m, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias_keep = None
                if lay.pattern.masks_bias and lay.chosen is not None:
                    bias_keep = lay.pattern.bias_keep(lay.chosen, bias.shape[0])
                old = get_mask(m, "bias")
                if bias_keep is not None:
                    if old is not None and not lay.cfg.regrow:
                        bias_keep = bias_keep.to(old.device) & old
                    (bias_keep,) = _broadcast([bias_keep])
                    apply_mask(m, "bias", bias_keep)
                elif old is not None and lay.cfg.regrow:
                    apply_mask(m, "bias", torch.ones_like(old))
            if not bool(keep.any()):
                log.warning("pruning: every weight of %s is pruned", lay.name)
    io.add_history(
        model,
        "prune",
        cfg.to_dict(),
        include=_as_list(include),
        exclude=_as_list(exclude),
        overrides={
            k: (v.to_dict() if isinstance(v, PruneConfig) else dict(v))
            for k, v in (overrides or {}).items()
        },
    )
    return model


def finalize(
    model: nn.Module,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    semi_structured: bool = False,
) -> nn.Module:
    """Bake the pruning masks into the weights: plain modules again, with exact zeros.

    Args:
        model: a model pruned with :func:`prune` (modified in place).
        include: glob patterns of layers to finalize (default: every masked layer).
        exclude: glob patterns of masked layers to keep masked.
        semi_structured: also convert 2:4 Linear layers to torch's semi-structured sparse
            weights (CUDA, fp16/bf16, compute capability 8.0+; see
            :func:`~torchcompress.sparsity.to_semi_structured`), so they run sparse kernels.

    Returns:
        ``model``; the parameters keep their identity (an optimizer holding them still works).

    Raises:
        CompressionStateError: no layer is masked, or a mask sits under another parametrization.

    Example:
        >>> import torchcompress as tc
        >>> from torch import nn
        >>> m = tc.prune(nn.Sequential(nn.Linear(8, 8)), tc.PruneConfig(sparsity=0.5))
        >>> type(tc.finalize(m)[0]).__name__, int((m[0].weight == 0).sum())
        ('Linear', 32)
    """
    forms.check(model, "finalize", include=include, exclude=exclude)
    inc, exc = _as_list(include), _as_list(exclude)
    masked = [
        (n, m)
        for n, m in model.named_modules()
        if n
        and masked_tensor_names(m)
        and (not inc or matches(n, inc))
        and not (exc and matches(n, exc))
    ]
    if not masked:
        raise CompressionStateError(
            f"{type(model).__name__} has no pruning masks to finalize"
            + (f" matching include={inc!r}" if inc else "")
            + "; prune it first with tc.prune()."
        )
    if semi_structured:
        from .semi_structured import to_semi_structured

        to_semi_structured(model, include=inc or None, exclude=exc or None)
    for _, m in masked:
        if masked_tensor_names(m):
            bake_masks(m)
    io.add_history(
        model, "finalize", {"include": inc, "exclude": exc, "semi_structured": semi_structured}
    )
    return model
