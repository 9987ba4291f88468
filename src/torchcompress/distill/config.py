"""The distillation configs: :class:`DistillTerm` (one weighted loss) and :class:`DistillConfig`.

Both are typed :class:`~torchcompress.config.Config` dataclasses that round-trip through
``to_dict`` / ``from_dict`` (so through YAML recipes and the history :func:`torchcompress.save`
writes). In a dict, a term may be written as a loss name (``"kd"``), a ``[name, weight]`` pair or a
dict of fields.

Example:
    >>> from torchcompress.distill import DistillConfig
    >>> cfg = DistillConfig.from_dict(
    ...     {"terms": ["kd", {"loss": "hint", "weight": 100.0, "student": "layer2"}]}
    ... )
    >>> [(t.loss, t.weight, t.student) for t in cfg.terms]
    [('kd', 1.0, None), ('hint', 100.0, 'layer2')]
    >>> DistillConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import ConfigError, check_range
from .losses import DISTILL_LOSSES, build_loss

__all__ = ["DistillConfig", "DistillTerm", "as_term"]


def _names(value: Any, field_name: str) -> str | tuple[str, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(
        f"DistillTerm.{field_name} must be a module name, a list of module names, or None (the "
        f"logits), got {value!r}."
    )


@dataclass(frozen=True)
class DistillTerm(Config):
    """One term of a distillation mix: a registered loss, its weight, and what it compares.

    Attributes:
        loss: a name in :data:`~torchcompress.distill.DISTILL_LOSSES` (``"kd"``, ``"ce"``,
            ``"logit_mse"``, ``"hint"``, ``"at"``, ``"rkd"``, ``"dkd"``, or one you registered).
        weight: multiplies the term in the total (``>= 0``).
        student: the student module(s) whose output the term reads (qualified names as in
            ``named_modules()``); ``None``: the logits (``.logits`` of a Hugging Face output).
            Several names make one pair each; the term sums over the pairs.
        teacher: the teacher's module(s), paired with ``student`` in order; ``None``: the same
            names as ``student``.
        options: keyword arguments of the loss class (``{"temperature": 4.0, "alpha": 0.9}``).
        warmup_steps: the weight grows linearly from ``weight / warmup_steps`` to ``weight`` over
            this many training steps (DKD's warm-up); 0: none.

    Raises:
        ConfigError: an unknown loss (with the closest names) or option, a negative or infinite
            weight, a loss on features without module names, or student and teacher lists of
            different lengths.

    Example:
        >>> DistillTerm("at", weight=1000.0, student=["layer1", "layer2"]).pairs()
        [('layer1', 'layer1'), ('layer2', 'layer2')]
    """

    loss: str = "kd"
    weight: float = 1.0
    student: str | tuple[str, ...] | None = None
    teacher: str | tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    warmup_steps: int = 0

    def validate(self) -> None:
        """Check the fields (the loss is built once with its options to check them too)."""
        object.__setattr__(self, "student", _names(self.student, "student"))
        object.__setattr__(self, "teacher", _names(self.teacher, "teacher"))
        if not isinstance(self.loss, str):
            raise ConfigError(f"DistillTerm.loss must be a loss name, got {self.loss!r}.")
        cls = DISTILL_LOSSES.get(self.loss)  # unknown name: ConfigError with did-you-mean
        check_range("weight", self.weight, 0.0, owner="DistillTerm")
        if not math.isfinite(self.weight):
            raise ConfigError(f"DistillTerm.weight={self.weight!r} must be finite.")
        if (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or self.warmup_steps < 0
        ):
            raise ConfigError(
                f"DistillTerm.warmup_steps={self.warmup_steps!r} must be an int >= 0."
            )
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"DistillTerm.options must be a dict, got {self.options!r}.")
        object.__setattr__(self, "options", dict(self.options))
        if self.student is None and self.teacher is not None:
            raise ConfigError(
                f"The {self.loss!r} term names teacher={self.teacher!r} but no student module; "
                "name both (student=..., teacher=...)."
            )
        if self.student is None and cls.default_input is None:
            raise ConfigError(
                f"The {self.loss!r} loss compares intermediate features: name the modules with "
                f"student='...' (and teacher='...' when the names differ), e.g. "
                f"DistillTerm({self.loss!r}, student='layer2')."
            )
        s, t = self._as_tuple(self.student), self._as_tuple(self.teacher)
        if t is not None and s is not None and len(s) != len(t):
            raise ConfigError(
                f"The {self.loss!r} term pairs {len(s)} student module(s) with {len(t)} teacher "
                "module(s); give as many of each."
            )
        build_loss(self.loss, self.options)

    @staticmethod
    def _as_tuple(v: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
        return (v,) if isinstance(v, str) else v

    def pairs(self) -> list[tuple[str | None, str | None]]:
        """The (student module, teacher module) pairs; ``(None, None)`` for the logits."""
        s = self._as_tuple(self.student)
        if s is None:
            return [(None, None)]
        t = self._as_tuple(self.teacher) or s
        return list(zip(s, t))


def as_term(spec: Any) -> DistillTerm:
    """A :class:`DistillTerm` from a term, a loss name, a ``(name, weight)`` pair or a dict.

    Example:
        >>> as_term(("kd", 0.5)).weight
        0.5
    """
    if isinstance(spec, DistillTerm):
        return spec
    if isinstance(spec, str):
        return DistillTerm(spec)
    if isinstance(spec, Mapping):
        return DistillTerm.from_dict(dict(spec))
    if (
        isinstance(spec, list | tuple)
        and len(spec) == 2
        and isinstance(spec[0], str)
        and isinstance(spec[1], int | float)
        and not isinstance(spec[1], bool)
    ):
        return DistillTerm(spec[0], float(spec[1]))
    raise ConfigError(
        f"A distillation term must be a loss name ('kd'), a (name, weight) pair, a dict of "
        f"DistillTerm fields or a DistillTerm, got {spec!r}."
    )


@dataclass(frozen=True)
class DistillConfig(Config):
    """What :class:`~torchcompress.distill.Distiller` trains with: a weighted mix of terms.

    The total loss is ``sum(term.weight * term)``. Weights: each term has its own; inside the
    ``"kd"`` loss, ``alpha`` weighs the soft-target term and ``1 - alpha`` the hard labels (the
    one convention, see :mod:`torchcompress.distill`).

    Attributes:
        terms: the terms (in a dict: names, ``[name, weight]`` pairs or dicts of fields).
        cache: keep the teacher's outputs per sample, keyed by the sample's content, and reuse
            them in later epochs instead of running the teacher (for a fixed, non-augmented data
            set; see :class:`~torchcompress.distill.TeacherCache`).

    Raises:
        ConfigError: no terms, or a bad term.

    Example:
        >>> DistillConfig(terms=[("kd", 0.9), ("ce", 0.1)]).terms[1]
        DistillTerm(loss='ce', weight=0.1, student=None, teacher=None, options={}, warmup_steps=0)
    """

    terms: tuple[DistillTerm, ...] = (DistillTerm("kd"),)
    cache: bool = False

    def validate(self) -> None:
        """Normalise the terms and check that there is at least one."""
        terms = self.terms
        if isinstance(terms, str | DistillTerm | Mapping):
            terms = [terms]
        if not isinstance(terms, list | tuple):
            raise ConfigError(f"DistillConfig.terms must be a list of terms, got {terms!r}.")
        if len(terms) == 2 and isinstance(terms[0], str) and isinstance(terms[1], int | float):
            terms = [terms]  # one (name, weight) pair
        object.__setattr__(self, "terms", tuple(as_term(t) for t in terms))
        if not self.terms:
            raise ConfigError("DistillConfig.terms is empty; give at least one term, e.g. 'kd'.")
        if not isinstance(self.cache, bool):
            raise ConfigError(f"DistillConfig.cache must be True or False, got {self.cache!r}.")
