"""SmoothQuant: migrate activation outliers into the weights before W8A8 quantization.

SmoothQuant (Xiao, Lin, Seznec, Wu, Demouth & Han, "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models", ICML 2023) divides each input channel ``j``
of a group of layers reading one tensor by ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)`` and
multiplies the weights' column ``j`` by it: the float outputs do not change, while the per-tensor
activation range no longer has to cover a few outlier channels. The scale is folded into the op that
produced the tensor where one can absorb it and nothing else reads the tensor (a pre-norm
transformer's LayerNorm), else kept as an explicit per-channel scale
(:class:`~torchcompress.quant.scaling.InputScaled`: a post-norm BERT, whose LayerNorm output also
feeds the residual, and the input of its second FFN layer, after a GELU).

A single ``alpha`` does not suit every layer (on MiniLM the paper's 0.5 did worse than no smoothing
in one measurement, 0.8 better), so by default ``alpha`` is chosen per group from a grid, by the
error of the block's outputs with the group quantized in the target format, the unsmoothed layer
always among the candidates. :func:`smoothquant` only transforms the float model; quantize it with
:func:`torchcompress.quantize` afterwards (the same format as ``config.quant``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import io
from ..calibration import Block, SequentialRunner
from ..calibration.dataflow import analyze
from ..errors import ConfigError, DataError, check_range
from ..layers import layer_kind
from ..select import module_device_dtype, snapshot_modules
from .blockwise import (
    BlockwiseConfig,
    block_output,
    block_targets,
    parse_config,
    relative_error,
)
from .build import integer_ranges
from .hardware import resolve_reduce_range
from .scale_search import dynamic_activation, output_error, static_activation, trial_of
from .scaling import linear_like, scale_inputs, swapped
from .spec import QuantConfig

__all__ = ["SmoothQuantConfig", "smoothing_scale", "smoothquant"]

log = logging.getLogger(__name__)

#: Relative change of a block's float outputs the transform may cause (float rounding).
TOLERANCE = 1e-4


def smoothing_scale(x_absmax: Tensor, w_absmax: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` (1 where a channel is all zero).

    Example:
        >>> import torch
        >>> from torchcompress.quant.smoothquant import smoothing_scale
        >>> smoothing_scale(torch.tensor([16.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 2.0]), 0.5)
        tensor([4., 1., 1.])
    """
    x = x_absmax.double()
    w = w_absmax.double()
    s = x.pow(alpha) / w.clamp(min=1e-12).pow(1 - alpha)
    ok = (x > 0) & (w > 0) & torch.isfinite(s)
    return torch.where(ok, s.clamp(min=1e-5, max=1e5), torch.ones_like(s)).float()


@dataclass(frozen=True)
class SmoothQuantConfig(BlockwiseConfig):
    """SmoothQuant's options (Xiao et al. 2023).

    Args:
        alpha: the migration strength in ``[0, 1]``, or ``"auto"``: per group of layers, the
            candidate of ``alphas`` (or no smoothing) with the lowest block output error.
        alphas: the grid ``"auto"`` searches.
        quant: the format the search measures against, the one the model is quantized to
            afterwards (default: ``QuantConfig()``, int8 per-channel weights and static uint8
            activations). It must quantize activations.
        max_search_batches: rank candidates on at most this many of a block's calibration batches.
        fold: fold scales into the producing op where one can absorb them (``False``: always an
            explicit scale module).

    Example:
        >>> import torchcompress as tc
        >>> tc.SmoothQuantConfig(alpha=0.8).alpha
        0.8
    """

    alpha: float | str = "auto"
    alphas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)
    quant: QuantConfig = field(default_factory=QuantConfig)
    max_search_batches: int | None = None
    fold: bool = True

    def validate(self) -> None:
        super().validate()
        if self.quant.activation is None:
            raise ConfigError(
                "SmoothQuantConfig.quant quantizes no activations; SmoothQuant migrates activation "
                "outliers for W8A8. For weight-only quantization use tc.awq or tc.gptq."
            )
        if isinstance(self.alpha, str):
            if self.alpha != "auto":
                raise ConfigError(
                    f"SmoothQuantConfig.alpha={self.alpha!r} must be a number in [0, 1] or 'auto'."
                )
        else:
            check_range("alpha", self.alpha, 0.0, 1.0, owner="SmoothQuantConfig")
        if not self.alphas:
            raise ConfigError("SmoothQuantConfig.alphas needs at least one value.")
        for a in self.alphas:
            check_range("alphas", a, 0.0, 1.0, owner="SmoothQuantConfig")
        if self.max_search_batches is not None:
            check_range(
                "max_search_batches", self.max_search_batches, 1, None, owner="SmoothQuantConfig"
            )
        if not isinstance(self.fold, bool):
            raise ConfigError(f"SmoothQuantConfig.fold must be True or False, got {self.fold!r}.")


