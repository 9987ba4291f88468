"""The distiller: a student trained against a frozen teacher with a weighted mix of losses.

:class:`Distiller` implements the protocol :func:`torchcompress.finetune` accepts as ``distill=``
(:class:`torchcompress.train.Distillation`): ``attach`` / ``parameters`` / ``loss`` / ``detach``.
It can also drive a loop of your own. :func:`kd` and :func:`dkd` build the common ones.

Example:
    >>> import copy, torch, torchcompress as tc
    >>> train, test = tc.data.digits(image_size=8, channels=1)
    >>> teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> teacher = tc.finetune(teacher, train, epochs=3, lr=0.1, progress=False).eval()
    >>> student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> student = tc.finetune(student, train, epochs=3, lr=0.1, progress=False,
    ...                       teacher=teacher, distill=tc.distill.kd(temperature=4.0, alpha=0.9))
    >>> tc.evaluate(student, test)["accuracy"] > 0.85
    True
"""

from __future__ import annotations

import contextlib
import logging
import typing
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..batches import Batch, as_batch, run_model
from ..errors import CompressionStateError, ConfigError, DataError, ShapeError
from ..tracing import OutputCapture, check_module_names
from ..train.distributed import unwrap
from ..train.environment import model_device
from ..train.losses import describe, extract_logits, is_causal_lm
from .cache import TeacherCache
from .config import DistillConfig, DistillTerm
from .losses import DistillLoss, build_loss

__all__ = ["Distiller", "dkd", "feature_tensor", "kd"]

log = logging.getLogger(__package__)  # "torchcompress.distill"

#: The key of the logits in a view of the outputs (not a module name: those hold no "<").
LOGITS = "<logits>"


