"""Calibration statistics: what techniques ask the engine to gather, one small class each.

A :class:`Statistic` is created for one layer (with its :class:`~torchcompress.layers.Geometry`)
and says:

- what it observes (:attr:`Statistic.observes`): the layer's ``"input"``, its ``"output"``, or
  ``"weight_grad"``, the gradient of the loss with respect to the layer's *effective* weight
  (after any parametrization such as a pruning mask), in the canonical layout; with
  :attr:`Statistic.per_sample` the gradient of each sample separately;
- how it accumulates in bounded memory (:meth:`Statistic.update` into a fixed-shape accumulator,
  whatever the amount of data), counting what it saw (rows, batches or samples);
- how ranks combine under ``torch.distributed`` (:attr:`Statistic.reduction`: ``"sum"``, ``"min"``
  or ``"max"``; counts are summed);
- how it is finalised (:meth:`Statistic.finalize`, after the all-reduce: e.g. a sum becomes a mean).

Built in (:data:`STATISTICS`):

=====================  ===========================================  ===================================
name                   value                                        used by
=====================  ===========================================  ===================================
``input_sq``           ``E[x_j^2]`` per input feature (per          Wanda (Sun et al. 2023)
                       ``(channel, tap)`` of a convolution, from
                       strided slices, never unfolded)
``abs_mean``           ``E|x_j|`` per input feature, float64        ASVD (Yuan et al. 2023)
``xtx``                ``E[x x^T]`` per group, ``(groups, n, n)``,  whitened SVD (SVD-LLM); GPTQ and
                       float64, in bounded chunks                   SparseGPT's Hessian ``2 E[x x^T]``
``hessian_diag``       the diagonal of ``2 E[x x^T]``,              OBS-style saliencies
                       ``(groups, n)``
``channel_sq``         ``E[x_c^2]`` per input channel               k-means importance weights
``input_min/max``      smallest / largest input value               activation ranges
``input_channel_min``  per input channel (and ``..._max``)          per-channel ranges, SmoothQuant
``output_min/max``     smallest / largest output value              output ranges
``grad_abs``           ``mean_b |dL_b/dw|`` over batches            Taylor (Molchanov et al. 2017/19)
``grad_sq``            ``mean_s (dL_s/dw)^2`` over samples          Fisher / OBD (LeCun et al. 1990)
=====================  ===========================================  ===================================

A new statistic is one class: subclass :class:`Statistic` (set ``observes``, implement
:meth:`~Statistic.shape` and :meth:`~Statistic.update`), then ``STATISTICS.add("name", MyStat)``;
techniques request it by name.

Example:
    >>> import torch
    >>> from torchcompress.layers import Geometry
    >>> from torchcompress.calibration.statistics import STATISTICS
    >>> st = STATISTICS.get("input_sq")(Geometry("linear", 3, 2), torch.device("cpu"))
    >>> st.update(torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))
    >>> st.count, st.finalize().tolist()
    (2, [5.0, 2.0, 0.0])
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..layers import Geometry
from ..registry import Registry

__all__ = [
    "OBSERVES",
    "REDUCTIONS",
    "STATISTICS",
    "AbsMean",
    "ChannelSq",
    "GradAbs",
    "GradSq",
    "HessianDiag",
    "InputChannelMax",
    "InputChannelMin",
    "InputMax",
    "InputMin",
    "InputSq",
    "OutputMax",
    "OutputMin",
    "Statistic",
    "XtX",
]

#: What a statistic can observe.
OBSERVES = ("input", "output", "weight_grad")
#: How accumulators combine across ranks (and batches).
REDUCTIONS = ("sum", "min", "max")


class Statistic:
    """One statistic of one layer: an accumulator of fixed shape and a count.

    Args:
        geometry: the layer's geometry.
        device: where the accumulator lives (the layer's weight device).

    Attributes:
        observes: ``"input"``, ``"output"`` or ``"weight_grad"`` (see the module docstring).
        per_sample: for ``"weight_grad"``: one gradient per sample (each batch split).
        reduction: ``"sum"``, ``"min"`` or ``"max"``: how accumulators combine across ranks.
        dtype: the accumulator's dtype.
        acc: the accumulator.
        count: what was seen (rows for inputs and outputs, batches or samples for gradients).
    """

    observes: ClassVar[str] = "input"
    per_sample: ClassVar[bool] = False
    reduction: ClassVar[str] = "sum"
    dtype: ClassVar[torch.dtype] = torch.float32

    def __init__(self, geometry: Geometry, device: torch.device | str | None = None) -> None:
        self.geometry = geometry
        self.count = 0
        fill = {"sum": 0.0, "min": float("inf"), "max": float("-inf")}[self.reduction]
        self.acc = torch.full(self.shape(), fill, dtype=self.dtype, device=device)

    @property
    def needs_grad(self) -> bool:
        """Whether the statistic needs gradients (the engine then runs with autograd on)."""
        return self.observes == "weight_grad"

    def shape(self) -> tuple[int, ...]:
        """The accumulator's shape (from :attr:`geometry`)."""
        raise NotImplementedError

    def update(self, x: Tensor) -> None:
        """Add one observation: the layer's input or output, or a canonical weight gradient."""
        raise NotImplementedError

    def finalize(self) -> Tensor:
        """The value after the all-reduce (default: mean of a sum, the accumulator otherwise).

        It is computed in place: the accumulator becomes the value (no second copy of large
        accumulators such as ``xtx``), so call it once, when no more updates come.
        """
        if self.reduction == "sum":
            return self.acc.div_(self.count)
        return self.acc


STATISTICS: Registry[type[Statistic]] = Registry("calibration statistic")


def _kind_of(st: Statistic):  # type: ignore[no-untyped-def]
    return st.geometry.layer_kind


@STATISTICS.register("input_sq")
class InputSq(Statistic):
    """``E[x_j^2]`` per input feature (``feature_shape``: per ``(channel, tap)`` for convs)."""

    def shape(self) -> tuple[int, ...]:
        return self.geometry.feature_shape

    def update(self, x: Tensor) -> None:
        s, rows = _kind_of(self).feature_sums(self.geometry, x, 2, self.dtype)
        self.acc += s
        self.count += rows


@STATISTICS.register("abs_mean")
class AbsMean(InputSq):
    """``E|x_j|`` per input feature, in float64 (ASVD's scaling)."""

    dtype = torch.float64

    def update(self, x: Tensor) -> None:
        s, rows = _kind_of(self).feature_sums(self.geometry, x, 1, self.dtype)
        self.acc += s
        self.count += rows


@STATISTICS.register("xtx")
class XtX(Statistic):
    """``E[x x^T]`` of the rows the weight multiplies, per group: ``(groups, n, n)`` float64."""

    dtype = torch.float64

    def shape(self) -> tuple[int, ...]:
        g = self.geometry
        return (g.groups, g.n, g.n)

    def update(self, x: Tensor) -> None:
        for rows in _kind_of(self).input_rows(self.geometry, x.detach()):
            r = rows.to(self.dtype)
            self.acc.baddbmm_(r.transpose(1, 2), r)
            self.count += int(r.shape[1])


@STATISTICS.register("hessian_diag")
class HessianDiag(InputSq):
    """The diagonal of the layer-wise Hessian ``2 E[x x^T]``, ``(groups, n)`` (float64)."""

    dtype = torch.float64

    def finalize(self) -> Tensor:
        return self.acc.mul_(2).div_(self.count).reshape(self.geometry.groups, self.geometry.n)


@STATISTICS.register("channel_sq")
class ChannelSq(Statistic):
    """``E[x_c^2]`` per input channel (a convolution's channels over every position)."""

    def shape(self) -> tuple[int, ...]:
        return (self.geometry.in_features,)

    def update(self, x: Tensor) -> None:
        rows = _kind_of(self).channel_rows(self.geometry, x.detach()).to(self.dtype)
        self.acc += rows.pow(2).sum(0)
        self.count += int(rows.shape[0])


class _Extreme(Statistic):
    per_channel: ClassVar[bool] = False

    def shape(self) -> tuple[int, ...]:
        return (self.geometry.in_features,) if self.per_channel else ()

    def update(self, x: Tensor) -> None:
        rows = _kind_of(self).channel_rows(self.geometry, x.detach()).to(self.dtype)
        if rows.numel() == 0:
            return
        pick = torch.minimum if self.reduction == "min" else torch.maximum
        if self.per_channel:
            v = rows.amin(0) if self.reduction == "min" else rows.amax(0)
        else:
            v = rows.min() if self.reduction == "min" else rows.max()
        self.acc = pick(self.acc, v)
        self.count += int(rows.shape[0])


@STATISTICS.register("input_min")
class InputMin(_Extreme):
    """The smallest input value (per tensor)."""

    reduction = "min"


@STATISTICS.register("input_max")
class InputMax(_Extreme):
    """The largest input value (per tensor)."""

    reduction = "max"


@STATISTICS.register("input_channel_min")
class InputChannelMin(_Extreme):
    """The smallest input value of each input channel."""

    reduction = "min"
    per_channel = True


@STATISTICS.register("input_channel_max")
class InputChannelMax(_Extreme):
    """The largest input value of each input channel."""

    reduction = "max"
    per_channel = True


class _OutputExtreme(Statistic):
    observes = "output"

    def shape(self) -> tuple[int, ...]:
        return ()

    def update(self, x: Tensor) -> None:
        if x.numel() == 0:
            return
        v = x.detach().to(self.dtype)
        if self.reduction == "min":
            self.acc = torch.minimum(self.acc, v.min())
        else:
            self.acc = torch.maximum(self.acc, v.max())
        self.count += self.geometry.output_positions(x)


@STATISTICS.register("output_min")
class OutputMin(_OutputExtreme):
    """The smallest output value (per tensor)."""

    reduction = "min"


@STATISTICS.register("output_max")
class OutputMax(_OutputExtreme):
    """The largest output value (per tensor)."""

    reduction = "max"


@STATISTICS.register("grad_abs")
class GradAbs(Statistic):
    """``mean over batches of |dL_b/dw|`` with respect to the effective (masked) weight."""

    observes = "weight_grad"

    def shape(self) -> tuple[int, ...]:
        return self.geometry.weight_shape

    def update(self, x: Tensor) -> None:
        self.acc += x.abs()
        self.count += 1


@STATISTICS.register("grad_sq")
class GradSq(GradAbs):
    """``mean over samples of (dL_s/dw)^2`` (the diagonal empirical Fisher), one sample at a time."""

    per_sample = True

    def update(self, x: Tensor) -> None:
        self.acc += x.pow(2)
        self.count += 1
