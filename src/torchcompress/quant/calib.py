"""Quantization's calibration loops, in one place.

- :func:`run_batches`: the one data loop (eval mode, no gradients, modes restored, progress bar);
  fake-quantizers observe inside their own forward, so :func:`calibrate` is this loop plus setting
  their ranges.
- :func:`input_hooks`: the only forward hooks quantization registers (on the inputs of named
  layers), used by :func:`check_reaches` (every target gets a finite input),
  :func:`input_sq_means` (``E[x^2]`` per input feature, k-means' importance) and the ReLU-origin
  analysis of quantization-aware training in layer mode.

The shared calibration engine (:mod:`torchcompress.calibration`: its data loop and its statistics
registry) replaces this module function for function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..batches import Batch, count_batches, iter_batches, run_model
from ..errors import CalibrationError, DataError, NumericalError
from ..progress import progress_bar
from ..select import module_device_dtype
from .modules import FakeQuantize

__all__ = [
    "calibrate",
    "check_reaches",
    "example_batch",
    "input_hooks",
    "input_sq_means",
    "run_batches",
]


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; every module's train/eval flag restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in modes.items():
            m.training = t


def example_batch(data: Any) -> Batch | None:
    """The first batch of ``data`` when it can be read again (never consumes a one-shot
    iterator), for analyses that follow one forward; ``None`` otherwise."""
    if data is None:
        return None
    try:
        reiterable = iter(data) is not data
    except TypeError:
        reiterable = isinstance(data, Tensor | dict)
    if not reiterable:
        return None
    try:
        return next(iter(iter_batches(data, max_batches=1, what="calib_data")))
    except (DataError, StopIteration, TypeError):
        return None


def run_batches(
    model: nn.Module,
    data: Any,
    *,
    max_batches: int | None = None,
    progress: bool | None = None,
    desc: str = "calibrating",
    around: Callable[[Batch], contextlib.AbstractContextManager[Any]] | None = None,
) -> int:
    """Run ``data`` through ``model`` in eval mode without gradients (modes restored after).

    Args:
        model: the model.
        data: any iterable of batches (see :func:`torchcompress.batches.iter_batches`).
        max_batches: run at most this many batches.
        progress: show a progress bar (default: when interactive).
        desc: the progress bar's label.
        around: a context to run each batch in, made from the batch.

    Returns:
        The number of batches run.

    Raises:
        DataError: ``data`` is empty or a batch does not fit the model.
    """
    device, _ = module_device_dtype(model)
    total = count_batches(data)
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    n = 0
    with _evaluating(model):
        batches = iter_batches(data, max_batches=max_batches, device=device, what="calib_data")
        for i, batch in enumerate(progress_bar(batches, desc=desc, total=total, enabled=progress)):
            with around(batch) if around is not None else contextlib.nullcontext():
                run_model(model, batch, index=i, what="calib_data")
            n += 1
    return n


@contextlib.contextmanager
def input_hooks(
    model: nn.Module, names: list[str], fn: Callable[[str, Any], None]
) -> Iterator[None]:
    """Call ``fn(name, first_input)`` before each forward of the named layers (hooks removed after)."""
    handles = []
    try:
        for name in names:

            def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                fn(name, args[0] if args else None)

            handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def _unreached(missing: list[str]) -> CalibrationError:
    shown = ", ".join(repr(m) for m in missing[:8]) + (" ..." if len(missing) > 8 else "")
    return CalibrationError(
        f"calib_data produced no activations for {len(missing)} targeted layer(s): {shown}. "
        "Their forward never ran on the calibration batches (a branch not taken, a module the "
        "model does not call, or inputs of the wrong kind). Exclude them (exclude=[...]) or "
        "pass data that reaches them."
    )


def calibrate(
    model: nn.Module,
    calib_data: Any,
    quantizers: dict[str, list[FakeQuantize]],
    *,
    max_batches: int | None = None,
    progress: bool | None = None,
) -> int:
    """Run ``calib_data`` through ``model`` with ``quantizers`` observing, then set their ranges.

    Returns:
        The number of batches run.

    Raises:
        DataError: ``calib_data`` is empty or a batch does not fit the model.
        CalibrationError: some targeted layers never received an input.
        NumericalError: NaN or Inf in an observed activation.
    """
    for fqs in quantizers.values():
        for fq in fqs:
            fq.observing, fq.enabled = True, False
    n = run_batches(model, calib_data, max_batches=max_batches, progress=progress)
    missing = [
        name
        for name, fqs in quantizers.items()
        if any(fq.observer is not None and not fq.observer.observed for fq in fqs)
    ]
    if missing:
        raise _unreached(missing)
    for fqs in quantizers.values():
        for fq in fqs:
            fq.observing = False
            if fq.observer is not None:
                fq.calibrate()
                fq.observer.reset()
            fq.enabled = True
    return n


def _finite(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise NumericalError(f"NaN or Inf in the input activations of {name!r}.")


def check_reaches(
    model: nn.Module, data: Any, names: list[str], max_batches: int | None = None
) -> None:
    """Run ``data`` once (at most ``max_batches`` or 8 batches): every named layer must get a
    finite input.

    Raises:
        CalibrationError: a layer the data never reached.
        NumericalError: NaN or Inf in a layer's input.
    """
    seen: set[str] = set()

    def record(name: str, x: Any) -> None:
        if isinstance(x, Tensor):
            _finite(name, x)
            seen.add(name)

    with input_hooks(model, names, record):
        run_batches(model, data, max_batches=max_batches or 8, progress=False)
    missing = [n for n in names if n not in seen]
    if missing:
        raise _unreached(missing)


def input_sq_means(
    model: nn.Module,
    names: list[str],
    data: Any,
    *,
    max_batches: int | None = None,
    progress: bool | None = None,
    channels_first: set[str] | None = None,
) -> dict[str, Tensor]:
    """``E[x_j^2]`` of each input feature of each named layer (the diagonal of its ``X^T X`` / N).

    Features are the last dimension, or the channels (dimension 1) of the layers named in
    ``channels_first`` (convolutions).

    Raises:
        CalibrationError: a layer the data never reached.
        NumericalError: NaN or Inf in a layer's input.
    """
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str, x: Any) -> None:
        x = x.detach().float()
        _finite(name, x)
        if channels_first and name in channels_first:
            xc = x.transpose(0, 1).reshape(x.shape[1], -1)
        else:
            xc = x.reshape(-1, x.shape[-1]).t()
        s = (xc**2).sum(1)
        sums[name] = sums[name] + s if name in sums else s
        counts[name] = counts.get(name, 0) + xc.shape[1]

    with input_hooks(model, names, record):
        run_batches(
            model, data, max_batches=max_batches, progress=progress, desc="k-means importance"
        )
    missing = [n for n in names if n not in sums]
    if missing:
        raise _unreached(missing)
    return {n: sums[n] / counts[n] for n in names}