def _w_absmax(modules: list[nn.Module]) -> Tensor:
    cols = []
    for m in modules:
        kind = layer_kind(m)
        w = kind.to_canonical(m, m.weight).detach()  # type: ignore[union-attr, arg-type]
        cols.append(w.abs().amax(0).float())
    return torch.stack(cols).amax(0)


def _transform(
    targets: dict[str, list[str]], cfg: SmoothQuantConfig, reduce: str, chosen: dict[str, Any]
) -> Callable[[Block], None]:
    wrange, arange = integer_ranges(cfg.quant, reduce)
    aspec = cfg.quant.activation
    dynamic = cfg.quant.mode == "dynamic"

    def transform(block: Block) -> None:
        names = targets.get(block.name, [])
        if not names:
            return
        flow = analyze(block.module, block.batches()[0])
        groups = [
            g
            for g in flow.groups
            if any(n in names for n in g.layers)
            and all(linear_like(block.module.get_submodule(n)) for n in g.layers)
            and not any(n in flow.repeated for n in g.layers)
        ]
        if not groups:
            return
        search = Block(
            block.index, block.name, block.module, block.inputs[: cfg.max_search_batches]
        )
        with torch.no_grad():
            reference = [block_output(o).detach() for o in search.run()]
        first = Block(block.index, block.name, block.module, block.inputs[:1])

        def unchanged() -> bool:
            return relative_error(first.run(), reference[:1]) < TOLERANCE

        stats = block.collect(
            {g.layers[0]: ["input_channel_min", "input_channel_max"] for g in groups}
        )
        for g in groups:
            st = stats[g.layers[0]]
            lo, hi = st["input_channel_min"].float(), st["input_channel_max"].float()
            x_absmax = torch.maximum(lo.abs(), hi.abs())
            modules = [block.module.get_submodule(n) for n in g.layers]
            w_absmax = _w_absmax(modules)
            candidates: list[float | None] = (
                [None, *cfg.alphas] if cfg.alpha == "auto" else [float(cfg.alpha)]  # type: ignore[arg-type]
            )
            best: tuple[float, float | None, Tensor | None] = (float("inf"), None, None)
            for a in candidates:
                s = None if a is None else smoothing_scale(x_absmax, w_absmax, a)
                if len(candidates) == 1:
                    best = (0.0, a, s)
                    break
                inv = torch.ones_like(lo) if s is None else 1.0 / s
                act = (
                    dynamic_activation(aspec, arange)  # type: ignore[arg-type]
                    if dynamic
                    else static_activation(lo, hi, inv, aspec, arange)  # type: ignore[arg-type]
                )
                trials = {
                    n: trial_of(
                        m,
                        s,
                        cfg.quant if n in names else None,
                        wrange,
                        act if n in names else None,
                        name=f"{block.name}.{n}",
                    )
                    for n, m in zip(g.layers, modules)
                }
                with swapped(block.module, trials):
                    err = output_error(search, reference)
                if err < best[0]:
                    best = (err, a, s)
            key = f"{block.name}.{'/'.join(g.layers)}"
            _, alpha, scale = best
            if alpha is None or scale is None:
                chosen[key] = None
                continue
            how, producer, _ = scale_inputs(
                block.module, flow, g, scale, verify=unchanged, fold=cfg.fold
            )
            chosen[key] = alpha if how != "unchanged" else None
            log.debug("smoothquant: %s alpha=%s (%s %s)", key, alpha, how, producer or "")

    return transform


