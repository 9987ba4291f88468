"""Calibration of quantizers, on the shared calibration engine (:mod:`torchcompress.calibration`).

- :func:`calibrate`: fake-quantizers observe inside their own forward, so calibrating is the
  engine's data loop (:func:`torchcompress.calibration.run_batches`) with them observing, then
  setting their ranges. Observers whose statistics are a histogram (``"percentile"``, ``"mse"``,
  ``"kl"``) take two passes over the data: the first fixes each quantizer's range, the second
  counts the histogram over that fixed range. The counts are integers, so the histogram, and the
  scales, are the same whatever the order of the batches or their split across ranks.
- Under ``torch.distributed`` every observer's statistics are combined across ranks before the
  ranges are set (see :meth:`~torchcompress.quant.observers.Observer.all_reduce`): ``"minmax"``
  and the histogram observers give exactly the scales of one process on all the data (bit for
  bit, given the same activations); ``"sawb"``'s sums agree to float rounding; ``"moving_minmax"``
  depends on the order of the batches, so the ranks' moving averages are averaged (an
  approximation, with a warning; quantization-aware training quantizers that synchronise every
  batch's min and max stay identical on every rank).
- :func:`check_reaches`: the data reaches every targeted layer with finite inputs (the engine's
  :func:`~torchcompress.calibration.collect` of the inputs' minima and maxima).

Calibration data that can be read only once (a generator) gets one pass: histogram observers then
re-bin a streaming histogram as the range grows (the result depends on the order of the batches),
and under ``torch.distributed`` that is an error.

Example:
    >>> import torch, torchcompress as tc
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> calib = [torch.randn(8, 4) for _ in range(2)]
    >>> q = tc.quantize(model, tc.QuantConfig(observer=tc.quant.Percentile(99.0)), calib)
    >>> q.quant_graph.quantizers["input__0"].calibrated
    True
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from ..batches import Batch, iter_batches
from ..calibration import collect, is_distributed, run_batches
from ..errors import CalibrationError, DataError
from .modules import FakeQuantize

__all__ = ["calibrate", "check_reaches", "example_batch", "rereadable"]

log = logging.getLogger(__name__)


def rereadable(data: Any) -> bool:
    """Whether ``data`` can be iterated again (a list, a tensor, a DataLoader; not a generator)."""
    if data is None:
        return False
    try:
        return iter(data) is not data
    except TypeError:
        return isinstance(data, Tensor | dict)


def example_batch(data: Any) -> Batch | None:
    """The first batch of ``data`` when it can be read again (never consumes a one-shot
    iterator), for analyses that follow one forward; ``None`` otherwise."""
    if not rereadable(data):
        return None
    try:
        return next(iter(iter_batches(data, max_batches=1, what="calib_data")))
    except (DataError, StopIteration, TypeError):
        return None


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

    Args:
        model: the model holding the quantizers.
        calib_data: any iterable of batches.
        quantizers: layer name -> its activation quantizers.
        max_batches: use at most this many batches (in each pass).
        progress: show a progress bar.

    Returns:
        The number of batches run (in the last pass, on this rank).

    Raises:
        DataError: ``calib_data`` is empty or a batch does not fit the model.
        CalibrationError: some targeted layers never received an input (on any rank), or a
            histogram observer under ``torch.distributed`` with data that can be read only once.
        NumericalError: NaN or Inf in an observed activation.
    """
    # one fixed order, the same on every rank (the all-reduces must match)
    order = [fq for name in sorted(quantizers) for fq in quantizers[name]]
    observed = [fq for fq in order if fq.observer is not None]
    ranged = [fq for fq in observed if fq.observer.needs_range_pass]  # type: ignore[union-attr]
    if ranged and not rereadable(calib_data):
        if is_distributed():
            raise CalibrationError(
                f"The {ranged[0].observer_name!r} observer calibrates in two passes under "
                "torch.distributed (a fixed range, then a histogram), but calib_data can be read "
                "only once (a generator). Pass a list of batches or a DataLoader."
            )
        log.info("calib_data can be read only once: histograms are re-binned as ranges grow.")
        ranged = []
    approximate = sorted(
        {fq.observer_name for fq in observed if fq.observer.across_ranks == "approximate"}  # type: ignore[union-attr]
    )
    if approximate and is_distributed():
        log.warning(
            "observer(s) %s depend on the order of the batches: their statistics are combined "
            "across ranks approximately ('minmax' or a histogram observer gives exactly the ranges "
            "of one process on all the data).",
            ", ".join(repr(a) for a in approximate),
        )
    for fq in order:
        fq.observing, fq.enabled = False, False
    if ranged:
        for fq in ranged:
            fq.begin_range_pass()
            fq.observing = True
        run_batches(
            model,
            calib_data,
            max_batches=max_batches,
            progress=progress,
            desc="calibrating ranges",
        )
        for fq in ranged:
            fq.end_range_pass()
    for fq in order:
        fq.observing = True
    n = run_batches(
        model, calib_data, max_batches=max_batches, progress=progress, desc="calibrating"
    )
    for fq in observed:
        fq.all_reduce()
    missing = [
        name
        for name, fqs in quantizers.items()
        if any(fq.observer is not None and not fq.observer.observed for fq in fqs)
    ]
    if missing:
        raise _unreached(missing)
    for fq in order:
        fq.observing = False
        if fq.observer is not None:
            fq.calibrate()
            fq.observer.reset()
        fq.enabled = True
    return n


def check_reaches(
    model: nn.Module, data: Any, names: list[str], max_batches: int | None = None
) -> None:
    """Run ``data`` once (at most ``max_batches`` or 8 batches): every named layer must get a
    finite input (the layers are float layers of registered kinds).

    Raises:
        CalibrationError: a layer the data never reached.
        NumericalError: NaN or Inf in a layer's input.
    """
    stats = collect(
        model,
        data,
        {n: ["input_min", "input_max"] for n in names},
        max_batches=max_batches or 8,
        progress=False,
        desc="checking calib_data",
        require_all=False,
    )
    missing = [n for n in names if stats[n].calls == 0]
    if missing:
        raise _unreached(missing)
