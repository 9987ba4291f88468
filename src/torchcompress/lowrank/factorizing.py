"""The low-rank verbs: :func:`factorize`, :func:`merge_lowrank`, :func:`retruncate`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import forms, io
from ..calibration import LayerStats
from ..errors import (
    CompressionStateError,
    ConfigError,
    DataError,
    ErrorCollector,
    NumericalError,
    SelectionError,
    UnsupportedModuleError,
)
from ..layers import Geometry, check_finite
from ..progress import progress_bar
from ..select import read_by_parent, replace_modules, select_modules
from . import functional as F
from .calibration import collect_stats
from .config import LowRankConfig
from .methods import METHODS, FactorizationMethod, get_method
from .modules import LowRankModule, build_lowrank, dense_geometry, dense_matrices, factorizable
from .rank_rules import Decision, LayerSpectrum, RankRule, round_rank
from .report import LayerReport, LowRankReport, set_report

__all__ = ["factorize", "merge_lowrank", "retruncate"]

log = logging.getLogger(__name__)

Patterns = str | Sequence[str] | None
_FAMILY = "low-rank factorization"


def _as_config(config: LowRankConfig | dict[str, Any] | None) -> LowRankConfig:
    if config is None:
        return LowRankConfig()
    if isinstance(config, LowRankConfig):
        return config
    if isinstance(config, dict):
        return LowRankConfig.from_dict(config)
    raise ConfigError(
        f"config must be a LowRankConfig (or a dict of its fields), got {type(config).__name__}."
    )


def _tied_weights(model: nn.Module) -> dict[int, list[str]]:
    owners: dict[int, list[str]] = {}
    for name, mod in model.named_modules():
        for _, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return owners


def _select_dense(
    model: nn.Module, include: Patterns, exclude: Patterns
) -> list[tuple[str, nn.Module]]:
    mha = set(read_by_parent(model))
    inc = [include] if isinstance(include, str) else list(include or [])
    for name in mha:
        if name in inc:
            raise UnsupportedModuleError(
                f"Module {name!r} belongs to an nn.MultiheadAttention, which multiplies by its weight "
                "directly (not through the Linear), so it cannot be factorized. Remove it from include=."
            )
    # the classes in the model with a factorized form (Linear-like layers, 1-D/2-D convolutions)
    types = tuple({type(m): None for m in model.modules() if factorizable(m)})
    targets = select_modules(
        model,
        include,
        exclude,
        types=types,
        predicate=lambda n, m: n not in mha and factorizable(m),
        skip_types=(LowRankModule,),
        family=_FAMILY,
    )
    if not targets:
        raise SelectionError(
            f"{type(model).__name__} has no layer {_FAMILY} can target (Linear, Conv1d, Conv2d) "
            "that is not already factorized."
        )
    return targets


@dataclass
class _Work:
    name: str
    module: nn.Module
    geo: Geometry
    stats: LayerStats | None = None
    positions: float | None = None
    dense_reason: str = ""  # non-empty: stays dense without a decomposition
    transform: Any = None
    spectrum: LayerSpectrum | None = None
    decision: Decision | None = None
    new: nn.Module | None = None


def _transformed(w: _Work, cfg: LowRankConfig, method: FactorizationMethod) -> Tensor:
    W = dense_matrices(w.module)
    W = W.to(method.work_dtype(W))
    if w.transform is None:
        w.transform = method.transform(w.stats, cfg)
    return w.transform.right(W)


def _factor(
    w: _Work,
    rank: int,
    cfg: LowRankConfig,
    method: FactorizationMethod,
    svd: tuple[Tensor, Tensor, Tensor] | None = None,
) -> nn.Module:
    U, s, Vh = svd if svd is not None else F.svd(_transformed(w, cfg, method))
    first, second = F.split_factors(U, s, Vh, rank)
    first = w.transform.unright(first)
    if not (torch.isfinite(first).all() and torch.isfinite(second).all()):
        raise NumericalError(
            f"The factors of layer {w.name!r} are not finite; raise damping= or use method='svd'."
        )
    return build_lowrank(w.module, first, second)


def _decide(
    works: list[_Work],
    cfg: LowRankConfig,
    method: FactorizationMethod,
    rule: RankRule,
    progress: bool | None,
) -> None:
    """Each layer's rank (``w.decision``) and factorized replacement (``w.new``)."""
    opts = {
        "min_rank": cfg.min_rank,
        "round_to": cfg.round_to,
        "min_features": cfg.min_features,
        "min_saving": cfg.min_saving,
    }
    live = [w for w in works if not w.dense_reason]
    for w in works:
        if w.dense_reason:
            w.decision = Decision(None, w.dense_reason)
    if rule.per_layer:  # one layer at a time: one SVD, kept only while that layer is cut
        misfits = ErrorCollector(f"Some layers cannot take {cfg.describe()}")
        for w in progress_bar(live, desc="low-rank SVD", enabled=progress):
            with misfits.catch():
                U, s, Vh = F.svd(_transformed(w, cfg, method))
                w.spectrum = LayerSpectrum(w.name, w.geo, s.detach().cpu(), w.positions)
                w.decision = rule.decide(w.spectrum, **opts)
                if w.decision.rank is not None:
                    w.new = _factor(w, w.decision.rank, cfg, method, (U, s, Vh))
        misfits.raise_if_any()
        return
    # a global rule sees every spectrum (singular values only) before deciding
    for w in progress_bar(live, desc="low-rank spectra", enabled=progress):
        s = F.svdvals(_transformed(w, cfg, method))
        w.spectrum = LayerSpectrum(w.name, w.geo, s.cpu(), w.positions)
    specs = [
        w.spectrum
        if w.spectrum is not None
        else LayerSpectrum(w.name, w.geo, torch.zeros(1, F.full_rank(w.geo)), w.positions)
        for w in works
    ]
    keep = {w.name: w.dense_reason for w in works if w.dense_reason}
    decisions = rule.decide_all(specs, keep_dense=keep, **opts)
    for w in works:
        w.decision = decisions[w.name]
    todo = [w for w in live if w.decision is not None and w.decision.rank is not None]
    for w in progress_bar(todo, desc="low-rank SVD", enabled=progress):
        w.new = _factor(w, w.decision.rank, cfg, method)  # type: ignore[union-attr,arg-type]