def smoothquant(
    model: nn.Module,
    calib_data: Any = None,
    alpha: float | str | None = None,
    *,
    config: SmoothQuantConfig | dict[str, Any] | None = None,
    blocks: str | Sequence[str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> nn.Module:
    """Smooth the inputs of a model's Linear layers for W8A8 (SmoothQuant, Xiao et al. 2023).

    Block by block (:class:`~torchcompress.calibration.SequentialRunner`), each group of Linear-like
    layers reading one tensor gets per-channel scales ``s = max|x|^alpha / max|W|^(1 - alpha)``:
    the weights' input columns are multiplied by ``s`` and the input divided by it, folded into the
    producing LayerNorm / RMSNorm / Linear where one can absorb it and nothing else reads the tensor,
    else an explicit :class:`~torchcompress.quant.scaling.InputScaled`. The float model's outputs do
    not change (checked on every block); quantize it afterwards with
    ``tc.quantize(model, config.quant, calib_data)``.

    Args:
        model: the float model; modified in place (restored if anything fails).
        calib_data: calibration batches (any iterable of batches).
        alpha: the migration strength, or ``"auto"`` (default): per group from ``alphas`` (or no
            smoothing), by the block output error with the group quantized in ``config.quant``.
        config: a :class:`SmoothQuantConfig` (or a dict of its fields).
        blocks: the blocks (default: found, see :func:`~torchcompress.calibration.find_blocks`).
        include: glob patterns of layers whose inputs to smooth (default: every Linear-like layer
            inside the blocks).
        exclude: glob patterns of layers to leave alone.
        max_batches: use at most this many calibration batches.
        progress: a progress bar over the blocks (default: when interactive).
        **options: fields of :class:`SmoothQuantConfig` (``alphas=(0.5, 0.8)``, ``quant=...``).

    Returns:
        ``model``, smoothed (still float); the alpha chosen for each group is in its history.

    Raises:
        ConfigError: a bad option, or a target format without activation quantization.
        SelectionError: no repeated blocks, or block names that match nothing.
        DataError: no ``calib_data``, or batches that do not fit the model.

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
        >>> model, x = Net(), torch.randn(8, 16)
        >>> before = model(x)
        >>> model = tc.smoothquant(model, [x], alpha=0.5)
        >>> torch.allclose(model(x), before, atol=1e-5)  # the float outputs do not change
        True
        >>> model = tc.quantize(model, tc.QuantConfig(), [x])  # then W8A8
    """
    if alpha is not None:
        options = {**options, "alpha": alpha}
    if config is not None and not isinstance(config, SmoothQuantConfig | dict):
        raise ConfigError(
            f"smoothquant(config=...) takes a SmoothQuantConfig, got {type(config).__name__}."
        )
    cfg = parse_config(config, SmoothQuantConfig, options, "smoothquant")
    if calib_data is None:
        raise DataError(
            "smoothquant() measures activation ranges on calib_data, but calib_data is None. Pass "
            "representative inputs (a DataLoader, a list of batches or of tokenizer outputs)."
        )
    runner = SequentialRunner(
        model,
        calib_data,
        blocks=blocks,
        max_batches=max_batches,
        progress=progress,
        desc="smoothquant",
    )
    targets = block_targets(model, runner.blocks, include, exclude, "smoothquant")
    device, _ = module_device_dtype(model)
    reduce = resolve_reduce_range(cfg.quant.reduce_range, device)
    chosen: dict[str, Any] = {}
    with snapshot_modules(model):
        runner.run(_transform(targets, cfg, reduce, chosen))
    io.add_history(
        model,
        "smoothquant",
        cfg.to_dict(),
        blocks=[n for n, _ in runner.blocks],
        include=include if include is None or isinstance(include, str) else list(include),
        exclude=exclude if exclude is None or isinstance(exclude, str) else list(exclude),
        alphas=chosen,
    )
    return model
