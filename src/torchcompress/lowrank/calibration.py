"""Activation statistics of the targeted layers, accumulated in bounded memory over ``calib_data``.

For each layer, forward hooks accumulate, on the model's device and in float64:

- ``sum x x^T`` per group (``n x n``; the whitened method's second moment), and/or
- ``sum |x|`` per input feature (ASVD's scaling),
- the number of rows and the output positions per batch (so MACs are counted at the layer's real
  input size).

Rows are the inputs a layer's weight matrix multiplies: the last dimension of a Linear's input, the
unfolded patches of a convolution (honouring stride, padding, padding mode and dilation). Memory per
layer is ``groups * n^2`` floats for the second moment, whatever the amount of data; each batch is
processed in chunks of at most ``CHUNK_ELEMENTS`` patch values, so a big input never materialises
its whole unfolded matrix at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..batches import count_batches, iter_batches, run_model
from ..errors import CalibrationError, NumericalError
from ..progress import progress_bar
from . import functional as F
from .modules import LayerGeometry, geometry

__all__ = ["CHUNK_ELEMENTS", "LayerStats", "collect_stats"]

log = logging.getLogger(__name__)

#: Largest number of patch values (rows x columns) turned into float64 at once.
CHUNK_ELEMENTS = 1 << 23


@dataclass
class LayerStats:
    """Accumulated input statistics of one layer.

    Attributes:
        geometry: the layer's matrix shape.
        needs: which statistics are collected.
        rows: input rows seen (tokens, or output positions times samples for convs).
        positions: output positions summed over every call (for MACs).
        calls: forward calls seen.
    """

    geometry: LayerGeometry
    needs: frozenset[str]
    rows: int = 0
    positions: int = 0
    calls: int = 0
    _xtx: Tensor | None = field(default=None, repr=False)
    _abs: Tensor | None = field(default=None, repr=False)

    def update(self, module: nn.Module, x: Tensor, output: Tensor) -> None:
        """Add one forward call's input ``x`` (and count the positions of ``output``)."""
        g = self.geometry
        self.calls += 1
        self.positions += int(output.numel() // (g.m * g.groups))
        if not self.needs:
            return
        x = x.detach()
        if g.kind in ("linear", "hf_conv1d"):
            rows = x.reshape(-1, g.n)
            step = max(1, CHUNK_ELEMENTS // max(1, g.n))
            for i in range(0, rows.shape[0], step):
                self._add_rows(rows[i : i + step])
            return
        # convolution: unfold a few samples at a time
        per_sample = max(1, int(output[0].numel() // (g.m * g.groups))) * g.n * g.groups
        step = max(1, CHUNK_ELEMENTS // per_sample)
        for i in range(0, x.shape[0], step):
            self._add_rows(F.conv_patches(x[i : i + step], module))

    def _add_rows(self, rows: Tensor) -> None:
        g = self.geometry
        rows = rows.to(torch.float64)
        self.rows += rows.shape[0]
        grouped = rows.reshape(rows.shape[0], g.groups, g.n).transpose(0, 1)  # (g, R, n)
        if "second_moment" in self.needs:
            xtx = grouped.transpose(1, 2) @ grouped
            self._xtx = xtx if self._xtx is None else self._xtx.add_(xtx)
        if "abs_mean" in self.needs:
            s = grouped.abs().sum(1)
            self._abs = s if self._abs is None else self._abs.add_(s)

    def second_moment(self) -> Tensor:
        """``E[x x^T]`` per group, ``(groups, n, n)`` float64."""
        if self._xtx is None or self.rows == 0:
            raise CalibrationError("no second-moment statistics were collected for this layer")
        return self._xtx / self.rows

    def abs_mean(self) -> Tensor:
        """``E|x|`` per group and input feature, ``(groups, n)`` float64."""
        if self._abs is None or self.rows == 0:
            raise CalibrationError("no activation statistics were collected for this layer")
        return self._abs / self.rows

    def check_finite(self, name: str) -> None:
        """Raise :class:`NumericalError` naming the layer if a statistic is NaN/Inf."""
        for t in (self._xtx, self._abs):
            if t is not None and not torch.isfinite(t).all():
                raise NumericalError(
                    f"The inputs of layer {name!r} hold NaN or Inf values during calibration; "
                    "check the model and calib_data (e.g. fp16 overflow)."
                )


def collect_stats(
    model: nn.Module,
    targets: dict[str, nn.Module],
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
        targets: qualified name -> dense layer.
        calib_data: any iterable of batches (see :mod:`torchcompress.batches`).
        needs: statistics to collect (``"second_moment"``, ``"abs_mean"``; none: only sizes), for
            every target or per target name.
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
        per = {name: frozenset(needs.get(name, ())) for name in targets}
    else:
        common = frozenset(needs)
        per = dict.fromkeys(targets, common)
    stats = {name: LayerStats(geometry(m), per[name]) for name, m in targets.items()}
    device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
    handles = []

    def make_hook(name: str):  # type: ignore[no-untyped-def]
        st = stats[name]

        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            x = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(x, Tensor) and isinstance(output, Tensor):
                st.update(module, x, output)

        return hook

    was_training = {m: m.training for m in model.modules()}
    n_batches = 0
    try:
        for name, module in targets.items():
            handles.append(module.register_forward_hook(make_hook(name), with_kwargs=True))
        model.eval()
        total = count_batches(calib_data)
        if max_batches is not None and total is not None:
            total = min(total, max_batches)
        batches = iter_batches(
            calib_data, max_batches=max_batches, device=device, what="calib_data"
        )
        with torch.no_grad():
            for i, batch in enumerate(
                progress_bar(batches, desc="low-rank calibration", total=total, enabled=progress)
            ):
                run_model(model, batch, index=i, what="calib_data")
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        for m, t in was_training.items():
            m.training = t
    for name, st in stats.items():
        if st.calls == 0 and (require_all or st.needs):
            raise CalibrationError(
                f"Layer {name!r} was never run by calib_data, so it has no activation statistics. "
                "Exclude it (exclude=[...]) or pass data that reaches it."
            )
        st.check_finite(name)
    log.debug("collected low-rank statistics of %d layers over %d batches", len(stats), n_batches)
    return stats, n_batches
