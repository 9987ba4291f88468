"""Activation statistics of the layers to factorize, through the calibration engine.

The factorization methods name the statistics they need (``"xtx"``: the second moment
``E[x x^T]`` per group, float64, for the whitened method; ``"abs_mean"``: ``E|x|`` per input feature
for ASVD). :func:`collect_stats` asks :func:`torchcompress.calibration.collect` for them, and for
every layer also counts the output positions it computed (tokens, or samples x pixels), so MACs are
counted at the layer's real input size. Rows are the inputs a layer's weight matrix multiplies:
the last dimension of a Linear's input, the patches of a convolution (honouring stride, padding,
padding mode and dilation), taken in bounded chunks; memory per layer is ``groups * n^2`` floats
for the second moment, whatever the amount of data.

A factorized layer (retruncation) is counted through its ``second`` factor, which computes every
output position of the layer.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.lowrank.calibration import collect_stats
    >>> model = nn.Sequential(nn.Linear(8, 4))
    >>> stats, batches = collect_stats(model, {"0": model[0]}, torch.randn(5, 8), needs=["xtx"])
    >>> stats["0"]["xtx"].shape, stats["0"].rows, batches
    (torch.Size([1, 8, 8]), 5, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ..calibration import LayerStats, collect
from .modules import LowRankModule

__all__ = ["collect_stats"]


def collect_stats(
    model: nn.Module,
    targets: Mapping[str, nn.Module],
    calib_data: Any,
    *,
    needs: Iterable[str] | Mapping[str, Iterable[str]] = (),
    max_batches: int | None = None,
    progress: bool | None = None,
    require_all: bool = True,
) -> tuple[dict[str, LayerStats], int]:
    """Run ``calib_data`` through ``model`` in eval mode and collect each target's statistics.

    Args:
        model: the model (its mode is restored afterwards).
        targets: qualified name -> dense or factorized layer.
        calib_data: any iterable of batches (see :mod:`torchcompress.batches`).
        needs: statistic names to collect (none: only calls and output positions), for every
            target or per target name.
        max_batches: stop after this many batches.
        progress: show a progress bar (``None``: when interactive).
        require_all: raise if a target never ran (else its ``calls`` stays 0).

    Returns:
        ``(stats by name, number of batches)``.

    Raises:
        DataError: the data is empty or a batch does not fit the model.
        CalibrationError: a target was never run by the data.
        NumericalError: NaN/Inf activations.
    """
    if isinstance(needs, Mapping):
        per = {name: sorted(needs.get(name, ())) for name in targets}
    else:
        common = sorted(needs)
        per = dict.fromkeys(targets, common)
    # a factorized layer is observed through its ``second`` factor (same output positions)
    observed = {
        name: f"{name}.second" if isinstance(mod, LowRankModule) else name
        for name, mod in targets.items()
    }
    stats = collect(
        model,
        calib_data,
        {observed[name]: per[name] for name in targets},
        max_batches=max_batches,
        progress=progress,
        desc="low-rank calibration",
        require_all=require_all or any(per.values()),
    )
    return {name: stats[observed[name]] for name in targets}, stats.batches
