"""``tc.prune_channels``: structured pruning that physically removes channels and heads."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ... import forms, io
from ...batches import Batch, example_batch
from ...calibration import STATISTICS
from ...errors import ConfigError, ShapeError, UnsupportedModuleError
from ...layers import layer_kind
from ...profiling import profile
from ...tracing import Recorder
from ..calibration import LossFn, Target, collect_statistics
from .allocation import CostModel, allocate, refine, search_ratio
from .builder import Analysis, analyse, check_handlers, check_plain, output_shapes
from .config import ChannelPruneConfig
from .importance import IMPORTANCE, ScoreContext
from .report import ChannelPruneReport, GroupReport, set_report
from .surgery import apply_pruning, transaction

__all__ = ["prune_channels"]

log = logging.getLogger(__name__)

_UNSET: Any = object()


def _config(ratio: Any, config: ChannelPruneConfig | None, **given: Any) -> ChannelPruneConfig:
    if isinstance(ratio, ChannelPruneConfig):
        if config is not None:
            raise ConfigError("prune_channels: pass the config once (positionally or as config=).")
        config, ratio = ratio, _UNSET
    changes = {k: v for k, v in given.items() if v is not _UNSET}
    if ratio is not _UNSET and ratio is not None:
        changes["ratio"] = ratio
    if config is None:
        return ChannelPruneConfig(**changes)
    if not isinstance(config, ChannelPruneConfig):
        raise ConfigError(
            f"prune_channels: config must be a ChannelPruneConfig, got {type(config).__name__}."
        )
    if "ratio" in changes and "target" not in changes:
        changes["target"] = None
    if "target" in changes and "ratio" not in changes:
        changes["ratio"] = None
    return config.replace(**changes) if changes else config


def _baseline(model: nn.Module) -> dict[str, float]:
    for entry in reversed(io.history(model)):
        if entry.get("step") == "prune_channels" and isinstance(entry.get("cumulative"), dict):
            return {k: float(v) for k, v in entry["cumulative"].items()}
    return {"macs": 1.0, "params": 1.0}


def _scores(
    model: nn.Module,
    analysis: Analysis,
    cfg: ChannelPruneConfig,
    data: Any,
    loss_fn: LossFn | None,
    progress: bool | None,
) -> tuple[list[torch.Tensor], list[str]]:
    crit = IMPORTANCE.get(cfg.criterion)
    ctx = ScoreContext(seed=cfg.seed)
    if crit.statistics:
        if data is None:
            raise ConfigError(
                f"criterion={cfg.criterion!r} needs data= (batches; with targets or a loss_fn= for "
                "gradients); or choose 'l2', 'l1', 'bn_scale' or 'random'."
            )
        if torch.is_inference_mode_enabled() and any(
            STATISTICS.get(s).observes == "weight_grad" for s in crit.statistics
        ):
            raise ConfigError(
                f"criterion={cfg.criterion!r} takes gradients, which torch.inference_mode() forbids:"
                " call prune_channels outside it (torch.no_grad() is fine), or choose 'l2', 'l1', "
                "'bn_scale', 'wanda' or 'random'."
            )
        names = sorted(
            {
                m.binder
                for g in analysis.groups
                for m in g.members
                if m.binder is not None and layer_kind(model.get_submodule(m.binder)) is not None
            }
        )
        targets = [
            Target(n, model.get_submodule(n), layer_kind(model.get_submodule(n)))  # type: ignore[arg-type]
            for n in names
        ]
        needs = {n: set(crit.statistics) for n in names}
        ctx.stats = collect_statistics(
            model, targets, needs, data, loss_fn, max_batches=cfg.max_batches, progress=progress
        )
    out, notes = [], []
    for g in analysis.groups:
        s, note = crit.scores(g, model, ctx)
        out.append(s.double())
        notes.append(note)
    return out, notes


def _verify(model: nn.Module, batch: Batch, expected: Sequence[tuple[int, ...]]) -> None:
    recorder = Recorder(model, [], sources=False)
    try:
        with recorder:
            out = batch(model)
    except Exception as e:
        call = recorder.stack[-1] if recorder.stack else None
        where = (
            f"module {call.name!r} ({type(call.module).__name__})"
            if call and call.name
            else "the model's own forward"
        )
        raise UnsupportedModuleError(
            f"After pruning, the forward failed in {where}: {e}. It probably keeps a size in an "
            "attribute or in its code (a head count, a split size); register a handler that updates "
            "it (torchcompress.sparsity.structured.HANDLERS), or protect it with ignore=[...]. The "
            "model was left as it was."
        ) from e
    got = output_shapes(out)
    if got != list(expected):
        raise ShapeError(
            f"After pruning, the model's outputs have shapes {got} instead of {list(expected)}; the "
            "model was left as it was. Please report this model: a dependency was missed."
        )


def _kept_reasons(analysis: Analysis) -> dict[str, int]:
    graph = analysis.graph
    active = {graph.find(i) for i in graph.active}
    counts: dict[str, int] = {}
    for root, why in analysis.fixed.items():
        if root in active:
            counts[why] = counts.get(why, 0) + 1
    return counts


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | ChannelPruneConfig | None = None,
    *,
    target: dict[str, float] | None = _UNSET,
    criterion: str = _UNSET,
    scope: str = _UNSET,
    round_to: int | None = _UNSET,
    ignore: str | Sequence[str] | None = _UNSET,
    data: Any = None,
    loss_fn: LossFn | None = None,
    max_ratio: float = _UNSET,
    relative_to: str = _UNSET,
    max_batches: int | None = _UNSET,
    seed: int = _UNSET,
    config: ChannelPruneConfig | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """Remove whole channels and attention heads, giving a smaller dense model.

    One forward on ``example_inputs`` is recorded (the shared :class:`~torchcompress.tracing.
    Recorder`) to build the dependency graph: every parameter that must shrink when a channel goes
    shrinks with it (BatchNorm/LayerNorm/GroupNorm after a layer, the consumers' inputs, residual
    additions, concatenations at their offsets, chunks, depthwise and grouped convolutions, flatten
    into a Linear, attention heads in ``nn.MultiheadAttention``, Hugging Face BERT-style models and
    your own attention, FFN units). Units are ranked by ``criterion`` and the lowest go; the model
    keeps its input and output shapes, runs with stock kernels and is faster where the MACs fall.

    The approach follows DepGraph (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning"),
    built on torchcompress's recorder; criteria: Li et al. 2017 (L1/L2), Liu et al. 2017 (BN scale),
    Molchanov et al. 2017/2019 (Taylor), Sun et al. 2023 (Wanda, summed per channel).

    Args:
        model: the model (changed in place and returned).
        example_inputs: inputs the model accepts: a tensor, a tuple, a dict of keyword inputs, or a
            DataLoader batch. MACs targets count MACs on these inputs.
        ratio: fraction of channels to remove (see :class:`ChannelPruneConfig`), or a config.
        target: ``{"macs": r}`` or ``{"params": r}``: the fraction of the unpruned model's cost to
            keep at most; the ratio is searched (instead of ``ratio``).
        criterion: ``"l2"`` (default), ``"l1"``, ``"bn_scale"``, ``"taylor"``, ``"wanda"``,
            ``"random"``.
        scope: ``"local"`` (default) or ``"global"``.
        round_to: keep channel counts at multiples of this.
        ignore: glob patterns of protected modules (outputs kept; blocks kept whole).
        data: batches for ``"taylor"`` (inputs and targets) and ``"wanda"`` (inputs).
        loss_fn: ``(output, target) -> loss`` for ``"taylor"`` (default: cross-entropy).
        max_ratio: the largest fraction of any group that may go (default 0.9).
        relative_to: what ``target`` is a fraction of: ``"original"`` (default: the model before
            its first ``prune_channels``) or ``"current"``.
        max_batches: ``"taylor"`` uses at most this many batches.
        seed: seed of ``"random"``.
        config: a :class:`ChannelPruneConfig` (keyword arguments override its fields).
        progress: progress bar while gathering gradients (``None``: when interactive).

    Returns:
        ``model``; :func:`torchcompress.sparsity.channel_report` says what went, group by group.

    Raises:
        ConfigError: a bad option; a ratio that would remove every channel of a group; a target
            that cannot be met within ``max_ratio`` (the message says what is reachable).
        UnsupportedModuleError: a module pruning would change that no handler knows (named, with
            how to register one or protect it), or a model with nothing to prune.
        ShapeError: the model does not run on ``example_inputs``.
        CompressionStateError: the model holds masked, quantized or factorized layers.

    Example:
        >>> import torch, torchcompress as tc
        >>> model = tc.models.create("resnet20")
        >>> x = torch.randn(1, 3, 32, 32)
        >>> _ = tc.prune_channels(model, x, target={"macs": 0.5}, round_to=4)
        >>> round(tc.profile(model, x).total_macs / 40_553_984, 2) <= 0.5
        True
        >>> model(x).shape
        torch.Size([1, 10])
    """
    cfg = _config(
        ratio,
        config,
        target=target,
        criterion=criterion,
        scope=scope,
        round_to=round_to,
        ignore=ignore,
        max_ratio=max_ratio,
        relative_to=relative_to,
        max_batches=max_batches,
        seed=seed,
    )
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune_channels needs an nn.Module, got {type(model).__name__}.")
    forms.check(model, "prune_channels")  # every layer in a form it cannot follow, named at once
    check_plain(model)
    times: dict[str, float] = {}
    t = time.perf_counter()
    batch = example_batch(model, example_inputs)
    analysis = analyse(model, batch, ignore=cfg.ignore)
    check_handlers(model, analysis, cfg.ignore)
    times["graph"] = time.perf_counter() - t
    before = profile(model, batch)
    baseline = _baseline(model)
    report = ChannelPruneReport(
        criterion=cfg.criterion,
        scope=cfg.scope,
        target=cfg.target,
        macs_before=before.total_macs,
        params_before=before.total_params,
        baseline=baseline,
        kept=_kept_reasons(analysis),
    )
    wants = (cfg.ratio or 0) > 0 or (
        cfg.target is not None
        and (cfg.goal if cfg.relative_to == "current" else cfg.goal / baseline[cfg.metric]) < 1  # type: ignore[operator]
    )
    if not analysis.groups and wants:
        top = sorted(report.kept.items(), key=lambda kv: -kv[1])[:3]
        raise UnsupportedModuleError(
            f"No channel of {type(model).__name__} can be removed: "
            + "; ".join(f"{why} ({n})" for why, n in top)
            + ". Check ignore= and the modules named."
        )
    t = time.perf_counter()
    scores, notes = _scores(model, analysis, cfg, data, loss_fn, progress)
    times["scores"] = time.perf_counter() - t
    t = time.perf_counter()
    cost = CostModel(analysis, model, before.total_macs)
    groups = analysis.groups

    def plan(r: float) -> list[list[int]]:
        return allocate(
            groups, scores, r, scope=cfg.scope, max_ratio=cfg.max_ratio, round_to=cfg.round_to
        )

    if cfg.ratio is not None:
        used = float(cfg.ratio)
        removed = plan(used)
    else:
        metric, goal = cfg.metric, float(cfg.goal)  # type: ignore[arg-type]
        rel = goal if cfg.relative_to == "current" else goal / baseline[metric]  # type: ignore[index]
        if rel >= 1:
            used, removed = 0.0, [[] for _ in groups]
            report.note = f"target already met ({baseline[metric]:.4f}x of the original {metric})"  # type: ignore[index]
        else:
            measure = cost.macs if metric == "macs" else cost.params
            base = before.total_macs if metric == "macs" else cost.base_params
            high = cfg.max_ratio if cfg.scope == "local" else 1.0
            try:
                used, _ = search_ratio(lambda r: measure(groups, plan(r)), rel * base, high)
            except ConfigError:
                best = measure(groups, plan(high)) / max(base, 1)
                raise ConfigError(
                    f"target={cfg.target} cannot be met: with max_ratio={cfg.max_ratio} "
                    f"({cfg.scope} scope) the {metric} go down to {best * baseline[metric]:.4f}x"  # type: ignore[index]
                    " of the original at most. Raise max_ratio, or protect fewer layers."
                ) from None
            removed = refine(
                groups,
                scores,
                plan(used),
                lambda rem: measure(groups, rem),
                rel * base,
                cfg.round_to,
            )
    report.ratio = used
    report.macs_estimated = cost.macs(groups, removed)
    times["allocation"] = time.perf_counter() - t
    t = time.perf_counter()
    with transaction(model):
        apply_pruning(model, groups, removed, analysis.graph.binders)
        _verify(model, batch, analysis.outputs)
        after = profile(model, batch)
    times["surgery"] = time.perf_counter() - t
    report.macs_after, report.params_after = after.total_macs, after.total_params
    report.seconds = times
    for g, _s, note, gone in zip(groups, scores, notes, removed):
        report.groups.append(
            GroupReport(
                name=g.name,
                members=[str(m) for m in g.members],
                units=len(g.units),
                removed=len(gone),
                width=g.width,
                removed_units=sorted(gone),
                criterion=note or cfg.criterion,
            )
        )
    set_report(model, report)
    io.add_history(
        model,
        "prune_channels",
        cfg.to_dict(),
        ratio=used,
        macs_ratio=report.macs_ratio,
        params_ratio=report.params_ratio,
        cumulative=report.cumulative,
    )
    log.info("prune_channels: %s", report.summary())
    return model
