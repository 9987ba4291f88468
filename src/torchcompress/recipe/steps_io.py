"""The steps around the compression: load a model and data, evaluate, profile, save, export.

Example:
    >>> from torchcompress.recipe.schema import Where
    >>> from torchcompress.recipe.steps_io import ModelStep
    >>> ModelStep.parse("torch.nn:Linear(8, 2)", Where())
    ModelStep(name=None, factory='torch.nn:Linear', hf=None, args=(8, 2), kwargs={}, weights=None, input_shape=None)
    >>> ModelStep(name="resnet20").to_data()
    {'model': 'resnet20'}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import torchcompress as tc

from ..errors import ConfigError, check_range
from . import specs
from .schema import Where, plain
from .steps import CheckEnv, Patterns, Step, StepContext, register_step

__all__ = ["DataStep", "EvaluateStep", "ExportStep", "ModelStep", "ProfileStep", "SaveStep"]


def _spec_kind(step: Any) -> tuple[str, str]:
    given = [
        (k, getattr(step, k, None))
        for k in ("name", "factory", "hf")
        if getattr(step, k, None) is not None
    ]
    if len(given) != 1:
        raise ConfigError(
            f"{step.kind}: give exactly one of name:, factory: or hf: (got "
            f"{', '.join(k for k, _ in given) or 'none'})."
        )
    return given[0]


def _spec_shorthand(value: Any, where: Where, *, hf: bool) -> dict[str, Any]:
    if not isinstance(value, str):
        raise where.error(
            f"expected a name ('resnet20', 'package.module:factory(...)'"
            f"{', hf:PATH' if hf else ''}) or a mapping, got {type(value).__name__} {value!r}."
        )
    if hf and value.startswith("hf:"):
        return {"hf": value[3:]}
    try:
        target, args, kwargs = specs.parse_call(value)
    except ConfigError as e:
        raise where.error(str(e)) from None
    out: dict[str, Any] = {"factory" if ":" in target else "name": target}
    if args:
        out["args"] = list(args)
    if kwargs:
        out["kwargs"] = kwargs
    return out


def _shorthand_of(step: Any) -> Any:
    """The one-string spelling of a model/data spec when it has nothing else."""
    data = plain(step)
    keys = set(data)
    if getattr(step, "hf", None) is not None and keys == {"hf"}:
        return f"hf:{step.hf}"
    if keys in ({"name"}, {"factory"}):
        return next(iter(data.values()))
    return data


@register_step
@dataclass(frozen=True)
class ModelStep(Step):
    """Load the model: ``tc.models.create(name, **kwargs)``, ``factory(*args, **kwargs)`` or a
    Hugging Face folder; then ``tc.load(weights, model)`` if ``weights`` is given.

    Spelled as a string (``resnet20``, ``pkg.mod:build(width=2)``, ``hf:PATH``) or a mapping.

    Args:
        name: a :mod:`torchcompress.models` name.
        factory: ``package.module:factory``.
        hf: a Hugging Face model folder (or a bundled name, see :mod:`~torchcompress.recipe.specs`).
        args: positional arguments of the factory.
        kwargs: keyword arguments of the builder.
        weights: a file written by ``tc.save`` (relative to the recipe's folder) to load.
        input_shape: shape of an example input (batch included) when no data step gives one.
    """

    kind = "model"
    verb = "tc.models.create / factory / transformers"
    needs = ()

    name: str | None = None
    factory: str | None = None
    hf: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None

    def validate(self) -> None:
        _spec_kind(self)
        if self.input_shape is not None and (
            not self.input_shape
            or any(
                isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in self.input_shape
            )
        ):
            raise ConfigError(
                f"model.input_shape must be positive integers, got {self.input_shape!r}."
            )

    @classmethod
    def from_shorthand(cls, value: Any, where: Where) -> dict[str, Any]:
        return _spec_shorthand(value, where, hf=True)

    def to_data(self) -> dict[str, Any]:
        return {self.kind: _shorthand_of(self)}

    def check(self, env: CheckEnv) -> None:
        kind, target = _spec_kind(self)
        specs.check_model(kind, target, tuple(self.args), dict(self.kwargs))
        if self.weights is not None:
            path = Path(self.weights).expanduser()
            path = path if path.is_absolute() else env.base_dir / path
            if not path.is_file():
                raise ConfigError(f"weights file {str(path)!r} does not exist.")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        kind, target = _spec_kind(self)
        loaded = specs.build_model(kind, target, tuple(self.args), dict(self.kwargs))
        model = loaded.model.to(ctx.device)
        if self.weights is not None:
            path = Path(self.weights).expanduser()
            model = tc.load(path if path.is_absolute() else ctx.base_dir / path, model)
        ctx.model, ctx.tokenizer = model.eval(), loaded.tokenizer
        if self.input_shape is not None and ctx.example is None:
            ctx.example = tc.batches.Batch(
                args=(torch.randn(*self.input_shape, device=ctx.device),)
            )
        return {
            "model": loaded.description or type(model).__name__,
            "class": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()),
        }

    def label(self) -> str:
        kind, target = _spec_kind(self)
        return f"hf:{target}" if kind == "hf" else target


@register_step
@dataclass(frozen=True)
class DataStep(Step):
    """The data: a registered data set (``digits``, ``mnist1d``, ``cifar10``, ``sentences``) or a
    ``package.module:factory``; the first ``calib_batches`` training batches calibrate.

    Args:
        name: a data set name (see :data:`~torchcompress.recipe.specs.DATASETS`).
        factory: ``package.module:factory`` returning ``(train, test)``, one loader, or a mapping.
        args: positional arguments.
        kwargs: keyword arguments (``image_size``, ``batch_size``, ...).
        calib_batches: how many training batches calibrate quantizers and data-driven criteria.
    """

    kind = "data"
    verb = "tc.data.* / factory"
    needs = ()

    name: str | None = None
    factory: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    calib_batches: int = 8

    def validate(self) -> None:
        _spec_kind(self)
        check_range("calib_batches", self.calib_batches, 1, owner="data")

    @classmethod
    def from_shorthand(cls, value: Any, where: Where) -> dict[str, Any]:
        return _spec_shorthand(value, where, hf=False)

    def to_data(self) -> dict[str, Any]:
        return {self.kind: _shorthand_of(self)}

    def labelled(self) -> bool | None:
        """Whether the batches carry labels (``None``: a factory, known only when built)."""
        kind, target = _spec_kind(self)
        return specs.check_data(kind, target, tuple(self.args), dict(self.kwargs))

    def check(self, env: CheckEnv) -> None:
        self.labelled()

    def run(self, ctx: StepContext) -> dict[str, Any]:
        kind, target = _spec_kind(self)
        bundle = specs.build_data(kind, target, tuple(self.args), dict(self.kwargs), ctx.tokenizer)
        if not bundle.calib:
            bundle.calib = []
            for b in bundle.train:
                bundle.calib.append(b)
                if len(bundle.calib) >= self.calib_batches:
                    break
        ctx.data = bundle
        ctx.example = specs.slice_batch(specs.first_batch(bundle.test), 1).to(ctx.device)
        return {
            "data": bundle.description,
            "calib_batches": len(bundle.calib),
            "labelled": bundle.labelled,
        }

    def label(self) -> str:
        return _spec_kind(self)[1]


@register_step
@dataclass(frozen=True)
class EvaluateStep(Step):
    """``tc.evaluate(model, test_data, ...)``: accuracy and loss on the test split.

    Args:
        max_batches: stop after this many batches.
        topk: the top-k accuracies to report (``[1, 5]``).
        loss_fn: ``"model"`` for the loss a Hugging Face model computes itself.
    """

    kind = "evaluate"
    verb = "tc.evaluate"
    needs = ("model", "labels")
    reports = True

    max_batches: int | None = None
    topk: tuple[int, ...] = (1,)
    loss_fn: str | None = None

    def validate(self) -> None:
        if self.max_batches is not None:
            check_range("max_batches", self.max_batches, 1, owner="evaluate")
        if not self.topk:
            raise ConfigError("evaluate.topk needs at least one k.")
        for k in self.topk:
            check_range("topk", k, 1, owner="evaluate")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        data = ctx.need_data(self.kind)
        res = tc.evaluate(
            ctx.need_model(self.kind),
            data.test,
            max_batches=self.max_batches,
            topk=self.topk,
            loss_fn=self.loss_fn,
            progress=ctx.progress,
        )
        return {k: v for k, v in res.items() if isinstance(v, int | float)}


@register_step
@dataclass(frozen=True)
class ProfileStep(Step):
    """``tc.profile(model, example)``: params, MACs, FLOPs and bytes, per layer and in total.

    Args:
        include: glob patterns of the layers listed.
        exclude: glob patterns of layers left out of the listing.
        depth: sum the rows into blocks at this depth of the module tree.
        batch_size: samples in the example batch (MACs scale with it).
    """

    kind = "profile"
    verb = "tc.profile"
    needs = ("model", "example")
    reports = True

    include: Patterns = None
    exclude: Patterns = None
    depth: int | None = None
    batch_size: int = 1

    def validate(self) -> None:
        check_range("batch_size", self.batch_size, 1, owner="profile")
        if self.depth is not None:
            check_range("depth", self.depth, 0, owner="profile")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        model = ctx.need_model(self.kind)
        if ctx.example is None:
            raise ConfigError("profile needs example inputs: add a data step or model.input_shape.")
        example = specs.batch_inputs(specs.repeat_batch(ctx.example, self.batch_size))
        prof = tc.profile(
            model, example, include=self.include, exclude=self.exclude, depth=self.depth
        )
        return {"totals": dict(prof.totals), "rows": [r.to_dict() for r in prof.rows]}


@register_step
@dataclass(frozen=True)
class SaveStep(Step):
    """``tc.save(model, path)``: safetensors plus the JSON description of what was compressed.

    Args:
        path: the file, relative to the output folder (a variant's own folder in variants).
    """

    kind = "save"
    verb = "tc.save"
    reports = True

    path: str = "model.safetensors"

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("save.path must not be empty.")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        path = ctx.resolve_out(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tc.save(ctx.need_model(self.kind), path)
        return {"path": str(path), "bytes": path.stat().st_size}


@register_step
@dataclass(frozen=True)
class ExportStep(Step):
    """``tc.export_onnx(model, example, path)``: a QDQ ONNX file onnxruntime runs.

    Args:
        format: the export format (``"onnx"``).
        path: the file, relative to the output folder.
        opset: the ONNX opset.
        dynamic_batch: a dynamic batch dimension.
    """

    kind = "export"
    verb = "tc.export_onnx"
    needs = ("model", "example")
    reports = True

    format: str = "onnx"
    path: str = "model.onnx"
    opset: int = 17
    dynamic_batch: bool = True

    def validate(self) -> None:
        tc.errors.check_choice("format", self.format, ("onnx",), owner="export")
        check_range("opset", self.opset, 7, owner="export")
        if not self.path:
            raise ConfigError("export.path must not be empty.")

    def run(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.example is None:
            raise ConfigError("export needs example inputs: add a data step or model.input_shape.")
        path = ctx.resolve_out(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        tc.export_onnx(
            ctx.need_model(self.kind),
            specs.batch_inputs(ctx.example),
            path,
            opset=self.opset,
            dynamic_batch=self.dynamic_batch,
        )
        return {
            "path": str(path),
            "bytes": path.stat().st_size,
            "export_s": time.perf_counter() - t0,
        }
