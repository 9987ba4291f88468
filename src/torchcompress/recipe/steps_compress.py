"""The steps that change the model: fuse, prune, finalize, quantize, prepare_qat, convert,
kmeans_quantize, factorize, merge_lowrank, finetune. Each calls the public verb of the same name
with its typed config and keyword arguments (calibration data from the data step).

Example:
    >>> import torchcompress as tc
    >>> from torchcompress.recipe.schema import Where
    >>> from torchcompress.recipe.steps_compress import PruneStep
    >>> step = PruneStep.parse({"sparsity": 0.7, "scope": "global"}, Where())
    >>> step.config == tc.PruneConfig(sparsity=0.7, scope="global")
    True
    >>> step.to_data(), step.label()
    ({'prune': {'config': {'sparsity': 0.7, 'scope': 'global'}}}, 'pruned 70% unstructured (magnitude, global)')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

import torchcompress as tc

from ..errors import check_range
from .schema import plain
from .steps import Patterns, Step, StepContext, register_step

__all__ = [
    "ConvertStep",
    "FactorizeStep",
    "FinalizeStep",
    "FinetuneStep",
    "FuseStep",
    "KMeansStep",
    "MergeLowRankStep",
    "PrepareQatStep",
    "PruneStep",
    "QuantizeStep",
]


def _bits(spec: Any) -> str:
    return "16" if spec is None else str(spec.bits)


def _spec_text(spec: Any) -> str:
    if spec is None:
        return "float"
    text = f"{'int' if spec.signed else 'uint'}{spec.bits} per-{spec.granularity}"
    if spec.group_size:
        text += f" of {spec.group_size}"
    return text if spec.symmetric else text + " asymmetric"


def _quant_text(config: Any) -> str:
    return f"weights {_spec_text(config.weight)}, activations {_spec_text(config.activation)}"


def _wa(config: Any) -> str:
    """``W8A8``, ``W4`` (weight-only), ``W8A8/token``; the observer when it is not the default."""
    a = ""
    if config.activation is not None:
        a = f"A{config.activation.bits}"
        if config.activation.granularity != "tensor":
            a += f"/{config.activation.granularity}"
    text = f"W{config.weight.bits if config.weight is not None else 'fp'}{a}"
    default = type(config)().observer
    return text if config.observer == default else f"{text} {_observer_text(config.observer)}"


def _observer_text(spec: Any) -> str:
    """``percentile``, or ``percentile(percentile=99.9)`` when its options are not the defaults."""
    spelt = plain(spec)
    if not isinstance(spelt, dict):
        return str(spelt)
    name = spelt.pop("name", type(spec).__name__)
    return f"{name}({', '.join(f'{k}={v}' for k, v in spelt.items())})"


@register_step
@dataclass(frozen=True)
class FuseStep(Step):
    """``tc.fuse(model, ...)``: fold each BatchNorm into the Conv/Linear before it.

    Args:
        pairs: explicit ``[conv, bn]`` name pairs (default: found by tracing).
        include: glob patterns of the layers to fold.
        exclude: glob patterns of layers to leave alone.
    """

    kind = "fuse"
    verb = "tc.fuse"
    compresses = True

    pairs: tuple[tuple[str, str], ...] | None = None
    include: Patterns = None
    exclude: Patterns = None

    def run(self, ctx: StepContext) -> dict[str, Any]:
        tc.fuse(
            ctx.need_model(self.kind), pairs=self.pairs, include=self.include, exclude=self.exclude
        )
        return {}

    def label(self) -> str:
        return "BN folded"

    def describe(self) -> str:
        return "BatchNorm folded into the preceding layers (tc.fuse)"


@register_step
@dataclass(frozen=True)
class PruneStep(Step):
    """``tc.prune(model, config, data, ...)``: masks on the weights (calibration batches as data).

    Args:
        config: the :class:`~torchcompress.PruneConfig`.
        include: glob patterns of the layers to prune.
        exclude: glob patterns of layers to leave dense.
        overrides: per-layer :class:`~torchcompress.PruneConfig` fields (``{"fc": {"sparsity": 0.3}}``).
    """

    kind = "prune"
    verb = "tc.prune"
    config_field = "config"
    compresses = True

    config: tc.PruneConfig = field(default_factory=tc.PruneConfig)
    include: Patterns = None
    exclude: Patterns = None
    overrides: dict[str, dict[str, Any]] | None = None

    def run(self, ctx: StepContext) -> dict[str, Any]:
        model = ctx.need_model(self.kind)
        tc.prune(
            model,
            self.config,
            ctx.calib(),
            include=self.include,
            exclude=self.exclude,
            overrides=self.overrides,
            progress=ctx.progress,
        )
        report = tc.sparsity_report(model).to_dict()
        return {k: report[k] for k in ("sparsity", "model_sparsity") if k in report}

    def label(self) -> str:
        c = self.config
        pattern = f"{c.n}:{c.m}" if c.pattern == "n:m" else c.pattern
        amount = f"{c.sparsity:.0%} " if c.sparsity is not None else ""
        return f"pruned {amount}{pattern} ({c.criterion}, {c.scope})"

    def describe(self) -> str:
        return self.label() + " (tc.prune: masks)"


@register_step
@dataclass(frozen=True)
class FinalizeStep(Step):
    """``tc.finalize(model, ...)``: bake the masks in (plain modules again).

    Args:
        include: glob patterns of the layers to finalize.
        exclude: glob patterns of layers to keep masked.
        semi_structured: 2:4 layers to torch's semi-structured sparse kernels (CUDA).
    """

    kind = "finalize"
    verb = "tc.finalize"

    include: Patterns = None
    exclude: Patterns = None
    semi_structured: bool = False

    def run(self, ctx: StepContext) -> dict[str, Any]:
        tc.finalize(
            ctx.need_model(self.kind),
            include=self.include,
            exclude=self.exclude,
            semi_structured=self.semi_structured,
        )
        return {}

    def label(self) -> str:
        return "finalized"

    def describe(self) -> str:
        return "masks baked into plain layers (tc.finalize)"


@register_step
@dataclass(frozen=True)
class QuantizeStep(Step):
    """``tc.quantize(model, config, calib_data, ...)``: post-training quantization (fake-quant).

    Args:
        config: the :class:`~torchcompress.QuantConfig`.
        include: glob patterns of the layers to quantize.
        exclude: glob patterns of layers to keep in float.
        max_batches: calibration batches to use at most.
        graph: ``"auto"``, ``"on"`` or ``"off"``: plan on the torch.fx graph.
        fold_bn: fold BatchNorm first (graph mode).
        fuse_residual: fuse residual adds into the integer convolutions.
    """

    kind = "quantize"
    verb = "tc.quantize"
    config_field = "config"
    compresses = True

    config: tc.QuantConfig = field(default_factory=tc.QuantConfig)
    include: Patterns = None
    exclude: Patterns = None
    max_batches: int | None = None
    graph: str = "auto"
    fold_bn: bool = True
    fuse_residual: bool = True

    def run(self, ctx: StepContext) -> dict[str, Any]:
        tc.quantize(
            ctx.need_model(self.kind),
            self.config,
            ctx.calib(),
            include=self.include,
            exclude=self.exclude,
            max_batches=self.max_batches,
            graph=self.graph,
            fold_bn=self.fold_bn,
            fuse_residual=self.fuse_residual,
            progress=ctx.progress,
        )
        return {}

    def label(self) -> str:
        return f"{_wa(self.config)} {self.config.mode} PTQ"

    def describe(self) -> str:
        c = self.config
        return f"{c.mode} post-training quantization, {_quant_text(c)}, {_observer_text(c.observer)} ranges"


@register_step
@dataclass(frozen=True)
class PrepareQatStep(Step):
    """``tc.prepare_qat(model, config, method, calib_data, ...)``: a model for
    quantization-aware training (train it with a ``finetune`` step, then ``convert``).

    Args:
        config: the :class:`~torchcompress.QuantConfig`.
        method: ``"ste"``, ``"lsq"`` or ``"pact"``.
        fold_bn: train conv+BN pairs folded.
        include: glob patterns of the layers to quantize.
        exclude: glob patterns of layers to keep in float.
        max_batches: calibration batches to use at most.
        graph: ``"auto"``, ``"on"`` or ``"off"``.
        fuse_residual: fuse residual adds.
        observer: the observer initialising the ranges.
        lsq_init: ``"observer"`` or ``"lsq"``.
        pact_alpha: PACT's initial clipping value.
        pact_fallback: what PACT does at non-ReLU activations.
    """

    kind = "prepare_qat"
    verb = "tc.prepare_qat"
    config_field = "config"
    compresses = True

    config: tc.QuantConfig = field(default_factory=tc.QuantConfig)
    method: str = "ste"
    fold_bn: bool = True
    include: Patterns = None
    exclude: Patterns = None
    max_batches: int | None = None
    graph: str = "auto"
    fuse_residual: bool = True
    observer: str | None = None
    lsq_init: str = "observer"
    pact_alpha: float = 10.0
    pact_fallback: str = "error"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        ctx.model = tc.prepare_qat(
            ctx.need_model(self.kind),
            self.config,
            method=self.method,
            calib_data=ctx.calib(),
            fold_bn=self.fold_bn,
            include=self.include,
            exclude=self.exclude,
            max_batches=self.max_batches,
            graph=self.graph,
            fuse_residual=self.fuse_residual,
            observer=self.observer,
            lsq_init=self.lsq_init,
            pact_alpha=self.pact_alpha,
            pact_fallback=self.pact_fallback,
            progress=ctx.progress,
        )
        return {}

    def label(self) -> str:
        return f"{_wa(self.config)} {self.method.upper()} QAT"

    def describe(self) -> str:
        return f"quantization-aware training ({self.method}), {_quant_text(self.config)}"


@register_step
@dataclass(frozen=True)
class ConvertStep(Step):
    """``tc.convert(model)``: integer weights stored as integers, integer kernels where they exist.

    Args:
        fuse_siblings: run sibling layers that read one input (attention's q/k/v) as one GEMM.
    """

    kind = "convert"
    verb = "tc.convert"
    compresses = True

    fuse_siblings: bool = True

    def run(self, ctx: StepContext) -> dict[str, Any]:
        ctx.model = tc.convert(ctx.need_model(self.kind), fuse_siblings=self.fuse_siblings)
        return {}

    def label(self) -> str:
        return "converted"

    def describe(self) -> str:
        return "converted to stored integers and integer kernels (tc.convert)"


@register_step
@dataclass(frozen=True)
class KMeansStep(Step):
    """``tc.kmeans_quantize(model, bits, ...)``: per-layer codebooks, indices packed.

    Args:
        bits: bits per index (codebook of ``2**bits`` values).
        weighted: weight the clustering by each input's ``E[x^2]`` from calibration data.
        include: glob patterns of the layers to quantize.
        exclude: glob patterns of layers to keep in float.
        init: ``"kmeans++"`` or ``"linear"``.
        iters: k-means iterations.
        seed: seed of the initialisation.
        max_batches: calibration batches to use at most.
    """

    kind = "kmeans_quantize"
    verb = "tc.kmeans_quantize"
    compresses = True

    bits: int = 4
    weighted: bool | str = False
    include: Patterns = None
    exclude: Patterns = None
    init: str = "kmeans++"
    iters: int = 100
    seed: int = 0
    max_batches: int | None = None

    def validate(self) -> None:
        check_range("bits", self.bits, 1, 8, owner="kmeans_quantize")
        check_range("iters", self.iters, 1, owner="kmeans_quantize")
        check_range("seed", self.seed, 0, owner="kmeans_quantize")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        tc.kmeans_quantize(
            ctx.need_model(self.kind),
            self.bits,
            weighted=self.weighted,
            calib_data=ctx.calib() if self.weighted else None,
            include=self.include,
            exclude=self.exclude,
            init=self.init,
            iters=self.iters,
            seed=self.seed,
            max_batches=self.max_batches,
            progress=ctx.progress,
        )
        return {}

    def label(self) -> str:
        return f"{self.bits}-bit k-means codebooks"


@register_step
@dataclass(frozen=True)
class FactorizeStep(Step):
    """``tc.factorize(model, config, calib_data, ...)``: low-rank layers where they are cheaper.

    Args:
        config: the :class:`~torchcompress.LowRankConfig`.
        include: glob patterns of the layers to factorize.
        exclude: glob patterns of layers to keep dense.
    """

    kind = "factorize"
    verb = "tc.factorize"
    config_field = "config"
    compresses = True

    config: tc.LowRankConfig = field(default_factory=tc.LowRankConfig)
    include: Patterns = None
    exclude: Patterns = None

    def run(self, ctx: StepContext) -> dict[str, Any]:
        tc.factorize(
            ctx.need_model(self.kind),
            self.config,
            ctx.calib(),
            include=self.include,
            exclude=self.exclude,
            progress=ctx.progress,
        )
        return {}

    def label(self) -> str:
        c = self.config
        if isinstance(c.rank, bool) or not isinstance(c.rank, int | float):
            rule = str(c.rank) + (f" {c.value:g}" if c.value is not None else "")
        elif isinstance(c.rank, int):
            rule = f"rank {c.rank}"
        else:
            rule = f"rank ratio {c.rank:g}"
        if c.budget is not None:
            rule += f", {c.budget:.0%} {c.budget_kind} budget"
        method = "" if c.method == "svd" else f" {c.method}"
        return f"low-rank{method} {rule}"

    def describe(self) -> str:
        return f"{self.label()} (tc.factorize, {self.config.method}; only where cheaper)"


@register_step
@dataclass(frozen=True)
class MergeLowRankStep(Step):
    """``tc.merge_lowrank(model, ...)``: factorized layers back to plain Conv/Linear layers.

    Args:
        include: glob patterns of the layers to merge.
        exclude: glob patterns of layers to keep factorized.
    """

    kind = "merge_lowrank"
    verb = "tc.merge_lowrank"

    include: Patterns = None
    exclude: Patterns = None

    def run(self, ctx: StepContext) -> dict[str, Any]:
        tc.merge_lowrank(ctx.need_model(self.kind), include=self.include, exclude=self.exclude)
        return {}

    def label(self) -> str:
        return "low-rank merged"


@register_step
@dataclass(frozen=True)
class FinetuneStep(Step):
    """``tc.finetune(model, train_data, ...)``: the training loop (cross-entropy by default).

    Args:
        epochs: passes over the training data (default 1, or as many as ``steps`` takes).
        steps: stop after this many optimizer steps.
        lr: the peak learning rate.
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"``.
        momentum: SGD momentum.
        weight_decay: weight decay.
        scheduler: ``"cosine"``, ``"linear"``, ``"step"``, ``"constant"`` or ``None``.
        warmup_steps: linear warmup steps.
        loss_fn: ``"model"`` for the loss a Hugging Face model computes itself.
        grad_clip: clip the gradient norm to this.
        log_every: log the loss every this many steps.
        eval: evaluate on the test split after every epoch.
    """

    kind = "finetune"
    verb = "tc.finetune"
    needs = ("model", "labels")

    epochs: int | None = None
    steps: int | None = None
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str | None = "cosine"
    warmup_steps: int = 0
    loss_fn: str | None = None
    grad_clip: float | None = None
    log_every: int | None = None
    eval: bool = False

    def validate(self) -> None:
        for name in ("epochs", "steps", "log_every"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 1, owner="finetune")
        check_range("lr", self.lr, 0, low_inclusive=False, owner="finetune")
        check_range("momentum", self.momentum, 0, 1, owner="finetune")
        check_range("weight_decay", self.weight_decay, 0, owner="finetune")
        check_range("warmup_steps", self.warmup_steps, 0, owner="finetune")
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0, low_inclusive=False, owner="finetune")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        return self.train(ctx, ctx.need_model(self.kind), ctx.need_data(self.kind))

    def train(self, ctx: StepContext, model: nn.Module, data: Any, **extra: Any) -> dict[str, Any]:
        """``tc.finetune`` with the step's fields (and ``extra`` arguments, e.g. a teacher); the
        trained model becomes ``ctx.model``; the last epoch's figures are returned."""
        trained: nn.Module = tc.finetune(
            model,
            data.train,
            epochs=self.epochs,
            steps=self.steps,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            scheduler=self.scheduler,
            warmup_steps=self.warmup_steps,
            loss_fn=self.loss_fn,
            grad_clip=self.grad_clip,
            eval_data=data.test if self.eval else None,
            device=ctx.device,
            log_every=self.log_every,
            progress=ctx.progress,
            **extra,
        )
        ctx.model = trained.eval()
        history = tc.train.training_history(trained)
        last = history[-1] if history else {}
        return {
            "epochs": len(history),
            **{k: v for k, v in last.items() if isinstance(v, int | float) and k != "epoch"},
        }

    def label(self) -> str:
        if self.steps is not None and self.epochs is None:
            return f"fine-tuned {self.steps} step{'s' * (self.steps != 1)}"
        text = f"fine-tuned {self.epochs or 1} ep"
        return text + (f" (<= {self.steps} steps)" if self.steps is not None else "")

    def describe(self) -> str:
        n = self.epochs or 1
        if self.epochs is None and self.steps:
            amount = f"{self.steps} step{'s' * (self.steps != 1)}"
        else:
            amount = f"{n} epoch{'s' * (n != 1)}"
        return (
            f"fine-tuned {amount}, {self.optimizer} lr {self.lr:g}, "
            f"{self.scheduler or 'constant'} schedule"
        )
