"""Data plumbing shared by every verb that reads data (``calib_data=``, ``data=``).

Any iterable of batches is accepted; a DataLoader is the usual case. A *batch* is one of:

- a tensor: the model's single positional input;
- a tuple or list ``(inputs, targets, ...)``: ``inputs`` is a tensor, a tuple/list of positional
  tensors, or a dict of keyword arguments; ``targets`` (optional) is what a loss compares against;
  further elements (sample indices, weights) are ignored;
- a dict of keyword arguments (Hugging Face style); ``"labels"`` / ``"label"`` is the target and is
  not passed to the model unless ``pass_labels=True``.

A bare tensor (or a bare dict) given as the whole data argument is one batch, not an iterable of
rows. Empty data, a batch of an unknown kind and a batch the model cannot run are clear
:class:`~torchcompress.errors.DataError`\\ s naming the batch.

Example:
    >>> import torch
    >>> from torchcompress.batches import iter_batches
    >>> b = next(iter(iter_batches([(torch.zeros(2, 3), torch.tensor([0, 1]))])))
    >>> b.args[0].shape, b.target.tolist()
    (torch.Size([2, 3]), [0, 1])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import DataError

__all__ = [
    "Batch",
    "as_batch",
    "batch_size",
    "count_batches",
    "describe_inputs",
    "example_batch",
    "iter_batches",
    "run_model",
]

_LABEL_KEYS = ("labels", "label")


@dataclass
class Batch:
    """One normalised batch: positional inputs, keyword inputs and an optional target."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: Any = None

    def to(self, device: torch.device | str | None, non_blocking: bool = False) -> Batch:
        """A copy with every tensor moved to ``device`` (``None``: unchanged)."""
        if device is None:
            return self
        return Batch(
            args=_move(self.args, device, non_blocking),
            kwargs=_move(self.kwargs, device, non_blocking),
            target=_move(self.target, device, non_blocking),
        )

    def __call__(self, model: nn.Module) -> Any:
        """Run ``model`` on this batch's inputs."""
        return model(*self.args, **self.kwargs)


def _move(obj: Any, device: torch.device | str, non_blocking: bool) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, tuple):
        return tuple(_move(o, device, non_blocking) for o in obj)
    if isinstance(obj, list):
        return [_move(o, device, non_blocking) for o in obj]
    if isinstance(obj, Mapping):
        return {k: _move(v, device, non_blocking) for k, v in obj.items()}
    return obj


def as_batch(obj: Any, *, index: int = 0, pass_labels: bool = False) -> Batch:
    """Normalise one batch (see the module docstring for the accepted forms).

    Raises:
        DataError: the batch is of a kind that cannot be fed to a model.
    """
    if isinstance(obj, Batch):
        return obj
    if isinstance(obj, torch.Tensor):
        return Batch(args=(obj,))
    if isinstance(obj, Mapping):
        kwargs = dict(obj)
        target = None
        for k in _LABEL_KEYS:
            if k in kwargs:
                target = kwargs[k] if pass_labels else kwargs.pop(k)
                break
        return Batch(kwargs=kwargs, target=target)
    if isinstance(obj, tuple | list):
        if len(obj) == 0:
            raise DataError(
                f"Batch {index} is an empty {type(obj).__name__}; expected (inputs, targets)."
            )
        inputs = obj[0]
        target = obj[1] if len(obj) > 1 else None
        if isinstance(inputs, torch.Tensor):
            return Batch(args=(inputs,), target=target)
        if isinstance(inputs, Mapping):
            return Batch(kwargs=dict(inputs), target=target)
        if isinstance(inputs, tuple | list) and all(isinstance(t, torch.Tensor) for t in inputs):
            return Batch(args=tuple(inputs), target=target)
        raise DataError(
            f"Batch {index}: the first element of the {type(obj).__name__} should be the model input "
            f"(a tensor, a tuple of tensors or a dict of keyword arguments), got {type(inputs).__name__}."
        )
    raise DataError(
        f"Batch {index} is a {type(obj).__name__}; a batch must be a tensor, an (inputs, targets) "
        "tuple/list or a dict of keyword arguments."
    )