def factorize(
    model: nn.Module,
    config: LowRankConfig | dict[str, Any] | None = None,
    calib_data: Any = None,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    progress: bool | None = None,
) -> nn.Module:
    """Replace Linear / Conv1d / Conv2d layers by two smaller layers (a low-rank factorization).

    Each targeted weight ``W`` (``m x n``; per group for convolutions) becomes ``second @ first``,
    with the rank chosen by ``config``'s rule (or by one global allocation for ``rank="auto"``) and the
    factors computed by its method (truncated SVD; ASVD, Yuan et al. 2023; or SVD-LLM whitening,
    Wang et al. 2024; see :class:`LowRankConfig`). A layer is factorized only if that is strictly
    cheaper in what the rule counts (params, or MACs for FLOPs rules); otherwise it stays dense and
    the report says why. Layers whose weight is tied to another module's (which factorizing would
    duplicate) and the projections inside ``nn.MultiheadAttention`` stay dense too. A pruned
    (masked) layer is factorized from its masked weight; its factors are dense, so the mask is
    dropped, with a warning and a note in the report (see :mod:`torchcompress.forms`).

    The per-layer report (rank, energy kept, params and MACs before/after, dense-or-factorized and
    why) is returned by :func:`torchcompress.lowrank.lowrank_report` and printable.

    Args:
        model: the model, modified in place.
        config: a :class:`LowRankConfig` (or a dict of its fields; ``None``: the default,
            ``params_ratio`` 0.5 with plain SVD).
        calib_data: any iterable of batches (tensors, ``(inputs, targets)``, dicts of keyword
            arguments). Needed by ``method="activation_aware"``/``"whitened"`` (statistics over up to
            ``config.max_batches`` batches) and by FLOPs budgets (input sizes). With plain SVD, one
            batch is run only to report MACs.
        include: glob patterns of module names to factorize (default: every supported layer).
        exclude: glob patterns to leave alone.
        progress: show progress bars (``None``: when interactive).

    Returns:
        ``model``, factorized.

    Raises:
        DataError: the method or budget needs ``calib_data`` and none was given, or a batch does
            not fit the model.
        ConfigError: a rank larger than a layer allows, a ratio that a layer cannot meet, or an
            infeasible ``"auto"`` budget (each naming the layer or the floor).
        SelectionError: ``include``/``exclude`` match nothing, or nothing can be targeted.
        UnsupportedModuleError: a module named in ``include`` cannot be factorized.
        CalibrationError: a targeted layer never ran on ``calib_data``.
        CompressionStateError: a targeted layer is already quantized (factorize first).

    Example:
        >>> import torch, torch.nn as nn, torchcompress as tc
        >>> model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        >>> x = torch.randn(64, 256)
        >>> cfg = tc.LowRankConfig(rank="params_ratio", value=0.5, method="whitened")
        >>> tc.factorize(model, cfg, calib_data=x)[0].rank      # (63 * 512 + 256) / 65,792 <= 0.5
        63
        >>> rep = tc.lowrank.lowrank_report(model)
        >>> round(rep.params_ratio, 3), rep.layers[1].rank
        (0.491, 4)
        >>> tc.factorize(nn.Sequential(nn.Linear(64, 64)), tc.LowRankConfig(rank=40))[0]  # 40 >= 31
        Linear(in_features=64, out_features=64, bias=True)
    """
    forms.check(model, "factorize", include=include, exclude=exclude)
    cfg = _as_config(config)
    method = get_method(cfg.method)
    rule = cfg.rule()
    targets = _select_dense(model, include, exclude)
    check_finite(targets, "factorized")
    owners = _tied_weights(model)
    r_floor = round_rank(cfg.min_rank, cfg.round_to, "up")

    works: list[_Work] = []
    for name, mod in targets:
        geo = dense_geometry(mod, name)
        w = _Work(name, mod, geo)
        shared = [o for o in owners.get(id(mod.weight), []) if o != name]
        small = min(geo.m, geo.n)
        if shared:
            w.dense_reason = (
                f"weight is tied to {shared[0]!r}; factorizing would add params, not remove them"
            )
        elif small < cfg.min_features:
            w.dense_reason = f"smaller than min_features={cfg.min_features} (min(out, in)={small})"
        elif F.break_even(geo) < r_floor:
            w.dense_reason = (
                "this layer cannot be factorized more cheaply (break-even rank 0)"
                if F.break_even(geo) == 0
                else f"break-even rank {F.break_even(geo)} < min_rank {r_floor}: cannot save"
            )
        works.append(w)

    needs_stats = bool(method.needs)
    if calib_data is None and cfg.needs_data:
        why = (
            f"method={cfg.method!r} computes its factors from activation statistics"
            if needs_stats
            else rule.data_reason
        )
        raise DataError(
            f"factorize: {why}, so it needs calib_data= (a DataLoader, a tensor or any iterable of "
            "batches). Pass it, or use method='svd' with a params rule."
        )

    t0 = time.perf_counter()
    n_batches = 0
    if calib_data is not None:
        needs = {w.name: (method.needs if not w.dense_reason else frozenset()) for w in works}
        stats, n_batches = collect_stats(
            model,
            {w.name: w.module for w in works},
            calib_data,
            needs=needs,
            max_batches=cfg.max_batches if needs_stats else 1,
            progress=progress,
            require_all=needs_stats or rule.needs_data,
        )
        for w in works:
            st = stats[w.name]
            w.stats = st
            w.positions = st.rows / n_batches if st.calls else None
    t_cal = time.perf_counter() - t0

    t0 = time.perf_counter()
    _decide(works, cfg, method, rule, progress)
    t_dec = time.perf_counter() - t0

    report = _report(works, cfg, n_batches, {"calibration": t_cal, "decomposition": t_dec})
    new = {w.name: w.new for w in works if w.new is not None}
    _carry_forms(works, report)
    replace_modules(model, {name: (lambda old, m=m: m) for name, m in new.items()})
    for w in works:  # free statistics (they can be large)
        w.stats = None
        w.transform = None
    set_report(model, report)
    io.add_history(
        model,
        "factorize",
        cfg.to_dict(),
        include=list([include] if isinstance(include, str) else include or []),
        exclude=list([exclude] if isinstance(exclude, str) else exclude or []),
        factorized=len(new),
        params_ratio=round(report.params_ratio, 6),
    )
    log.info("factorize: %s", report.summary())
    return model