def feature_tensor(output: Any, where: str) -> Tensor:
    """The tensor a module's output stands for: the tensor itself, the first tensor of a tuple or
    list, or of a Hugging Face output (``last_hidden_state``, else ``logits``, else its first).

    Raises:
        DataError: the output holds no tensor (``where`` names the module).

    Example:
        >>> import torch
        >>> feature_tensor((torch.zeros(2, 3), None), "block").shape
        torch.Size([2, 3])
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("last_hidden_state", "logits"):
            if isinstance(output.get(key), Tensor):
                return output[key]
        values: list[Any] = list(output.values())
    elif isinstance(output, list | tuple):
        values = list(output)
    else:
        values = []
    for v in values:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, list | tuple | Mapping):
            with contextlib.suppress(DataError):
                return feature_tensor(v, where)
    raise DataError(f"{where} returned {describe(output)}, which holds no tensor to distil.")


def _key(name: str | None) -> str:
    return LOGITS if name is None else name


class Distiller(nn.Module):
    """Train a student against a frozen teacher with any weighted mix of distillation losses.

    The total loss is ``sum(weight * term)`` over the terms; each term is a registered loss
    (:data:`~torchcompress.distill.DISTILL_LOSSES`) between the two models' logits or the outputs
    of named modules (:class:`DistillTerm`). The teacher runs in eval mode under ``no_grad`` and is
    never updated (a teacher in train mode is put in eval mode, a warning says so, and its modes
    come back on :meth:`detach`). Intermediate outputs are captured by
    :func:`torchcompress.tracing.capture_outputs` on both models; nothing is rewritten. Learned
    parts of the losses (FitNets adapters) are built by :meth:`attach` from an example batch and
    returned by :meth:`parameters` so the optimizer trains them with the student.

    With ``tc.finetune(student, data, teacher=teacher, distill=distiller)`` the loop does the
    rest (also under ``torchrun``: adapters start equal on every rank and their gradients are
    averaged). In a loop of your own::

        distiller.attach(student, teacher, example=first_batch)
        opt = torch.optim.SGD([*student.parameters(), *distiller.parameters()], lr=0.05)
        for batch in data:
            loss, parts = distiller.loss(student(batch[0]), batch)
            ...
        distiller.detach()

    Args:
        terms: a loss name (``"kd"``), a list of names, ``(name, weight)`` pairs, dicts or
            :class:`DistillTerm` s, or a :class:`DistillConfig`.
        cache: keep the teacher's outputs per sample, keyed by content (a fixed, non-augmented
            data set only), or a :class:`TeacherCache` to use.

    Attributes:
        config: the :class:`DistillConfig`.
        labels: one label per term, as in the components :meth:`loss` returns.
        steps: how many times :meth:`loss` ran (the warm-up of the terms counts these).

    Raises:
        ConfigError: an unknown loss name (with the closest names), a bad option or weight.

    Example:
        >>> import torch, torchcompress as tc
        >>> d = tc.distill.Distiller([("kd", 1.0), tc.distill.DistillTerm("hint", 10.0, "0")])
        >>> d.labels
        ['kd', 'hint']
        >>> student = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> teacher = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
        >>> batch = (torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
        >>> with d.attached(student, teacher, example=batch):
        ...     loss, parts = d.loss(student(batch[0]), batch)
        >>> sorted(parts), loss.requires_grad
        (['hint', 'kd'], True)
    """

    def __init__(self, terms: Any = "kd", *, cache: bool | TeacherCache = False) -> None:
        super().__init__()
        if isinstance(terms, DistillConfig):
            config = terms if cache is False else terms.replace(cache=True)
        elif isinstance(terms, Mapping) and "terms" in terms:
            config = DistillConfig.from_dict(dict(terms))
        else:
            config = DistillConfig(terms=terms, cache=cache is not False)
        self.config = config
        self.term_losses = nn.ModuleList(
            nn.ModuleList(build_loss(t.loss, t.options) for _ in t.pairs()) for t in config.terms
        )
        seen: dict[str, int] = {}
        for t in config.terms:
            seen[t.loss] = seen.get(t.loss, 0) + 1
        counts: dict[str, int] = {}
        self.labels: list[str] = []
        for t in config.terms:
            if seen[t.loss] == 1:
                self.labels.append(t.loss)
            else:
                counts[t.loss] = counts.get(t.loss, 0) + 1
                self.labels.append(f"{t.loss}.{counts[t.loss]}")
        self.cache: TeacherCache | None = (
            cache if isinstance(cache, TeacherCache) else (TeacherCache() if config.cache else None)
        )
        self.steps = 0
        self._models: list[nn.Module] = []  # [student, teacher] while attached (not submodules)
        self._captures: list[OutputCapture] = []
        self._modes: dict[nn.Module, bool] = {}
        self._cache_teacher: weakref.ref[nn.Module] | None = None
        self._teacher_device: torch.device | None = None
        self._s_names, self._t_names, self._s_logits, self._t_logits = self._names()

    # -- what the terms read ------------------------------------------------------------------
    def _pairs(self) -> Iterator[tuple[DistillTerm, DistillLoss, str | None, str | None, str]]:
        for term, losses, label in zip(self.config.terms, self.term_losses, self.labels):
            for loss, (s, t) in zip(losses, term.pairs()):
                yield term, loss, s, t, label  # type: ignore[misc]

    def _names(self) -> tuple[list[str], list[str], bool, bool]:
        """Student modules, teacher modules, whether the student's / teacher's logits are read."""
        s_names: dict[str, None] = {}
        t_names: dict[str, None] = {}
        s_logits = t_logits = False
        for _, loss, s, t, _ in self._pairs():
            if s is None:
                s_logits = True
            else:
                s_names[s] = None
            if loss.needs_teacher:
                if t is None:
                    t_logits = True
                else:
                    t_names[t] = None
        return list(s_names), list(t_names), s_logits, t_logits

    @property
    def needs_teacher(self) -> bool:
        """Whether any term reads the teacher."""
        return any(loss.needs_teacher for _, loss, *_ in self._pairs())

    @property
    def is_attached(self) -> bool:
        """Whether :meth:`attach` has been called (and not undone by :meth:`detach`)."""
        return bool(self._models)

    # -- the protocol -------------------------------------------------------------------------
    def attach(self, student: nn.Module, teacher: nn.Module, example: Any = None) -> Distiller:
        """Start distilling ``teacher`` into ``student``: check the names, capture the modules.

        Args:
            student: the model being trained (a DDP wrapper is looked through).
            teacher: the frozen teacher (put in eval mode, with a warning, if it is in train mode).
            example: a batch (any form :mod:`torchcompress.batches` accepts): both models run on
                it once in eval mode without gradients, to check every pair of outputs and build
                the learned adapters. Required when a term learns an adapter.

        Returns:
            ``self``.

        Raises:
            ConfigError: the teacher is the student or shares parameters with it.
            SelectionError: a module name that neither model has (with the closest names).
            ShapeError: a pair of outputs the loss cannot compare (naming the term and modules).
            CompressionStateError: already attached.
        """
        if self.is_attached:
            raise CompressionStateError(
                "This Distiller is already attached; call detach() before attaching it again."
            )
        for role, m in (("student", student), ("teacher", teacher)):
            if not isinstance(m, nn.Module):
                raise ConfigError(
                    f"Distiller.attach: {role} must be an nn.Module, got {describe(m)}."
                )
        student, teacher = unwrap(student), unwrap(teacher)
        if student is teacher:
            raise ConfigError(
                "The teacher is the student itself; distil from a frozen copy: "
                "teacher = copy.deepcopy(model) before compressing the model."
            )
        shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
        if shared:
            raise ConfigError(
                f"The teacher shares {len(shared)} parameter tensor(s) with the student, so training "
                "the student would change the teacher; pass teacher=copy.deepcopy(model)."
            )
        s_names, t_names = self._s_names, self._t_names
        check_module_names(student, s_names, what="student module")
        check_module_names(teacher, t_names, what="teacher module")
        causal = is_causal_lm(student)
        for _, loss, *_ in self._pairs():
            loss.causal = causal
        if self.cache is not None and (
            self._cache_teacher is None or self._cache_teacher() is not teacher
        ):
            self.cache.clear()  # outputs of another teacher
            self._cache_teacher = weakref.ref(teacher)
        self._modes = {m: m.training for m in teacher.modules()}
        if any(self._modes.values()):
            log.warning(
                "distill: the teacher %s was in train mode; it runs in eval mode while distilling "
                "(BatchNorm statistics and dropout frozen, as a frozen teacher must be) and its "
                "modes are restored afterwards",
                type(teacher).__name__,
            )
            teacher.eval()
        self._teacher_device = model_device(teacher)
        self._captures = [  # the latest output only: evaluation passes keep nothing alive
            OutputCapture(student, s_names, all_calls=False),
            OutputCapture(teacher, t_names, all_calls=False),
        ]
        self._models = [student, teacher]
        try:
            for c in self._captures:
                c.attach()
            if example is not None:
                self._probe(example if isinstance(example, Batch) else as_batch(example))
        except BaseException:
            self.detach()
            raise
        return self

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:  # type: ignore[override]
        """The learned parts of the losses (FitNets adapters), for the optimizer."""
        return super().parameters(recurse)

    def loss(self, student_output: Any, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The distillation loss of one step: ``(total, {label: unweighted term value})``.

        Call it after the student's forward on ``batch`` (its named modules' outputs are read
        from that forward); the teacher runs here (or its outputs come from the cache).

        Raises:
            CompressionStateError: not attached, or a learned adapter was built after the fact.
            DataError: missing logits, labels or module outputs (naming them).
            ShapeError: outputs a term cannot compare (naming the term and the modules).
        """
        if not self.is_attached:
            raise CompressionStateError(
                "Distiller.loss: attach(student, teacher) first (tc.finetune does it)."
            )
        if not isinstance(batch, Batch):
            batch = as_batch(batch)
        s_view = self._view(student_output, self._captures[0], "student", logits=self._s_logits)
        t_view = self._teacher_view(batch) if self.needs_teacher else {}
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for i, term in enumerate(self.config.terms):
            label, value = self.labels[i], None
            for loss, (s_name, t_name) in zip(self.term_losses[i], term.pairs()):
                s = s_view[_key(s_name)]
                t = t_view[_key(t_name)].to(s.device) if loss.needs_teacher else None
                with self._context(label, s_name, t_name):
                    if not loss.prepared:
                        self._prepare_late(loss, s, t, label)
                    v = loss(s, t, batch.target)
                value = v if value is None else value + v
            value = typing.cast(Tensor, value)  # every term has at least one pair
            parts[label] = value.detach()
            w = term.weight
            if term.warmup_steps:
                w *= min(1.0, (self.steps + 1) / term.warmup_steps)
            total = w * value if total is None else total + w * value
        self._captures[0].clear()
        self.steps += 1
        return typing.cast(Tensor, total), parts

    def detach(self) -> None:
        """Stop distilling: remove the captures, restore the teacher's modes (harmless twice)."""
        for c in self._captures:
            c.remove()
        self._captures = []
        for m, training in self._modes.items():
            m.training = training
        self._modes = {}
        self._models = []
        if self.cache is not None:
            log.info("distill: %r", self.cache)

    def forward(self, student_output: Any, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The same as :meth:`loss`."""
        return self.loss(student_output, batch)

    @contextlib.contextmanager
    def attached(
        self, student: nn.Module, teacher: nn.Module, example: Any = None
    ) -> Iterator[Distiller]:
        """:meth:`attach` on entering a ``with`` block, :meth:`detach` on leaving it."""
        self.attach(student, teacher, example)
        try:
            yield self
        finally:
            self.detach()

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict (what :func:`torchcompress.finetune` records in the history)."""
        return self.config.to_dict()

    def extra_repr(self) -> str:
        return ", ".join(
            f"{lab}×{t.weight:g}" for lab, t in zip(self.labels, self.config.terms)
        ) + (", cache" if self.cache is not None else "")

    # -- internals ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _context(self, label: str, s_name: str | None, t_name: str | None) -> Iterator[None]:
        try:
            yield
        except ShapeError as e:
            what = "the logits" if s_name is None else f"student {s_name!r} / teacher {t_name!r}"
            raise ShapeError(f"distill term {label!r} ({what}): {e}") from e

    def _view(
        self, output: Any, capture: OutputCapture, role: str, *, logits: bool
    ) -> dict[str, Tensor]:
        view: dict[str, Tensor] = {}
        if logits:
            got = extract_logits(output)
            if got is None:
                raise DataError(
                    f"The {role} returned {describe(output)}, which holds no logits (a tensor, a "
                    "tuple starting with one, or an object with .logits); name a module for each "
                    "term instead (DistillTerm(..., student='...'))."
                )
            view[LOGITS] = got
        missing = capture.missing()
        if missing:
            raise DataError(
                f"The {role} module(s) {', '.join(repr(m) for m in missing)} did not run in this "
                f"forward, so there is nothing to distil there; name modules the {role}'s forward "
                "calls (a model rewritten into a graph, as tc.prepare_qat does, calls its layers "
                "but no longer their containers: name a layer, e.g. 'block.2' for 'block')."
            )
        for name in capture.names:
            view[name] = feature_tensor(capture[name], f"The {role} module {name!r}")
        return view

    def _teacher_view(self, batch: Batch) -> dict[str, Tensor]:
        keys = None
        if self.cache is not None:
            keys = self.cache.keys(batch)
            got = self.cache.get(keys)
            if got is not None:
                return got
        teacher, capture = self._models[1], self._captures[1]
        capture.clear()
        with torch.no_grad():
            out = run_model(teacher, batch.to(self._teacher_device), what="data (teacher)")
            view = self._view(out, capture, "teacher", logits=self._t_logits)
        capture.clear()
        if keys is not None:
            self.cache.put(keys, view)  # type: ignore[union-attr]
        return view

    def _probe(self, batch: Batch) -> None:
        """Run both models once on ``batch`` (eval, no grad): check and prepare every pair."""
        student = self._models[0]
        modes = {m: m.training for m in student.modules()}
        try:
            student.eval()
            with torch.no_grad():
                out = run_model(student, batch.to(model_device(student)), what="example batch")
                s_view = self._view(out, self._captures[0], "student", logits=self._s_logits)
                t_view = self._teacher_view_uncached(batch) if self.needs_teacher else {}
            for _, loss, s_name, t_name, label in self._pairs():
                if loss.uses_target() and batch.target is None:
                    raise DataError(
                        f"The distill term {label!r} needs labels, but the batches have no target; "
                        "pass (inputs, targets) batches or drop the term."
                    )
                s = s_view[_key(s_name)]
                t = t_view[_key(t_name)].to(s.device) if loss.needs_teacher else None
                with self._context(label, s_name, t_name):
                    loss.prepare(s, t)  # type: ignore[arg-type]
        finally:
            for m, training in modes.items():
                m.training = training
            for c in self._captures:
                c.clear()

    def _teacher_view_uncached(self, batch: Batch) -> dict[str, Tensor]:
        cache, self.cache = self.cache, None
        try:
            return self._teacher_view(batch)
        finally:
            self.cache = cache

    def _prepare_late(self, loss: DistillLoss, s: Tensor, t: Tensor | None, label: str) -> None:
        before = sum(1 for _ in loss.parameters())
        with torch.no_grad():
            loss.prepare(s.detach(), t)  # type: ignore[arg-type]
        if sum(1 for _ in loss.parameters()) > before:
            raise CompressionStateError(
                f"The distill term {label!r} needs a learned adapter (the student's and teacher's "
                "outputs differ in shape), which must exist before the optimizer is built; pass "
                "example=<a batch> to Distiller.attach (tc.finetune does)."
            )


def kd(temperature: float = 4.0, alpha: float = 0.9, *, cache: bool = False) -> Distiller:
    """Hinton KD: ``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE(labels)``.

    Hinton, Vinyals, Dean 2015, arXiv:1503.02531 (see :class:`~torchcompress.distill.KDLoss`).
    ``alpha`` weighs the distillation term; ``alpha=1`` distils without labels.

    Example:
        >>> kd(temperature=2.0, alpha=0.5).config.terms[0].options
        {'temperature': 2.0, 'alpha': 0.5}
    """
    return Distiller(
        [DistillTerm("kd", 1.0, options={"temperature": temperature, "alpha": alpha})], cache=cache
    )


def dkd(
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    ce_weight: float = 1.0,
    warmup_steps: int = 0,
    cache: bool = False,
) -> Distiller:
    """Decoupled KD as the paper trains it: ``ce_weight * CE + warmup * (alpha TCKD + beta NCKD)``.

    Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR (see
    :class:`~torchcompress.distill.DKDLoss`); the paper warms the DKD term up over 20 epochs
    (``warmup_steps`` = 20 epochs' steps).

    Example:
        >>> dkd(beta=2.0).labels
        ['ce', 'dkd']
    """
    terms = [
        DistillTerm("ce", ce_weight),
        DistillTerm(
            "dkd",
            1.0,
            options={"alpha": alpha, "beta": beta, "temperature": temperature},
            warmup_steps=warmup_steps,
        ),
    ]
    if ce_weight == 0:
        terms = terms[1:]
    return Distiller(terms, cache=cache)