def iter_batches(
    data: Any,
    *,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    pass_labels: bool = False,
    what: str = "data",
) -> Iterator[Batch]:
    """Iterate over ``data`` as normalised :class:`Batch` es.

    Args:
        data: a tensor or dict (one batch), or any iterable of batches.
        max_batches: stop after this many batches.
        device: move each batch there.
        pass_labels: keep ``"labels"`` in the keyword inputs of dict batches.
        what: the argument's name, used in error messages (``"calib_data"``, ...).

    Raises:
        DataError: ``data`` is ``None``, not iterable, or yields no batch.
    """
    if data is None:
        raise DataError(f"{what} is None; pass a DataLoader, a tensor or an iterable of batches.")
    if isinstance(data, torch.Tensor | Mapping | Batch):
        source: Iterable[Any] = [data]
    else:
        try:
            source = iter(data)
        except TypeError:
            raise DataError(
                f"{what} must be a tensor, a dict or an iterable of batches, got {type(data).__name__}."
            ) from None
    if max_batches is not None:
        source = itertools.islice(source, max_batches)
    n = 0
    for i, raw in enumerate(source):
        n += 1
        yield as_batch(raw, index=i, pass_labels=pass_labels).to(device)
    if n == 0:
        raise DataError(f"{what} yielded no batch; it must hold at least one batch.")


def count_batches(data: Any) -> int | None:
    """``len(data)`` in batches where it is known cheaply, else ``None``."""
    if isinstance(data, torch.Tensor | Mapping | Batch):
        return 1
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def batch_size(batch: Batch) -> int:
    """The leading dimension of the batch's first tensor input (1 if there is none)."""
    for v in [*batch.args, *batch.kwargs.values()]:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return 1


def run_model(model: nn.Module, batch: Batch, *, index: int = 0, what: str = "data") -> Any:
    """Run ``model`` on ``batch``; a failure becomes a :class:`DataError` naming the batch.

    Errors raised by torchcompress itself (e.g. a NaN check) pass through unchanged.
    """
    from .errors import TorchCompressError

    try:
        return batch(model)
    except TorchCompressError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        shapes = [
            tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__ for a in batch.args
        ]
        kw = {
            k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            for k, v in batch.kwargs.items()
        }
        raise DataError(
            f"Batch {index} of {what} does not fit {type(model).__name__} "
            f"(inputs {shapes}{', ' + str(kw) if kw else ''}): {e}"
        ) from e


def _floating_dtype(model: nn.Module) -> torch.dtype | None:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _single_device(model: nn.Module) -> torch.device | None:
    devices = {t.device for t in [*model.parameters(), *model.buffers()]}
    return devices.pop() if len(devices) == 1 else None


def _convert(obj: Any, device: torch.device | None, dtype: torch.dtype | None) -> Any:
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point() and obj.dtype != dtype:
            obj = obj.to(dtype)
        return obj.to(device) if device is not None else obj
    if isinstance(obj, tuple):
        return tuple(_convert(o, device, dtype) for o in obj)
    if isinstance(obj, list):
        return [_convert(o, device, dtype) for o in obj]
    if isinstance(obj, Mapping):
        return {k: _convert(v, device, dtype) for k, v in obj.items()}
    return obj


def example_batch(model: nn.Module, example_inputs: Any) -> Batch:
    """Normalise ``example_inputs`` to a :class:`Batch` on the model's device, in its dtype.

    Accepted: a tensor (the single positional input), a tuple of positional inputs, a dict of keyword
    inputs (Hugging Face style), a :class:`Batch`, or a list such as a DataLoader batch
    ``[inputs, targets]`` (read as by :func:`as_batch`). Floating-point tensors are cast to the
    model's floating dtype when the model has exactly one, and every tensor is moved to the model's
    device when all its tensors are on one device.

    Raises:
        DataError: ``example_inputs`` is of a kind that cannot be fed to a model.

    Example:
        >>> import torch
        >>> b = example_batch(torch.nn.Linear(2, 2).double(), (torch.zeros(1, 2),))
        >>> b.args[0].dtype
        torch.float64
    """
    if isinstance(example_inputs, tuple) and not isinstance(example_inputs, Batch):
        batch = Batch(args=tuple(example_inputs))
    else:
        batch = as_batch(example_inputs)
    device, dtype = _single_device(model), _floating_dtype(model)
    return Batch(
        args=_convert(batch.args, device, dtype),
        kwargs=_convert(batch.kwargs, device, dtype),
        target=batch.target,
    )


def describe_inputs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Shapes of call inputs, for messages: ``(1, 3, 32, 32), mask=(1, 8)``.

    Example:
        >>> import torch
        >>> describe_inputs((torch.zeros(1, 3),), {"mask": torch.ones(1, 8), "flag": True})
        '(1, 3), mask=(1, 8), flag=bool'
    """

    def one(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return str(tuple(v.shape))
        if isinstance(v, tuple | list) and v and all(isinstance(t, torch.Tensor) for t in v):
            return "[" + ", ".join(str(tuple(t.shape)) for t in v) + "]"
        return type(v).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts) if parts else "no inputs"