def _carry_forms(works: list[_Work], report: LowRankReport) -> None:
    """What becomes of each factorized layer's earlier forms (a pruning mask is dropped: the
    factors are dense): logged, and noted in the report, never silent."""
    rows = {la.name: la for la in report.layers}
    for w in works:
        if w.new is None:
            continue
        for carried in forms.carry_over(w.module, w.new):
            rows[w.name].note = "; ".join(filter(None, [rows[w.name].note, carried.note]))
            level = logging.INFO if carried.kept else logging.WARNING
            log.log(level, "factorize: %s: %s", w.name, carried.note)


def _report(
    works: list[_Work], cfg: LowRankConfig, n_batches: int, seconds: dict[str, float]
) -> LowRankReport:
    rep = LowRankReport(
        rule=cfg.describe(),
        budget=cfg.budget if cfg.is_auto else None,
        budget_kind=cfg.budget_kind if cfg.is_auto else None,
        calib_batches=n_batches,
        seconds=seconds,
    )
    for w in works:
        d = w.decision or Decision(None, w.dense_reason)
        r = d.rank
        geo = w.geo
        energy = w.spectrum.energy(r) if w.spectrum is not None else (1.0 if r is None else None)
        pos = w.positions
        rep.layers.append(
            LayerReport(
                name=w.name,
                type=type(w.module).__name__,
                shape=F.shape_str(geo),
                rank=r,
                full_rank=F.full_rank(geo),
                break_even=F.break_even(geo),
                energy_kept=energy,
                params_before=F.params_at(geo, None),
                params_after=F.params_at(geo, r),
                macs_before=None if pos is None else round(pos * F.macs_per_position(geo, None)),
                macs_after=None if pos is None else round(pos * F.macs_per_position(geo, r)),
                factorized=r is not None,
                reason=d.reason,
            )
        )
    return rep


