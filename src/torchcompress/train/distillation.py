"""What :func:`~torchcompress.finetune` needs from ``distill=``: the :class:`Distillation` protocol.

The trainer (floor 2) cannot import the distillation family (floor 3), so it accepts any object
with four methods, duck-typed; :class:`torchcompress.distill.Distiller` is the one the package
builds (``tc.distill.Distiller("kd")``, ``tc.distill.kd()``, ...). For each call of
``tc.finetune(model, data, teacher=teacher, distill=d)``:

1. ``d.attach(model, teacher, example)`` once, before the optimizer is built: ``model`` is the
   unwrapped student on its training device, ``example`` the first batch of ``data`` (a
   :class:`~torchcompress.batches.Batch` on that device, taken without disturbing the order or
   the random state the training then sees). The object captures what it needs, puts the
   teacher in eval mode, and builds any learned part (adapters) whose shapes it needs a forward
   to know.
2. ``d.parameters()``: learned parts that the optimizer trains with the model (e.g. FitNets
   adapters; may be empty). Under DDP they start from rank 0's values and their gradients are
   averaged across ranks like the model's.
3. ``d.loss(student_output, batch) -> (loss, components)`` at every step, after the student's
   forward on ``batch``: the scalar distillation loss (the object runs the teacher, or reads its
   cached outputs) and a dict of named, detached scalars, logged as ``"distill.<name>"`` beside the
   total ``"distill"``.
4. ``d.detach()`` at the end, also when training failed.

An optional ``to_dict()`` is recorded in the model's history.

Example:
    >>> import torch, torchcompress as tc
    >>> class MSEToTeacher:                  # a minimal distillation object
    ...     def attach(self, student, teacher, example):
    ...         self.teacher = teacher.eval()
    ...     def parameters(self):
    ...         return []
    ...     def loss(self, student_output, batch):
    ...         with torch.no_grad():
    ...             t = self.teacher(*batch.args)
    ...         loss = torch.nn.functional.mse_loss(student_output, t)
    ...         return loss, {"mse": loss.detach()}
    ...     def detach(self):
    ...         pass
    >>> isinstance(MSEToTeacher(), Distillation)
    True
    >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))] * 4
    >>> student, teacher = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    >>> _ = tc.finetune(student, data, teacher=teacher, distill=MSEToTeacher(), lr=0.1, progress=False)
    >>> sorted(tc.train.training_history(student)[-1])[:2]
    ['epoch', 'lr']
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from ..batches import Batch
from ..errors import ConfigError, DataError

__all__ = ["Distillation", "check_distillation", "peek_first"]

_METHODS = ("attach", "parameters", "loss", "detach")


@runtime_checkable
class Distillation(Protocol):
    """The ``distill=`` protocol of :func:`~torchcompress.finetune` (see the module docstring)."""

    def attach(self, student: torch.nn.Module, teacher: torch.nn.Module, example: Batch) -> Any:
        """Start: capture what is needed, freeze the teacher, build learned parts."""

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """Learned parts the optimizer trains with the student (may be empty)."""

    def loss(self, student_output: Any, batch: Batch) -> tuple[torch.Tensor, Mapping[str, Any]]:
        """The step's distillation loss and its named, detached components."""

    def detach(self) -> None:
        """Stop: remove whatever :meth:`attach` installed, restore the teacher's modes."""


def check_distillation(distill: Any) -> None:
    """Raise a :class:`ConfigError` unless ``distill`` has the protocol's four methods.

    Example:
        >>> try:
        ...     check_distillation("kd")
        ... except ValueError as e:
        ...     print(str(e)[:47])
        finetune: distill= takes a distillation object
    """
    missing = [m for m in _METHODS if not callable(getattr(distill, m, None))]
    if missing:
        hint = ""
        if isinstance(distill, str | list | tuple):
            hint = f" For losses by name, pass tc.distill.Distiller({distill!r})."
        raise ConfigError(
            "finetune: distill= takes a distillation object (attach, parameters, loss, detach: see "
            f"torchcompress.train.Distillation), such as tc.distill.kd() or "
            f"tc.distill.Distiller(['kd', ...]); got {type(distill).__name__} without "
            f"{', '.join(missing)}.{hint}"
        )


@contextlib.contextmanager
def _random_state_kept(data: Any) -> Iterator[None]:
    """Restore torch's CPU random state and the data's own generators after the block."""
    gens = []
    for obj in (data, getattr(data, "sampler", None), getattr(data, "batch_sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator):
            gens.append((g, g.get_state()))
    sampler = getattr(getattr(data, "batch_sampler", None), "sampler", None)
    g = getattr(sampler, "generator", None)
    if isinstance(g, torch.Generator):
        gens.append((g, g.get_state()))
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            for g, state in gens:
                g.set_state(state)


def peek_first(data: Any) -> tuple[Any, Any]:
    """``(first raw batch, data)``: the first batch of ``data`` and data to train on.

    A one-shot iterator gets its first batch put back in front; any other iterable is iterated once
    more with the random state (torch's and the loader's own generators) restored afterwards, so a
    shuffled DataLoader trains on the order it would have without the peek.

    Raises:
        DataError: ``data`` is empty.
    """
    if isinstance(data, torch.Tensor | Mapping | Batch):
        return data, data
    if isinstance(data, Iterator):
        first = next(data, None)
        if first is None:
            raise DataError("finetune: data yielded no batch; it must hold at least one batch.")
        return first, itertools.chain([first], data)
    with _random_state_kept(data):
        first = next(iter(data), None)
    if first is None:
        raise DataError("finetune: data yielded no batch; it must hold at least one batch.")
    return first, data
