"""GPTQ: post-training weight quantization with second-order error compensation.

GPTQ (Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023) quantizes a layer's weight matrix one input column
at a time and, after each column, moves the columns not yet quantized so that the layer's outputs on
calibration data change least (the Optimal Brain Surgeon update with the Hessian ``H = 2 X^T X``).
It works block by block over a transformer's layers: block ``k + 1`` is calibrated on the outputs of
the already-quantized block ``k``.

- :func:`gptq_matrix`: the maths on one matrix (tensor in, tensor out): 2-8 bits, per tensor, per
  channel or per group, symmetric or asymmetric, activation order, damping, lazy batch updates, dead
  inputs, kept zeros (a pruned layer stays exactly as sparse);
- :class:`GPTQConfig` and :func:`gptq`: the verb, on :class:`~torchcompress.calibration.SequentialRunner`.

The result is the fake-quant model :func:`torchcompress.quantize` makes (``QuantLinear`` /
``QuantConv*`` with their quantizers), so :func:`torchcompress.convert`, :func:`torchcompress.save`
/ :func:`torchcompress.load`, :func:`torchcompress.profile` and :func:`torchcompress.export_onnx`
work unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import io
from ..calibration import Block, SequentialRunner
from ..calibration.dataflow import analyze
from ..calibration.second_order import Column, damped_hessian, inverse_cholesky, obs_sweep
from ..errors import CalibrationError, ConfigError, DataError, check_range
from ..layers import layer_kind
from ..select import module_device_dtype, set_module, snapshot_modules
from . import functional as QF
from .blockwise import (
    W4,
    BlockwiseConfig,
    block_targets,
    build_layer,
    calibrate_inputs,
    ensure_weight_bits,
    parse_config,
    set_quantized_weight,
)
from .hardware import resolve_reduce_range
from .modules import QuantLayer
from .spec import QuantConfig

__all__ = ["GPTQConfig", "gptq", "gptq_matrix"]

log = logging.getLogger(__name__)

#: ``params(w2d) -> (scale, zero_point)`` of one range per row of ``w2d`` (a group of columns).
ParamsFn = Callable[[Tensor], tuple[Tensor, Tensor]]


def gptq_matrix(
    weight: Tensor,
    xtx: Tensor,
    params: ParamsFn,
    qmin: int,
    qmax: int,
    *,
    group_size: int | None = None,
    per_tensor: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    keep_zero: Tensor | None = None,
    name: str = "",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GPTQ on one weight matrix.

    Args:
        weight: ``(rows, n)``, the float weight (rows: outputs).
        xtx: ``(n, n)``, ``E[x x^T]`` of the layer's inputs.
        params: the range rule: ``params(w) -> (scale, zero_point)`` with one entry per row of
            ``w`` (for per-tensor ranges, one entry for all).
        qmin: smallest integer of the grid.
        qmax: largest integer.
        group_size: columns per range (``None``: one range per row, or per tensor, from the whole
            matrix). Without ``act_order`` a group's range is computed when the sweep reaches it,
            from the group's updated weights (as in the paper); with ``act_order`` every range is
            computed first from the original weights (GPTQ's static groups), so groups stay
            contiguous in the stored format.
        per_tensor: one range for the whole matrix.
        damp: damping, a fraction of the mean diagonal of ``H``.
        block_size: columns per lazy batch update.
        act_order: quantize columns in order of decreasing ``diag(H)`` (activation order).
        keep_zero: bool ``(rows, n)``: entries quantized to exactly zero whatever their value (the
            pruned weights of a masked layer); their error is compensated like any other.
        name: the layer's name, for messages.

    Returns:
        ``(W', scale, zero_point, loss)``: ``W'`` the dequantized weights (``weight``'s shape and
        dtype), the ranges (``(1,)``, ``(rows,)`` or ``(rows, n // group_size)``) and the per-row
        loss of the sweep.

    Raises:
        ConfigError: ``group_size`` does not divide ``n``.
        NumericalError: the Hessian cannot be factorised (raise the damping or add calibration
            samples).

    Example:
        >>> import torch
        >>> from torchcompress.quant import functional as QF
        >>> from torchcompress.quant.gptq import gptq_matrix
        >>> x, w = torch.randn(512, 16), torch.randn(8, 16)
        >>> def minmax(w):  # symmetric 4-bit, one range per row
        ...     return QF.choose_qparams(w.amin(1), w.amax(1), -8, 7, symmetric=True)
        >>> q, s, z, _ = gptq_matrix(w, x.T @ x / 512, minmax, -8, 7)
        >>> s0, z0 = minmax(w)
        >>> rtn = QF.fake_quantize(w, s0.unsqueeze(1), z0.unsqueeze(1), -8, 7)
        >>> err = lambda v: float(((x @ (w - v).T) ** 2).mean())
        >>> err(q) < err(rtn)  # GPTQ's outputs are closer to the float layer's
        True
    """
    rows, n = weight.shape
    if group_size is not None and (group_size < 1 or n % group_size):
        raise ConfigError(
            f"{name or 'GPTQ'}: group_size={group_size} does not divide the {n} inputs per output."
        )
    h, dead = damped_hessian(xtx.to(weight.device), damp, name=name)
    w = weight.detach().float().clone()
    w[:, dead] = 0
    keep = None if keep_zero is None else keep_zero.to(device=w.device, dtype=torch.bool)
    if keep is not None:
        w[keep] = 0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True)
        h = h[perm][:, perm]
    upper = inverse_cholesky(h, name=name, damp=damp).float()

    def per_row(p: Tensor) -> Tensor:
        return p.reshape(-1).expand(rows) if p.numel() == 1 else p.reshape(rows)

    groups = 1 if group_size is None else n // group_size
    scale = torch.ones(rows, groups, device=w.device)
    zero = torch.zeros(rows, groups, device=w.device)
    if group_size is None:
        s, z = params(w.reshape(1, -1) if per_tensor else w)
        scale[:, 0], zero[:, 0] = per_row(s).float(), per_row(z).float()
    elif act_order:  # static groups, from the original weights
        for g in range(groups):
            s, z = params(w[:, g * group_size : (g + 1) * group_size])
            scale[:, g], zero[:, g] = per_row(s).float(), per_row(z).float()
    order = perm if perm is not None else torch.arange(n, device=w.device)
    cols = order.tolist()

    def compress(col: Column) -> Tensor:
        j = cols[col.index]  # the column's original index
        g = 0 if group_size is None else j // group_size
        if group_size is not None and not act_order and j % group_size == 0:
            s, z = params(col.ahead(group_size))
            scale[:, g], zero[:, g] = per_row(s).float(), per_row(z).float()
        q = QF.fake_quantize(col.weight, scale[:, g], zero[:, g], qmin, qmax)
        if keep is not None:
            q = torch.where(keep[:, j], torch.zeros_like(q), q)
        return q

    q, loss = obs_sweep(w[:, order], upper, compress, block_size=block_size)
    if perm is not None:
        q = q[:, torch.argsort(perm)]
    if per_tensor:
        out_scale, out_zero = scale[:1, 0], zero[:1, 0]
    elif group_size is None:
        out_scale, out_zero = scale[:, 0], zero[:, 0]
    else:
        out_scale, out_zero = scale, zero
    return q.to(weight.dtype), out_scale, out_zero, loss