def merge_lowrank(
    model: nn.Module, *, include: Patterns = None, exclude: Patterns = None
) -> nn.Module:
    """Multiply every factorized layer's factors back into a plain Linear / Conv layer.

    The merged layer computes the same function (up to float round-off), on the same device and in
    the same dtype; bias and train/eval mode are kept. Use it to compare against the dense model,
    or to hand a model to tools that only know plain layers.

    Args:
        model: the model, modified in place.
        include: glob patterns of factorized layers to merge (default: all).
        exclude: glob patterns to keep factorized.

    Returns:
        ``model``.

    Raises:
        CompressionStateError: the model holds no factorized layer (nothing to merge).

    Example:
        >>> import torch, torch.nn as nn, torchcompress as tc
        >>> model = tc.factorize(nn.Sequential(nn.Linear(64, 64)), tc.LowRankConfig(rank=8))
        >>> x = torch.randn(2, 64)
        >>> y = model(x)
        >>> type(tc.merge_lowrank(model)[0]).__name__, torch.allclose(model(x), y, atol=1e-5)
        ('Linear', True)
    """
    forms.check(model, "merge_lowrank", include=include, exclude=exclude)
    if not any(isinstance(m, LowRankModule) for m in model.modules()):
        raise CompressionStateError(
            f"{type(model).__name__} holds no factorized layer to merge; call tc.factorize first."
        )
    targets = select_modules(
        model, include, exclude, types=(LowRankModule,), family="merge_lowrank"
    )
    # only the outermost factorized layers (their children are plain layers anyway)
    replace_modules(model, {name: (lambda old: old.merge()) for name, _ in targets})
    io.add_history(model, "merge_lowrank", {}, merged=len(targets))
    return model


