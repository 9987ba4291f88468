"""SparseGPT and Wanda: one-shot pruning of a model's repeated blocks, one block at a time.

- SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot", ICML 2023) prunes a layer's weight matrix column by column: in each block of columns it
  picks the weights with the lowest OBS saliency ``w^2 / [H^-1]_jj^2`` (adaptive mask selection;
  for N:M, the lowest ``m - n`` of every ``m``), and moves the columns not yet pruned to absorb the
  error (the same second-order sweep as GPTQ, :mod:`torchcompress.calibration.second_order`).
- Wanda (Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
  Models", ICLR 2024) prunes the weights with the lowest ``|w| * ||x||``, without updating the rest.

Both run on :class:`~torchcompress.calibration.SequentialRunner`: block ``k + 1`` is calibrated on
the outputs of the already-pruned block ``k``, its layers in the order the forward calls them
(:func:`~torchcompress.calibration.dataflow.analyze`). The result is :func:`torchcompress.prune`'s
format (a mask on each weight, the reconstructed weight as its original), so
:func:`torchcompress.sparsity_report`, :func:`torchcompress.finalize`, pruning again, and
:func:`torchcompress.save` work unchanged; quantizing afterwards with :func:`torchcompress.gptq`
keeps the pruned weights at exactly zero (SparseGPT's sparse + quantized model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import io
from ..calibration import Block, SequentialRunner, by_block
from ..calibration.dataflow import analyze
from ..calibration.second_order import Column, damped_hessian, inverse_cholesky, obs_sweep
from ..config import Config
from ..errors import (
    CalibrationError,
    ConfigError,
    DataError,
    SelectionError,
    check_choice,
    check_range,
)
from ..layers import Geometry, LayerKind, layer_kind
from ..select import snapshot_modules
from .config import PruneConfig
from .masking import apply_mask, get_mask, original
from .pruning import select_targets

__all__ = ["METHODS", "SparseGPTConfig", "prune_mask", "sparsegpt", "sparsegpt_matrix"]

log = logging.getLogger(__name__)

#: The pruning methods :func:`sparsegpt` runs.
METHODS = ("sparsegpt", "wanda")


def prune_mask(
    scores: Tensor,
    pruned: Tensor,
    *,
    count: int | Tensor | None = None,
    nm: tuple[int, int] | None = None,
) -> Tensor:
    """The keep-mask pruning the lowest ``scores`` of ``(rows, cols)``, entries in ``pruned`` first.

    Args:
        scores: saliencies (lower is pruned first).
        pruned: entries that must be pruned (already pruned weights); they count towards the target.
        count: how many to prune: an int for the whole matrix, or a ``(rows,)`` tensor per row
            (ignored with ``nm``). Never fewer than ``pruned`` holds.
        nm: ``(n, m)``: keep at most ``n`` of every ``m`` consecutive entries of a row (``cols`` a
            multiple of ``m``).

    Example:
        >>> import torch
        >>> from torchcompress.sparsity.sparsegpt import prune_mask
        >>> s = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.6, 0.7, 0.1]])
        >>> none = torch.zeros_like(s, dtype=torch.bool)
        >>> prune_mask(s, none, nm=(2, 4)).int().tolist()
        [[1, 0, 1, 0, 0, 1, 1, 0]]
        >>> prune_mask(s, none, count=6).int().tolist()
        [[1, 0, 1, 0, 0, 0, 0, 0]]
    """
    s = torch.where(pruned, torch.full_like(scores, -float("inf")), scores.float())
    rows, cols = s.shape
    if nm is not None:
        n, m = nm
        g = s.reshape(rows, cols // m, m)
        ranks = g.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)
        need = pruned.reshape(rows, cols // m, m).sum(-1, keepdim=True).clamp(min=m - n)
        return (ranks >= need).reshape(rows, cols)
    if isinstance(count, Tensor):
        ranks = s.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True)
        need = torch.maximum(count.to(ranks).reshape(rows, 1), pruned.sum(-1, keepdim=True))
        return ranks >= need
    k = max(int(count or 0), int(pruned.sum()))
    flat = s.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        keep[flat.argsort(stable=True)[:k]] = False
    return keep.reshape(rows, cols)


def _cumulative(total: int | Tensor, upto: int, cols: int) -> int | Tensor:
    """Entries of ``total`` falling in the first ``upto`` of ``cols`` columns (rounded, so the
    blocks add up to ``total`` exactly)."""
    if isinstance(total, Tensor):
        return torch.round(total.double() * upto / cols).long()
    return round(total * upto / cols)


def sparsegpt_matrix(
    weight: Tensor,
    xtx: Tensor,
    *,
    sparsity: float = 0.5,
    per_row: bool = False,
    nm: tuple[int, int] | None = None,
    pruned: Tensor | None = None,
    damp: float = 0.01,
    block_size: int = 128,
    name: str = "",
) -> tuple[Tensor, Tensor]:
    """SparseGPT on one matrix: prune and reconstruct.

    Args:
        weight: ``(rows, n)``.
        xtx: ``(n, n)``, ``E[x x^T]`` of the layer's inputs.
        sparsity: the fraction pruned (unstructured): ``round(sparsity * rows * n)`` weights exactly
            (``per_row``: ``round(sparsity * n)`` in every row).
        per_row: the target holds in every row (Wanda's comparison group) instead of the matrix.
        nm: ``(n, m)``: N:M instead (``sparsity`` ignored); ``block_size`` is rounded to a multiple
            of ``m``.
        pruned: bool ``(rows, n)``: weights already pruned (they stay pruned and count).
        damp: damping, a fraction of the mean diagonal of ``H``.
        block_size: columns per block (mask selection and lazy updates).
        name: the layer's name, for messages.

    Returns:
        ``(W', keep)``: the pruned, reconstructed weight (zero where ``keep`` is false) and the mask.

    Raises:
        NumericalError: the Hessian cannot be factorised (raise the damping or add samples).

    Example:
        >>> import torch
        >>> from torchcompress.sparsity.sparsegpt import sparsegpt_matrix
        >>> x, w = torch.randn(256, 16), torch.randn(8, 16)
        >>> w2, keep = sparsegpt_matrix(w, x.T @ x / 256, nm=(2, 4))
        >>> keep.reshape(8, 4, 4).sum(-1).unique().tolist(), bool((w2[~keep] == 0).all())
        ([2], True)
    """
    rows, n = weight.shape
    h, dead = damped_hessian(xtx.to(weight.device), damp, name=name)
    w = weight.detach().float().clone()
    w[:, dead] = 0
    upper = inverse_cholesky(h, name=name, damp=damp).float()
    forced = torch.zeros_like(w, dtype=torch.bool) if pruned is None else pruned.to(w.device).bool()
    if nm is not None:
        block_size = max(nm[1], block_size // nm[1] * nm[1])
        total: int | Tensor = 0
    elif per_row:
        total = torch.full((rows,), round(sparsity * n), dtype=torch.long, device=w.device)
    else:
        total = round(sparsity * rows * n)
    keep = torch.ones_like(w, dtype=torch.bool)
    done: list[Any] = [torch.zeros(rows, dtype=torch.long, device=w.device) if per_row else 0]

    def compress(col: Column) -> Tensor:
        j, i = col.index, col.offset
        if nm is not None and j % nm[1] == 0:
            width = min(nm[1], n - j)
            sal = col.block[:, i : i + width].pow(2) / col.hinv_diag[i : i + width].pow(2)
            keep[:, j : j + width] = prune_mask(sal, forced[:, j : j + width], nm=nm)
        elif nm is None and i == 0:
            width = col.block.shape[1]
            sal = col.block.pow(2) / col.hinv_diag.pow(2)
            upto = _cumulative(total, j + width, n)
            need = upto - done[0]
            if isinstance(need, Tensor):
                need = need.clamp(min=0)
            else:
                need = max(0, need)
            k = prune_mask(sal, forced[:, j : j + width], count=need)
            keep[:, j : j + width] = k
            gone = (~k).sum(-1) if per_row else int((~k).sum())
            done[0] = done[0] + gone
        return torch.where(keep[:, j], col.weight, torch.zeros_like(col.weight))

    out, _ = obs_sweep(w, upper, compress, block_size=block_size)
    return out.to(weight.dtype), keep


@dataclass(frozen=True)
class SparseGPTConfig(Config):
    """Options of :func:`sparsegpt` and the pruning it does.

    Args:
        prune: what to prune (:class:`~torchcompress.sparsity.PruneConfig`): ``sparsity``,
            ``pattern`` (``"unstructured"`` or ``"n:m"``), ``scope`` (``"layer"``, or ``"output"``:
            the target in every row), ``regrow`` (start from dense instead of keeping what is
            pruned), ``max_batches``. Its ``criterion`` selects Wanda when it is ``"wanda"`` (and
            ``method`` is not given).
        method: ``"sparsegpt"`` (OBS saliency and weight reconstruction) or ``"wanda"``
            (``|w| * ||x||``, weights unchanged).
        damp: SparseGPT's damping, a fraction of the Hessian's mean diagonal (0.01).
        block_size: SparseGPT's columns per block (mask selection and lazy updates; 128).
        true_sequential: prune a block's layers in the order the forward calls them, each group's
            statistics gathered after the layers before it are pruned.
        min_rows: SparseGPT needs at least ``min_rows`` input rows per input of a layer (``0``:
            no check).

    Example:
        >>> import torchcompress as tc
        >>> tc.SparseGPTConfig(tc.PruneConfig(pattern="2:4")).prune.target_sparsity
        0.5
    """

    prune: PruneConfig = field(default_factory=PruneConfig)
    method: str = "sparsegpt"
    damp: float = 0.01
    block_size: int = 128
    true_sequential: bool = True
    min_rows: float = 1.0

    def validate(self) -> None:
        owner = "SparseGPTConfig"
        if not isinstance(self.prune, PruneConfig):
            raise ConfigError(
                f"{owner}.prune must be a PruneConfig, got {type(self.prune).__name__}."
            )
        check_choice("method", self.method, METHODS, owner=owner)
        check_range("damp", self.damp, 0.0, None, owner=owner)
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise ConfigError(f"{owner}.block_size must be an int, got {self.block_size!r}.")
        check_range("block_size", self.block_size, 1, None, owner=owner)
        if not isinstance(self.true_sequential, bool):
            raise ConfigError(f"{owner}.true_sequential must be True or False.")
        check_range("min_rows", self.min_rows, 0.0, None, owner=owner)
        p = self.prune
        if p.pattern not in ("unstructured", "n:m"):
            raise ConfigError(
                f"{owner}: pattern={p.pattern!r} is not supported by sparsegpt (unstructured or "
                "N:M); whole channels are tc.prune(..., PruneConfig(pattern='channel')) or "
                "tc.prune_channels."
            )
        if p.scope not in ("layer", "output"):
            raise ConfigError(
                f"{owner}: scope={p.scope!r}: sparsegpt prunes each layer to the target "
                "('layer') or each of its rows ('output'), one block at a time; a global ranking "
                "across layers is tc.prune's."
            )
        if (
            p.pattern == "n:m"
            and p.sparsity is not None
            and abs(p.sparsity - (1 - p.n / p.m)) > 1e-9
        ):
            raise ConfigError(
                f"{owner}: sparsity={p.sparsity} with {p.n}:{p.m}: sparsegpt prunes every block of "
                f"{p.m} to {p.n} non-zeros; leave sparsity unset."
            )
        if p.criterion not in ("magnitude", "wanda"):
            raise ConfigError(
                f"{owner}: criterion={p.criterion!r}: sparsegpt ranks weights by its own saliency "
                "(method='sparsegpt') or by Wanda's |w|*||x|| (method='wanda')."
            )


def _parse(config: Any, options: Mapping[str, Any]) -> SparseGPTConfig:
    opts = dict(options)
    if config is None:
        cfg = SparseGPTConfig()
    elif isinstance(config, SparseGPTConfig):
        cfg = config
    elif isinstance(config, PruneConfig):
        cfg = SparseGPTConfig(prune=config)
    elif isinstance(config, Mapping):
        keys = set(config)
        if keys <= {"prune", "method", "damp", "block_size", "true_sequential", "min_rows"}:
            cfg = SparseGPTConfig.from_dict(dict(config))
        else:
            cfg = SparseGPTConfig(prune=PruneConfig.from_dict(dict(config)))
    else:
        raise ConfigError(
            "sparsegpt() takes a PruneConfig or a SparseGPTConfig as its config, got "
            f"{type(config).__name__}."
        )
    if (
        cfg.prune.criterion == "wanda"
        and "method" not in opts
        and not isinstance(config, SparseGPTConfig)
    ):
        opts["method"] = "wanda"
    return cfg.replace(**opts) if opts else cfg


def _masked_rows(kind: LayerKind, module: nn.Module, geo: Geometry, regrow: bool) -> Tensor | None:
    mask = get_mask(module)
    if mask is None or regrow:
        return None
    return ~kind.to_canonical(module, mask).reshape(geo.out_features, geo.n).bool()


def _columns(geo: Geometry) -> Tensor | None:
    """For a convolution, the column order putting each kernel tap's input channels side by side
    (N:M groups run along the channels); ``None`` for Linear-like layers."""
    if geo.taps == 1:
        return None
    cin = geo.in_features // geo.groups
    return torch.tensor([c * geo.taps + t for t in range(geo.taps) for c in range(cin)])


def _prune_layer(
    block: Block, name: str, stats: Any, cfg: SparseGPTConfig
) -> tuple[Tensor, Tensor]:
    module = block.module.get_submodule(name)
    full = f"{block.name}.{name}"
    kind = layer_kind(module)
    geo = kind.geometry(module)  # type: ignore[union-attr]
    p = cfg.prune
    nm = (p.n, p.m) if p.pattern == "n:m" else None
    if nm is not None and (geo.in_features // geo.groups) % nm[1]:
        raise ConfigError(
            f"Layer {full!r}: {p.n}:{p.m} needs m={p.m} to divide its "
            f"{geo.in_features // geo.groups} input channels (per group); exclude it."
        )
    w = (
        kind.to_canonical(module, original(module))
        .detach()
        .reshape(geo.out_features, geo.n)
        .float()
    )  # type: ignore[union-attr]
    forced = _masked_rows(kind, module, geo, p.regrow)  # type: ignore[arg-type]
    order = _columns(geo) if nm is not None else None
    if order is not None:
        order = order.to(w.device)
    out = w.clone()
    keep = torch.ones_like(w, dtype=torch.bool)
    m = geo.m
    for g in range(geo.groups):
        rows = slice(g * m, (g + 1) * m)
        wg, fg = w[rows], None if forced is None else forced[rows]
        if cfg.method == "wanda":
            norm = stats["input_sq"].reshape(geo.groups, geo.n)[g].float().sqrt()
            scores = wg.abs() * norm.reshape(1, -1)
            ff = torch.zeros_like(wg, dtype=torch.bool) if fg is None else fg
            if order is not None:
                k = prune_mask(scores[:, order], ff[:, order], nm=nm)
                kg = torch.empty_like(k)
                kg[:, order] = k
            elif nm is not None:
                kg = prune_mask(scores, ff, nm=nm)
            elif p.scope == "output":
                count = torch.full(
                    (m,), round(p.target_sparsity * geo.n), dtype=torch.long, device=w.device
                )
                kg = prune_mask(scores, ff, count=count)
            else:
                kg = prune_mask(scores, ff, count=round(p.target_sparsity * m * geo.n))
            keep[rows] = kg  # Wanda keeps the weights as they are
            continue
        xtx = stats["xtx"][g]
        if order is not None:
            wg, xtx = wg[:, order], xtx[order][:, order]
            fg = None if fg is None else fg[:, order]
        wq, kg = sparsegpt_matrix(
            wg,
            xtx,
            sparsity=p.target_sparsity,
            per_row=p.scope == "output",
            nm=nm,
            pruned=fg,
            damp=cfg.damp,
            block_size=cfg.block_size,
            name=repr(full),
        )
        if order is not None:
            inv = torch.argsort(order)
            wq, kg = wq[:, inv], kg[:, inv]
        out[rows], keep[rows] = wq, kg
    return out, keep


def _apply(module: nn.Module, weight2d: Tensor, keep2d: Tensor, change_weight: bool) -> None:
    kind = layer_kind(module)
    geo = kind.geometry(module)  # type: ignore[union-attr]
    stored = original(module)
    if change_weight:
        with torch.no_grad():
            stored.copy_(kind.from_canonical(module, weight2d.reshape(geo.weight_shape)).to(stored))  # type: ignore[union-attr]
    apply_mask(module, "weight", kind.from_canonical(module, keep2d.reshape(geo.weight_shape)))  # type: ignore[union-attr]


def _transform(targets: dict[str, list[str]], cfg: SparseGPTConfig) -> Callable[[Block], None]:
    stat = "input_sq" if cfg.method == "wanda" else "xtx"

    def transform(block: Block) -> None:
        names = targets.get(block.name, [])
        if not names:
            return
        flow = analyze(block.module, block.batches()[0], layers=names)
        never = [n for n in names if n not in flow.order]
        if never:
            raise CalibrationError(
                f"sparsegpt: {', '.join(repr(f'{block.name}.{n}') for n in never[:4])} never ran "
                f"when block {block.name!r} ran on its inputs; exclude "
                f"{'it' if len(never) == 1 else 'them'} (exclude=[...])."
            )
        if cfg.true_sequential:
            seen: set[str] = set()
            steps = []
            for g in flow.groups:
                step = [n for n in g.layers if n in names and n not in seen]
                seen.update(step)
                if step:
                    steps.append(step)
        else:
            steps = [list(flow.order)]
        for step in steps:
            stats = block.collect({n: [stat] for n in step})
            for n in step:
                module = block.module.get_submodule(n)
                geo = layer_kind(module).geometry(module)  # type: ignore[union-attr]
                rows = stats[n].count(stat)
                if cfg.method == "sparsegpt" and cfg.min_rows and rows < cfg.min_rows * geo.n:
                    raise CalibrationError(
                        f"Layer {block.name}.{n!r} saw {rows} input rows for its {geo.n} inputs: "
                        f"SparseGPT's Hessian 2 X^T X needs at least {math.ceil(cfg.min_rows * geo.n)} "
                        f"(SparseGPTConfig.min_rows={cfg.min_rows:g} per input). Add calibration "
                        "samples (or longer ones), or lower min_rows to rely on the damping alone."
                    )
                weight, keep = _prune_layer(block, n, stats[n], cfg)
                _apply(module, weight, keep, cfg.method == "sparsegpt")

    return transform


def sparsegpt(
    model: nn.Module,
    config: PruneConfig | SparseGPTConfig | dict[str, Any] | None = None,
    calib_data: Any = None,
    *,
    blocks: str | Sequence[str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> nn.Module:
    """Prune the layers of a model's repeated blocks in one shot with SparseGPT (or Wanda).

    Block by block (:class:`~torchcompress.calibration.SequentialRunner`), each layer's statistics
    are gathered on the block's inputs (the outputs of the blocks already pruned): ``E[x x^T]`` for
    SparseGPT, which prunes column by column and reconstructs the remaining weights
    (:func:`sparsegpt_matrix`), or ``E[x^2]`` for Wanda (``method="wanda"``, or
    ``PruneConfig(criterion="wanda")``), which prunes the lowest ``|w| * ||x||``. The sparsity (or
    the N:M pattern) is met exactly in every layer; layers already masked keep their pruned weights
    pruned (unless ``regrow``). Layers outside the blocks are left dense.

    Args:
        model: the model; modified in place (restored if anything fails).
        config: a :class:`~torchcompress.sparsity.PruneConfig` (default: 50% unstructured), a
            :class:`SparseGPTConfig`, or a dict of either.
        calib_data: calibration batches (any iterable of batches).
        blocks: the blocks (default: found, see :func:`~torchcompress.calibration.find_blocks`).
        include: glob patterns of layers to prune (default: every layer inside the blocks).
        exclude: glob patterns of layers to leave dense.
        max_batches: use at most this many calibration batches (default: the PruneConfig's).
        progress: a progress bar over the blocks (default: when interactive).
        **options: fields of :class:`SparseGPTConfig` (``method="wanda"``, ``damp=0.02``, ...).

    Returns:
        ``model``, with masks (``tc.finalize`` bakes them in).

    Raises:
        ConfigError: a bad option, or a pattern or scope sparsegpt does not run (channels, global).
        SelectionError: no repeated blocks, block names that match nothing, or layers selected
            outside the blocks.
        DataError: no ``calib_data``, or batches that do not fit the model.
        CalibrationError: too few calibration rows for a layer's Hessian, or a layer never reached.
        NumericalError: a Hessian that cannot be factorised (raise the damping or add samples).

    Example:
        >>> import torch, torchcompress as tc
        >>> from torch import nn
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.GELU())
        ...                                     for _ in range(2))
        ...     def forward(self, x):
        ...         for b in self.blocks:
        ...             x = b(x)
        ...         return x
        >>> model = tc.sparsegpt(Net(), tc.PruneConfig(pattern="2:4"),
        ...                      [torch.randn(64, 16) for _ in range(2)])
        >>> round(tc.sparsity_report(model).sparsity, 2)
        0.5
    """
    cfg = _parse(config, options)
    if calib_data is None:
        raise DataError(
            "sparsegpt() gathers each layer's statistics from calib_data, but calib_data is None. "
            "Pass representative inputs (a DataLoader, a list of batches or of tokenizer outputs)."
        )
    runner = SequentialRunner(
        model,
        calib_data,
        blocks=blocks,
        max_batches=max_batches if max_batches is not None else cfg.prune.max_batches,
        progress=progress,
        desc=cfg.method,
    )
    found = select_targets(model, include, exclude)
    targets, outside = by_block([t.name for t in found], runner.blocks)
    if outside and include is not None:
        raise SelectionError(
            f"sparsegpt works block by block; {', '.join(repr(n) for n in outside[:4])} "
            f"{'lies' if len(outside) == 1 else 'lie'} outside the blocks. Prune "
            f"{'it' if len(outside) == 1 else 'them'} with tc.prune(), or leave "
            f"{'it' if len(outside) == 1 else 'them'} out of include=."
        )
    if outside:
        log.info("sparsegpt: left dense (outside the blocks): %s", ", ".join(outside))
    if not any(targets.values()):
        raise SelectionError(
            f"sparsegpt: no layer to prune inside the blocks of {type(model).__name__}."
        )
    with snapshot_modules(model):
        runner.run(_transform(targets, cfg))
    io.add_history(
        model,
        "sparsegpt",
        cfg.to_dict(),
        blocks=[n for n, _ in runner.blocks],
        include=include if include is None or isinstance(include, str) else list(include),
        exclude=exclude if exclude is None or isinstance(exclude, str) else list(exclude),
    )
    return model