@dataclass(frozen=True)
class GPTQConfig(BlockwiseConfig):
    """GPTQ's options and the format it quantizes to (Frantar et al. 2023).

    Args:
        quant: the target format (default: 4-bit asymmetric weights, one range per output channel,
            float activations). Weights of 2 to 8 bits, per tensor, per channel or per group
            (``IntSpec(4, granularity="group", group_size=128)``), symmetric or not; with
            ``activation`` set, the layers also quantize their inputs (W4A8, W8A8), calibrated on the
            outputs of the already-quantized blocks.
        damp: damping added to the Hessian's diagonal, a fraction of its mean (0.01).
        block_size: columns per lazy batch update (128).
        act_order: quantize the columns with the largest ``diag(H)`` first (helps at 3 bits and
            below); with group-wise ranges the groups' ranges are then fixed up front.
        true_sequential: quantize a block's layers in the order the forward calls them (query/key/
            value together), recomputing each group's Hessian on the outputs of the layers already
            quantized; otherwise every layer of a block uses the float block's inputs.
        min_rows: the data must give each layer at least ``min_rows`` times as many input rows
            (tokens, or positions of a convolution) as it has inputs; fewer leave its Hessian
            singular, held up by damping alone. ``0`` disables the check.

    Example:
        >>> import torchcompress as tc
        >>> cfg = tc.GPTQConfig(tc.QuantConfig(weight=tc.IntSpec(3, granularity="group",
        ...     group_size=64), activation=None), act_order=True)
        >>> cfg.quant.weight.short(), cfg.damp
        ('int3 sym group 64', 0.01)
    """

    quant: QuantConfig = W4
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    true_sequential: bool = True
    min_rows: float = 1.0

    def validate(self) -> None:
        super().validate()
        ensure_weight_bits(self.quant, "GPTQ", "GPTQConfig")
        check_range("damp", self.damp, 0.0, None, owner="GPTQConfig")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise ConfigError(f"GPTQConfig.block_size must be an int, got {self.block_size!r}.")
        check_range("block_size", self.block_size, 1, None, owner="GPTQConfig")
        for f in ("act_order", "true_sequential"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(
                    f"GPTQConfig.{f} must be True or False, got {getattr(self, f)!r}."
                )
        check_range("min_rows", self.min_rows, 0.0, None, owner="GPTQConfig")


def _quantize_layer(
    block: Block, name: str, stats_rows: int, xtx: Tensor, cfg: GPTQConfig, reduce: str
) -> QuantLayer:
    module = block.module.get_submodule(name)
    full = f"{block.name}.{name}"
    kind = layer_kind(module)
    geo = kind.geometry(module)  # type: ignore[union-attr]
    if cfg.min_rows and stats_rows < cfg.min_rows * geo.n:
        raise CalibrationError(
            f"Layer {full!r} saw {stats_rows} input rows for its {geo.n} inputs: GPTQ's Hessian "
            f"2 X^T X needs at least {int(cfg.min_rows * geo.n)} (GPTQConfig.min_rows="
            f"{cfg.min_rows:g} per input). Add calibration samples (or longer ones), or lower "
            "min_rows to rely on the damping alone."
        )
    layer = build_layer(module, full, cfg.quant, reduce)
    wq = layer.weight_quant
    if wq is None:  # GPTQConfig.validate ensures quantized weights
        raise RuntimeError("torchcompress internal error (please report): no weight quantizer")
    effective = kind.to_canonical(module, module.weight).detach()  # type: ignore[union-attr]
    w2d = effective.reshape(geo.out_features, geo.n).float()
    # a masked (pruned) layer: its zeros stay exactly zero
    keep_zero = (w2d == 0) if parametrize.is_parametrized(module, "weight") else None
    granular = wq.granularity

    def params(w: Tensor) -> tuple[Tensor, Tensor]:
        obs = wq.make_observer()
        obs.observe(w.reshape(1, -1) if granular == "tensor" else w)
        return obs.qparams()

    out = torch.empty_like(w2d)
    scales, zeros = [], []
    m = geo.m
    for g in range(geo.groups):
        rows = slice(g * m, (g + 1) * m)
        q, s, z, _ = gptq_matrix(
            w2d[rows],
            xtx[g],
            params,
            wq.quant_min,
            wq.quant_max,
            group_size=wq.group_size if granular == "group" else None,
            per_tensor=granular == "tensor",
            damp=cfg.damp,
            block_size=cfg.block_size,
            act_order=cfg.act_order,
            keep_zero=None if keep_zero is None else keep_zero[rows],
            name=repr(full),
        )
        out[rows] = q
        scales.append(s)
        zeros.append(z)
    if granular == "tensor":
        if geo.groups > 1:  # one range for every convolution group
            raise ConfigError(
                f"Layer {full!r}: per-tensor weight ranges with GPTQ need groups=1 (it has "
                f"{geo.groups}); use granularity='channel'."
            )
        scale, zero = scales[0], zeros[0]
    else:
        scale, zero = torch.cat(scales), torch.cat(zeros)
    set_quantized_weight(layer, out, scale, zero)
    return layer


def _transform(
    targets: dict[str, list[str]], cfg: GPTQConfig, reduce: str
) -> Callable[[Block], None]:
    def transform(block: Block) -> None:
        names = targets.get(block.name, [])
        if not names:
            return
        flow = analyze(block.module, block.batches()[0], layers=names)
        never = [n for n in names if n not in flow.order]
        if never:
            raise CalibrationError(
                f"GPTQ: {', '.join(repr(f'{block.name}.{n}') for n in never[:4])} never "
                f"ran when block {block.name!r} ran on its inputs; exclude "
                f"{'it' if len(never) == 1 else 'them'} (exclude=[...])."
            )
        if cfg.true_sequential:
            steps = [[n for n in g.layers if n in names] for g in flow.groups]
            seen: set[str] = set()
            steps = [[n for n in s if not (n in seen or seen.add(n))] for s in steps]  # type: ignore[func-returns-value]
            steps = [s for s in steps if s]
        else:
            steps = [list(flow.order)]
        built: list[QuantLayer] = []
        for step in steps:
            stats = block.collect({n: ["xtx"] for n in step})
            for n in step:
                layer = _quantize_layer(
                    block, n, stats[n].count("xtx"), stats[n]["xtx"], cfg, reduce
                )
                set_module(block.module, n, layer)
                built.append(layer)
        calibrate_inputs(block, built)
        log.debug("gptq: block %s: %d layers", block.name, len(built))

    return transform


def gptq(
    model: nn.Module,
    config: GPTQConfig | QuantConfig | dict[str, Any] | None = None,
    calib_data: Any = None,
    *,
    blocks: str | Sequence[str] | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> nn.Module:
    """Quantize the layers of a model's repeated blocks with GPTQ (Frantar et al. 2023).

    Block by block (:class:`~torchcompress.calibration.SequentialRunner`: BERT's
    ``encoder.layer``, GPT-2's ``h``, LLaMA's ``layers`` are found, or name them with ``blocks=``),
    each layer's ``E[x x^T]`` is gathered on the block's inputs (the outputs of the blocks already
    quantized), and its weight is quantized column by column with the error of each column
    compensated on the columns not yet quantized (:func:`gptq_matrix`). Layers end as the
    fake-quant layers :func:`torchcompress.quantize` makes, with GPTQ's weights and ranges. A masked
    (pruned) layer keeps its pruned weights exactly zero (the zeros are part of what is quantized,
    SparseGPT's sparse + quantized mode). Layers outside the blocks (a pooler, a language-model head)
    stay in float.

    Args:
        model: the model; modified in place (restored if anything fails).
        config: a :class:`GPTQConfig`, or the target :class:`~torchcompress.quant.QuantConfig`
            (default: 4-bit asymmetric per-channel weights, float activations), or a dict of either.
        calib_data: calibration batches (any iterable of batches: tensors, dicts of keyword
            arguments such as a tokenizer's output, ...). A few hundred thousand tokens are ample;
            every layer needs at least as many rows as inputs (``min_rows``).
        blocks: the blocks (see :func:`~torchcompress.calibration.find_blocks`; default: found).
        include: glob patterns of layers to quantize (default: every Linear, convolution and
            Hugging Face ``Conv1D`` inside the blocks).
        exclude: glob patterns of layers to keep in float.
        max_batches: use at most this many calibration batches.
        progress: a progress bar over the blocks (default: when interactive).
        **options: fields of :class:`GPTQConfig` (``damp=0.02``, ``act_order=True``, ...).

    Returns:
        ``model``, quantized (fake-quant).

    Raises:
        ConfigError: a bad option, a format GPTQ does not handle (16-bit or no weights), a group
            size that does not divide a layer's inputs.
        SelectionError: no repeated blocks, block names that match nothing, or layers selected
            outside the blocks.
        DataError: no ``calib_data``, or batches that do not fit the model.
        CalibrationError: too few calibration rows for a layer's Hessian, or a layer the data
            never reaches.
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
        >>> model = tc.gptq(Net(), tc.QuantConfig(weight=tc.IntSpec(4), activation=None),
        ...                 [torch.randn(64, 16) for _ in range(4)], damp=0.02)
        >>> type(model.blocks[1][0]).__name__, model.blocks[1][0].weight_quant.spec.short()
        ('QuantLinear', 'int4 sym per-tensor')
    """
    cfg = parse_config(config, GPTQConfig, options, "gptq")
    if calib_data is None:
        raise DataError(
            "gptq() computes each layer's Hessian from calib_data, but calib_data is None. Pass "
            "representative inputs (a DataLoader, a list of batches or of tokenizer outputs)."
        )
    runner = SequentialRunner(
        model, calib_data, blocks=blocks, max_batches=max_batches, progress=progress, desc="gptq"
    )
    targets = block_targets(model, runner.blocks, include, exclude, "gptq")
    device, _ = module_device_dtype(model)
    reduce = resolve_reduce_range(cfg.quant.reduce_range, device)
    with snapshot_modules(model):
        runner.run(_transform(targets, cfg, reduce))
    io.add_history(
        model,
        "gptq",
        cfg.to_dict(),
        blocks=[n for n, _ in runner.blocks],
        include=include if include is None or isinstance(include, str) else list(include),
        exclude=exclude if exclude is None or isinstance(exclude, str) else list(exclude),
    )
    return model