def _product_svd(mod: LowRankModule) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of ``second @ first`` from the factors, via two QRs (cost ~ r^2 (m+n))."""
    first, second = mod.factors()
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    first = first.detach().to(dtype)
    second = second.detach().to(dtype)
    Qb, Rb = torch.linalg.qr(second)  # (g,m,r), (g,r,r)
    Qa, Ra = torch.linalg.qr(first.transpose(-1, -2))  # (g,n,r), (g,r,r)
    Uc, s, Vch = F.svd(Rb @ Ra.transpose(-1, -2))
    return Qb @ Uc, s, Vch @ Qa.transpose(-1, -2)


def retruncate(
    model: nn.Module,
    config: LowRankConfig | dict[str, Any] | None = None,
    calib_data: Any = None,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    progress: bool | None = None,
) -> nn.Module:
    """Re-select the ranks of already factorized layers (e.g. after low-rank training).

    Each factorized layer's product ``second @ first`` is re-decomposed exactly (two QRs and an
    ``r x r`` SVD, no dense matrix) and cut to the rank ``config``'s rule (or ``"auto"`` allocation)
    gives, never above its current rank. A layer whose new rank no longer saves anything is merged
    back to a dense layer. Training with a singular-value regularizer
    (:class:`~torchcompress.lowrank.SingularValueRegularizer`) or proximal steps
    (:class:`~torchcompress.lowrank.SVTCallback`) first makes the tail of each spectrum small, so
    the cut costs little accuracy.

    Args:
        model: the model, modified in place.
        config: the rule (``method`` must be ``"svd"``: the spectrum is the factors' own).
        calib_data: only needed for a FLOPs budget (input sizes); one batch is used.
        include: glob patterns of factorized layers to re-truncate.
        exclude: glob patterns to leave alone.
        progress: show a progress bar.

    Returns:
        ``model``; :func:`~torchcompress.lowrank.lowrank_report` describes the new ranks.

    Raises:
        CompressionStateError: no factorized layer.
        ConfigError: a method other than ``"svd"``, or an infeasible budget.

    Example:
        >>> import torch.nn as nn, torchcompress as tc
        >>> model = tc.factorize(nn.Sequential(nn.Linear(64, 64)), tc.LowRankConfig(rank=16))
        >>> tc.lowrank.retruncate(model, tc.LowRankConfig(rank=4))[0].rank
        4
    """
    cfg = _as_config(config)
    if not METHODS.get(cfg.method).weight_only:
        allowed = " or ".join(repr(n) for n in METHODS if METHODS.get(n).weight_only)
        raise ConfigError(
            "retruncate re-selects ranks from the factors' own spectrum; method must be "
            f"{allowed}, got {cfg.method!r}."
        )
    if not any(isinstance(m, LowRankModule) for m in model.modules()):
        raise CompressionStateError(
            f"{type(model).__name__} holds no factorized layer to re-truncate; call tc.factorize first."
        )
    rule = cfg.rule()
    targets = select_modules(model, include, exclude, types=(LowRankModule,), family="retruncate")
    if rule.needs_data and calib_data is None:
        raise DataError(f"retruncate: {rule.data_reason}, so it needs calib_data=.")
    positions: dict[str, float | None] = {n: None for n, _ in targets}
    n_batches = 0
    if calib_data is not None:
        stats, n_batches = collect_stats(
            model,
            dict(targets),
            calib_data,
            max_batches=1,
            progress=progress,
            require_all=rule.needs_data,
        )
        positions = {n: (st.rows / n_batches if st.calls else None) for n, st in stats.items()}
    t0 = time.perf_counter()
    works: list[_Work] = []
    svds: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    for name, mod in progress_bar(targets, desc="low-rank re-truncation", enabled=progress):
        geo = dense_geometry(mod, name)
        w = _Work(name, mod, geo, positions=positions[name])
        U, s, Vh = _product_svd(mod)  # type: ignore[arg-type]
        svds[name] = (U, s, Vh)
        # the spectrum has the layer's current rank: no rule makes it grow
        w.spectrum = LayerSpectrum(name, geo, s.cpu(), w.positions)
        works.append(w)
    decisions = rule.decide_all(
        [w.spectrum for w in works],  # type: ignore[misc]
        min_rank=cfg.min_rank,
        round_to=cfg.round_to,
        min_features=cfg.min_features,
        min_saving=cfg.min_saving,
    )
    for w in works:
        w.decision = decisions[w.name]
    new: dict[str, nn.Module] = {}
    for w in works:
        mod: LowRankModule = w.module  # type: ignore[assignment]
        r = w.decision.rank  # type: ignore[union-attr]
        if r is None:
            new[w.name] = mod.merge()
        elif r < mod.rank:
            first, second = F.split_factors(*svds[w.name], r)
            new[w.name] = mod.with_factors(first, second)
    t_dec = time.perf_counter() - t0
    report = _report(works, cfg, n_batches, {"calibration": 0.0, "decomposition": t_dec})
    replace_modules(model, {name: (lambda old, m=m: m) for name, m in new.items()})
    set_report(model, report)
    io.add_history(model, "retruncate", cfg.to_dict(), changed=len(new))
    return model
