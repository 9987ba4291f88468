"""AWQ: activation-aware weight quantization.

AWQ (Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan & Han, "AWQ: Activation-aware Weight
Quantization for On-Device LLM Compression and Acceleration", MLSys 2024) protects the weights
that meet large activations: before quantizing, each group of layers reading one tensor is rewritten
as ``(x / s)(W s)^T`` with ``s = mean|x|^r`` (normalised), so the salient input channels are scaled
up and lose less to rounding. ``r`` is searched on a grid per group (``r = 0``, the identity, always
a candidate), ranked by the error of the block's outputs with the group quantized; the scale is folded
into the op producing ``x`` where one can absorb it, or kept as an explicit scale
(:mod:`~torchcompress.quant.scaling`). Optionally (``clip=True``, as the paper does) each weight
group's range is then shrunk to the ratio that minimises the layer's output error
``(W - Q(W)) E[x x^T] (W - Q(W))^T``. Block ``k + 1`` is calibrated on the outputs of the
already-quantized block ``k``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import io
from ..calibration import Block, SequentialRunner
from ..calibration.dataflow import analyze
from ..errors import ConfigError, DataError, check_range
from ..layers import layer_kind
from ..select import module_device_dtype, set_module, snapshot_modules
from . import functional as QF
from .blockwise import (
    W4,
    BlockwiseConfig,
    block_output,
    block_targets,
    build_layer,
    calibrate_inputs,
    ensure_weight_bits,
    parse_config,
    relative_error,
    set_quantized_weight,
)
from .build import integer_ranges
from .hardware import resolve_reduce_range
from .modules import QuantLayer
from .scale_search import output_error, trial_of
from .scaling import linear_like, scale_inputs, swapped
from .spec import QuantConfig

__all__ = ["AWQConfig", "awq", "clip_search"]

log = logging.getLogger(__name__)

#: Relative change of a block's float outputs a scaling may cause (float32 rounding), beyond which
#: it is undone.
TOLERANCE = 1e-4


def clip_search(
    w2d: Tensor,
    xtx: Tensor,
    qmin: int,
    qmax: int,
    *,
    symmetric: bool,
    group_size: int | None,
    ratios: Sequence[float],
) -> tuple[Tensor, Tensor]:
    """Per row and group, the range ``[r lo, r hi]`` (``r`` in ``ratios``) minimising the output error.

    The error of a group is ``d^T H_gg d`` with ``d`` the group's rounding error and ``H_gg`` its
    block of ``E[x x^T]`` (AWQ's per-group output error, from the statistic instead of sampled rows).

    Args:
        w2d: ``(rows, n)`` weight.
        xtx: ``(n, n)``.
        qmin: smallest integer.
        qmax: largest integer.
        symmetric: the format's symmetry.
        group_size: columns per range (``None``: one per row).
        ratios: shrink ratios to try (``1.0``: the min/max range).

    Returns:
        ``(scale, zero_point)`` shaped ``(rows,)`` or ``(rows, n // group_size)``.

    Example:
        >>> import torch
        >>> from torchcompress.quant.awq import clip_search
        >>> w, x = torch.randn(4, 16), torch.randn(64, 16)
        >>> s, z = clip_search(w, x.T @ x / 64, -8, 7, symmetric=True, group_size=8,
        ...                    ratios=[1.0, 0.9, 0.8])
        >>> s.shape, z.shape  # one range per row and group of 8 inputs
        (torch.Size([4, 2]), torch.Size([4, 2]))
    """
    rows, n = w2d.shape
    gs = n if group_size is None else group_size
    groups = n // gs
    wg = w2d.detach().float().reshape(rows, groups, gs)
    h = xtx.detach().to(wg.device).double().reshape(groups, gs, groups, gs)
    hg = torch.stack([h[g, :, g, :] for g in range(groups)]).float()  # (groups, gs, gs)
    lo, hi = wg.amin(-1), wg.amax(-1)
    best = torch.full((rows, groups), float("inf"), device=wg.device)
    best_s = torch.ones(rows, groups, device=wg.device)
    best_z = torch.zeros(rows, groups, dtype=torch.int32, device=wg.device)
    for r in ratios:
        s, z = QF.choose_qparams(lo * r, hi * r, qmin, qmax, symmetric=symmetric)
        s, z = s.to(wg.device), z.to(wg.device)
        d = wg - QF.fake_quantize(wg, s.unsqueeze(-1), z.unsqueeze(-1), qmin, qmax)
        err = torch.einsum("rgi,gij,rgj->rg", d, hg, d)
        better = err < best
        best = torch.where(better, err, best)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    if group_size is None:
        return best_s[:, 0], best_z[:, 0]
    return best_s, best_z


@dataclass(frozen=True)
class AWQConfig(BlockwiseConfig):
    """AWQ's options and the format it quantizes to (Lin et al. 2024).

    Args:
        quant: the target format (default: 4-bit asymmetric per-channel weights, float
            activations; the paper uses ``IntSpec(4, symmetric=False, granularity="group",
            group_size=128)``). Weights of 2 to 8 bits.
        grid: candidate exponents ``r = i / grid``, ``i = 0 .. grid - 1`` (``r = 0``: identity).
        clip: after scaling, search each weight group's range (``clip_ratios``) for the lowest
            output error (the paper's clipping step); per-tensor ranges are not clipped.
        clip_ratios: shrink ratios tried by the clipping search.
        max_search_batches: rank candidates on at most this many of a block's calibration batches
            (``None``: all).
        fold: fold scales into the producing op where one can absorb them (``False``: always an
            explicit scale module).
        quantize: quantize after scaling (``False``: only the scaling, e.g. before ``tc.gptq``).

    Example:
        >>> import torchcompress as tc
        >>> tc.AWQConfig(grid=10).clip_ratios[:3]
        (1.0, 0.95, 0.9)
    """

    quant: QuantConfig = W4
    grid: int = 20
    clip: bool = True
    clip_ratios: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
    max_search_batches: int | None = None
    fold: bool = True
    quantize: bool = True

    def validate(self) -> None:
        super().validate()
        ensure_weight_bits(self.quant, "AWQ", "AWQConfig")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ConfigError(f"AWQConfig.grid must be a positive int, got {self.grid!r}.")
        for f in ("clip", "fold", "quantize"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(f"AWQConfig.{f} must be True or False, got {getattr(self, f)!r}.")
        if not self.clip_ratios:
            raise ConfigError("AWQConfig.clip_ratios needs at least one ratio (1.0: no clipping).")
        for r in self.clip_ratios:
            check_range("clip_ratios", r, 0.0, 1.0, low_inclusive=False, owner="AWQConfig")
        if self.max_search_batches is not None:
            check_range("max_search_batches", self.max_search_batches, 1, None, owner="AWQConfig")


def _transform(
    targets: dict[str, list[str]], cfg: AWQConfig, reduce: str, chosen: dict[str, float]
) -> Callable[[Block], None]:
    wrange, _ = integer_ranges(cfg.quant, reduce)

    def transform(block: Block) -> None:
        names = targets.get(block.name, [])
        if not names:
            return
        flow = analyze(block.module, block.batches()[0])
        search = Block(
            block.index, block.name, block.module, block.inputs[: cfg.max_search_batches]
        )
        with torch.no_grad():
            reference = [block_output(o).detach() for o in search.run()]
        first = Block(block.index, block.name, block.module, block.inputs[:1])

        def unchanged() -> bool:
            return relative_error(first.run(), reference[:1]) < TOLERANCE

        groups = [
            g
            for g in flow.groups
            if any(n in names for n in g.layers)
            and all(linear_like(block.module.get_submodule(n)) for n in g.layers)
            and not any(n in flow.repeated for n in g.layers)
        ]
        stats = block.collect({g.layers[0]: ["abs_mean"] for g in groups}) if groups else {}
        renamed: dict[str, str] = {}
        for g in groups:
            mean = stats[g.layers[0]]["abs_mean"].float().clamp(min=1e-8)
            best_r, best_err, best_s = 0.0, float("inf"), None
            for i in range(cfg.grid):
                r = i / cfg.grid
                s = mean.pow(r)
                s = (s / (s.max() * s.min()).sqrt()).clamp(min=1e-4)
                trials = {
                    n: trial_of(
                        block.module.get_submodule(n),
                        None if i == 0 else s,
                        cfg.quant if n in names else None,
                        wrange,
                        name=f"{block.name}.{n}",
                    )
                    for n in g.layers
                }
                with swapped(block.module, trials):
                    err = output_error(search, reference)
                if err < best_err:
                    best_r, best_err, best_s = r, err, s
            chosen[f"{block.name}.{'/'.join(g.layers)}"] = best_r
            if best_r == 0.0 or best_s is None:
                continue
            how, _, ren = scale_inputs(
                block.module, flow, g, best_s, verify=unchanged, fold=cfg.fold
            )
            renamed.update(ren)
            log.debug("awq: %s %s: r=%.2f (%s)", block.name, g.layers, best_r, how)
        if not cfg.quantize:
            return
        final = [renamed.get(n, n) for n in names]
        xtx = {}
        if cfg.clip:
            clip_names = [n for n in final if layer_kind(block.module.get_submodule(n)) is not None]
            xtx = block.collect({n: ["xtx"] for n in clip_names})
        built: list[QuantLayer] = []
        for n in final:
            module = block.module.get_submodule(n)
            layer = build_layer(module, f"{block.name}.{n}", cfg.quant, reduce)
            wq = layer.weight_quant
            if cfg.clip and wq is not None and wq.granularity != "tensor" and n in xtx:
                geo = layer_kind(module).geometry(module)  # type: ignore[union-attr]
                if geo.groups == 1:
                    w2d = layer.weight.detach().reshape(geo.out_features, geo.n)
                    s, z = clip_search(
                        w2d,
                        xtx[n]["xtx"][0],
                        wq.quant_min,
                        wq.quant_max,
                        symmetric=wq.spec.symmetric,
                        group_size=wq.group_size if wq.granularity == "group" else None,
                        ratios=cfg.clip_ratios,
                    )
                    set_quantized_weight(layer, w2d, s, z)
            set_module(block.module, n, layer)
            built.append(layer)
        calibrate_inputs(block, built)

    return transform


def awq(
    model: nn.Module,
    config: AWQConfig | QuantConfig | dict[str, Any] | None = None,
    calib_data: Any = None,
    *,
    blocks: str | Sequence[str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> nn.Module:
    """Quantize the layers of a model's repeated blocks with AWQ's activation-aware scales.

    Block by block (:class:`~torchcompress.calibration.SequentialRunner`), for each group of
    Linear-like layers reading one tensor (query/key/value, an MLP's first layer, ...): the scale
    ``s = mean|x|^r`` whose quantized block outputs are closest to the float block's, over
    ``r = 0, 1/grid, ...`` (``r = 0``: unscaled). The scale is folded into the op producing the
    tensor where one can absorb it (a LayerNorm/RMSNorm, a Linear, a gated product) and nothing
    else reads it; otherwise an explicit :class:`~torchcompress.quant.scaling.InputScaled` keeps it.
    Then the layers are quantized (with the clipping search when ``clip=True``) into the fake-quant
    layers :func:`torchcompress.quantize` makes. Convolutions are quantized unscaled; layers outside
    the blocks stay in float.

    Args:
        model: the model; modified in place (restored if anything fails).
        config: an :class:`AWQConfig`, the target :class:`~torchcompress.quant.QuantConfig`, or a
            dict of either.
        calib_data: calibration batches (any iterable of batches).
        blocks: the blocks (default: found, see :func:`~torchcompress.calibration.find_blocks`).
        include: glob patterns of layers to quantize (default: every layer inside the blocks).
        exclude: glob patterns of layers to keep in float.
        max_batches: use at most this many calibration batches.
        progress: a progress bar over the blocks (default: when interactive).
        **options: fields of :class:`AWQConfig` (``grid=10``, ``clip=False``, ...).

    Returns:
        ``model``, quantized (fake-quant), with the scales chosen recorded in its history.

    Raises:
        ConfigError: a bad option or a format AWQ does not handle (16-bit or no weights), a group
            size that does not divide a layer's inputs.
        SelectionError: no repeated blocks, block names that match nothing, or layers selected
            outside the blocks.
        DataError: no ``calib_data``, or batches that do not fit the model.
        CalibrationError: data that never reaches a layer.

    Example:
        >>> import torch, torchcompress as tc
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.norm, self.fc = nn.LayerNorm(16), nn.Linear(16, 16)
        ...     def forward(self, x):
        ...         return x + self.fc(self.norm(x))
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.blocks = nn.ModuleList(Block() for _ in range(2))
        ...     def forward(self, x):
        ...         for b in self.blocks:
        ...             x = b(x)
        ...         return x
        >>> model = tc.awq(Net(), tc.QuantConfig(weight=tc.IntSpec(3), activation=None),
        ...                [torch.randn(32, 16) for _ in range(2)], grid=4)
        >>> type(model.blocks[0].fc).__name__
        'QuantLinear'
    """
    cfg = parse_config(config, AWQConfig, options, "awq")
    if calib_data is None:
        raise DataError(
            "awq() ranks its scales on calib_data, but calib_data is None. Pass representative "
            "inputs (a DataLoader, a list of batches or of tokenizer outputs)."
        )
    runner = SequentialRunner(
        model, calib_data, blocks=blocks, max_batches=max_batches, progress=progress, desc="awq"
    )
    targets = block_targets(model, runner.blocks, include, exclude, "awq")
    device, _ = module_device_dtype(model)
    reduce = resolve_reduce_range(cfg.quant.reduce_range, device)
    chosen: dict[str, float] = {}
    with snapshot_modules(model):
        runner.run(_transform(targets, cfg, reduce, chosen))
    io.add_history(
        model,
        "awq",
        cfg.to_dict(),
        blocks=[n for n, _ in runner.blocks],
        include=include if include is None or isinstance(include, str) else list(include),
        exclude=exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        ratios=chosen,
    )
    return model
