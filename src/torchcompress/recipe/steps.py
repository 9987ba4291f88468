"""Recipe steps: a registry of step kinds, each a typed config with a runner.

A step is a frozen dataclass deriving from :class:`Step` (and so from
:class:`~torchcompress.config.Config`): its fields are the keyword arguments of the verb it calls,
with the verb's own typed config in the field named by ``config_field`` (``QuantConfig`` for
``quantize``, ``PruneConfig`` for ``prune``, ...). A recipe step and a Python call are one-to-one::

    - quantize: {config: {observer: percentile}, exclude: [fc]}
    tc.quantize(model, tc.QuantConfig(observer="percentile"), calib_data, exclude=["fc"])

The fields of the verb's config may also be written directly in the step, when no step field has
the same name (``- prune: {sparsity: 0.5}``).

Add a step kind: subclass :class:`Step`, set ``kind`` (and ``config_field`` if it wraps a config),
implement :meth:`Step.run` (and :meth:`Step.describe`), decorate with :func:`register_step`; declare
its effect on the model's forms in :mod:`torchcompress.forms` if it compresses (a verb of its table;
a step that is not one declares its own rule in :mod:`~torchcompress.recipe.orders`).

Example:
    >>> from torchcompress.recipe.steps import STEPS
    >>> "quantize" in STEPS and "finetune" in STEPS
    True
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..batches import Batch
from ..config import Config
from ..errors import ConfigError, did_you_mean
from ..registry import Registry
from .schema import Where, field_names, parse_config, plain
from .specs import DataBundle

__all__ = [
    "PLANNED",
    "STEPS",
    "CheckEnv",
    "Patterns",
    "Step",
    "StepContext",
    "register_step",
]

log = logging.getLogger(__name__)

S = TypeVar("S", bound="type[Step]")

#: ``include=``/``exclude=`` as a recipe spells them: one glob pattern or a list of them.
Patterns = str | tuple[str, ...] | None

#: Step kind -> the class that runs it.
STEPS: Registry[type[Step]] = Registry("step")

#: Step kinds of the planned surface whose verbs are not in this build yet: a recipe naming one
#: gets a clear error (and an ``optional`` variant is skipped) instead of "unknown step". The step
#: class joins :data:`STEPS` when the verb is merged, and its entry leaves this table.
PLANNED: dict[str, str] = {
    "prune_channels": "tc.prune_channels (structured channel pruning)",
}


@dataclass
class CheckEnv:
    """What a step's :meth:`Step.check` may look at: the recipe's folder and what came before."""

    base_dir: Path = field(default_factory=Path.cwd)
    has_model: bool = False
    has_data: bool = False
    labelled: bool | None = None
    has_example: bool = False


@dataclass
class StepContext:
    """What a running step sees and changes.

    Attributes:
        model: the model (``None`` before the model step).
        tokenizer: the tokenizer of a Hugging Face model, else ``None``.
        data: the data (``None`` before the data step).
        example: one example batch (batch size 1) for profiling and export.
        out_dir: where files the step writes go (a variant's own folder for variants).
        base_dir: the recipe's folder (relative input paths start there).
        device: the device the model runs on.
        progress: ``progress=`` for the verbs (bars on a terminal).
        reference: the model as it was before the first compressing step (the baseline).
        say: prints a progress line.
    """

    model: nn.Module | None = None
    tokenizer: Any = None
    data: DataBundle | None = None
    example: Batch | None = None
    out_dir: Path = field(default_factory=Path.cwd)
    base_dir: Path = field(default_factory=Path.cwd)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool | None = None
    reference: nn.Module | None = None
    say: Callable[[str], None] = lambda _msg: None

    def need_model(self, kind: str) -> nn.Module:
        """The model, or a ConfigError saying that a model step must come first."""
        if self.model is None:
            raise ConfigError(f"{kind} needs a model: put a 'model' step first.")
        return self.model

    def need_data(self, kind: str) -> DataBundle:
        """The data, or a ConfigError saying that a data step must come first."""
        if self.data is None:
            raise ConfigError(f"{kind} needs data: put a 'data' step before it.")
        return self.data

    def calib(self) -> list[Any] | None:
        """The calibration batches (``None`` without data)."""
        return self.data.calib if self.data is not None else None

    def resolve_out(self, path: str) -> Path:
        """An output path: relative paths land in :attr:`out_dir`."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.out_dir / p


@dataclass(frozen=True)
class Step(Config):
    """Base of every recipe step (a typed config with a runner).

    Class attributes a step sets:
        kind: its name in recipes (``"quantize"``).
        verb: the Python call it mirrors (``"tc.quantize"``), for documentation.
        config_field: the field holding the verb's typed config, whose keys may be written flat.
        compresses: the baseline is snapshotted before the first step that compresses.
        needs: what must come before it: ``"model"``, ``"data"``, ``"labels"``, ``"example"``.
        reports: whether the step only measures or writes (left out of a variant's label).
    """

    kind: ClassVar[str] = ""
    verb: ClassVar[str] = ""
    config_field: ClassVar[str | None] = None
    compresses: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ("model",)
    reports: ClassVar[bool] = False

    # ---- reading and writing

    @classmethod
    def parse(cls, data: Any, where: Where) -> Step:
        """The step from its recipe spelling (a mapping of fields; ``None`` for all defaults).

        Raises:
            ConfigError: unknown keys, wrong types or values, with the place in the recipe.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            data = cls.from_shorthand(data, where)
        data = dict(data)
        cf = cls.config_field
        if cf is not None:
            own = set(field_names(cls))
            hint = cls._config_class()
            flat = {k: v for k, v in data.items() if k not in own}
            if flat:
                config_names = field_names(hint)
                for k in flat:
                    if k not in config_names:
                        names = [n for n in field_names(cls)] + config_names
                        raise (where / str(k)).error(
                            f"unknown key {k!r} for step {cls.kind!r} (its keys: "
                            f"{', '.join(field_names(cls))}; and the {hint.__name__} fields: "
                            f"{', '.join(config_names)}).{did_you_mean(str(k), names)}"
                        )
                if cf in data:
                    raise (where / str(next(iter(flat)))).error(
                        f"give the {hint.__name__} fields either inside {cf}: or directly in the "
                        "step, not both."
                    )
                data = {k: v for k, v in data.items() if k in own}
                data[cf] = flat
        else:
            names = field_names(cls)
            for k in data:
                if k not in names:
                    raise (where / str(k)).error(
                        f"unknown key {k!r} for step {cls.kind!r} (its keys: "
                        f"{', '.join(names) or 'none'}).{did_you_mean(str(k), names)}"
                    )
        return parse_config(cls, data, where)

    @classmethod
    def from_shorthand(cls, value: Any, where: Where) -> dict[str, Any]:
        """A non-mapping spelling of the step as a mapping (overridden by model and data)."""
        raise where.error(
            f"step {cls.kind!r} takes a mapping of keys (or nothing), got {type(value).__name__} "
            f"{value!r}."
        )

    @classmethod
    def _config_class(cls) -> type[Config]:
        import typing

        hint = typing.get_type_hints(cls)[cls.config_field]  # type: ignore[index]
        for a in (*typing.get_args(hint), hint):
            if isinstance(a, type) and issubclass(a, Config):
                return a
        raise TypeError(
            f"{cls.__name__}.{cls.config_field} is not a config field"
        )  # pragma: no cover

    def to_data(self) -> dict[str, Any]:
        """The recipe spelling: ``{kind: {fields that differ from the defaults}}``."""
        return {self.kind: plain(self)}

    # ---- checking and running

    def check(self, env: CheckEnv) -> None:
        """Checks that need more than the types (files, imports); raise ConfigError."""

    def run(self, ctx: StepContext) -> dict[str, Any]:
        """Run the step on ``ctx`` and return its figures (JSON-serialisable)."""
        raise NotImplementedError  # pragma: no cover

    def label(self) -> str:
        """A few words saying exactly what the step does, for the labels of variants."""
        return self.kind

    def describe(self) -> str:
        """A phrase saying exactly what the step does, for reports (default: :meth:`label`)."""
        return self.label()

    def config_dict(self) -> dict[str, Any]:
        """Every field with its value (defaults included), as plain data: for reports."""
        return plain(self, defaults=True)


def register_step(cls: S) -> S:
    """Class decorator: add a :class:`Step` subclass to :data:`STEPS` under its ``kind``."""
    if not (isinstance(cls, type) and issubclass(cls, Step) and cls.kind):
        raise ConfigError(f"{cls!r} is not a Step subclass with a kind.")
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"step {cls.kind!r}: {cls.__name__} must be a frozen dataclass.")
    STEPS.add(cls.kind, cls)
    PLANNED.pop(cls.kind, None)
    return cls
