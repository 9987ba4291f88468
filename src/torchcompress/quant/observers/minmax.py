"""Observers of running statistics: ``"minmax"``, ``"moving_minmax"`` and ``"sawb"``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...errors import check_range
from .base import OBSERVERS, Observer, ObserverSpec, all_reduce_

__all__ = [
    "SAWB",
    "SAWB_COEFFICIENTS",
    "SAWB_MAX_BITS",
    "MinMax",
    "MinMaxObserver",
    "MovingMinMax",
    "MovingMinMaxObserver",
    "SAWBObserver",
]


@dataclass(frozen=True)
class MinMax(ObserverSpec):
    """The ``"minmax"`` observer: the running minimum and maximum (no options).

    Example:
        >>> import torchcompress as tc
        >>> tc.QuantConfig(observer=tc.quant.MinMax()).observer_name
        'minmax'
    """

    name: ClassVar[str] = "minmax"


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """The running minimum and maximum of every group."""

    Spec = MinMax
    uses_batch_minmax = True


@dataclass(frozen=True)
class MovingMinMax(ObserverSpec):
    """The ``"moving_minmax"`` observer: moving averages of each batch's min and max.

    Args:
        averaging_constant: the weight of each new batch, in ``(0, 1]``.

    Example:
        >>> import torchcompress as tc
        >>> tc.quant.MovingMinMax(0.1).averaging_constant
        0.1
    """

    averaging_constant: float = 0.01
    name: ClassVar[str] = "moving_minmax"

    def validate(self) -> None:
        check_range(
            "averaging_constant",
            self.averaging_constant,
            0.0,
            1.0,
            low_inclusive=False,
            owner=type(self).__name__,
        )


@OBSERVERS.register("moving_minmax")
class MovingMinMaxObserver(Observer):
    """Exponential moving averages of each batch's min and max (weight ``averaging_constant``).

    The first batch initialises the averages; batch ``t`` then moves them by
    ``averaging_constant * (batch_value - average)``. The averages depend on the order of the
    batches: across ranks (:meth:`~Observer.all_reduce`) the ranks' averages are averaged, an
    approximation of one process on all the data.
    """

    Spec = MovingMinMax
    spec: MovingMinMax
    uses_batch_minmax = True
    across_ranks = "approximate"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("avg_min", None, persistent=False)
        self.register_buffer("avg_max", None, persistent=False)

    def reset(self) -> None:
        super().reset()
        self.avg_min = None
        self.avg_max = None

    def _update(self, x: Tensor, bmin: Tensor, bmax: Tensor) -> None:
        if self.avg_min is None or self.avg_min.shape != bmin.shape or self.exact:
            self.avg_min, self.avg_max = bmin.clone(), bmax.clone()
        else:
            c = self.spec.averaging_constant
            self.avg_min = self.avg_min + c * (bmin - self.avg_min)
            self.avg_max = self.avg_max + c * (bmax - self.avg_max)

    def compute_range(self) -> tuple[Tensor, Tensor]:
        self._check()
        return self.avg_min, self.avg_max  # type: ignore[return-value]

    def reduce_stats(self, groups: int, device: torch.device) -> None:
        """The mean of the ranks' moving averages (over the ranks that observed something)."""
        zero = torch.zeros(groups, dtype=torch.float64, device=device)
        has = self.avg_min is not None
        lo = self.avg_min.double() if has else zero  # type: ignore[union-attr]
        hi = self.avg_max.double() if has else zero  # type: ignore[union-attr]
        flag = torch.tensor([float(has)], dtype=torch.float64, device=device)
        both = all_reduce_(torch.cat([lo, hi, flag]), "sum")
        n = both[-1].clamp(min=1)
        self.avg_min = (both[:groups] / n).float()
        self.avg_max = (both[groups : 2 * groups] / n).float()


#: Widest format the SAWB observer clips (wider ones use min/max; see :class:`SAWBObserver`).
SAWB_MAX_BITS = 4

#: bits -> (c1, c2) of SAWB's ``alpha = c1 * sqrt(E[x^2]) - c2 * E[|x|]`` for the symmetric signed grid
#: ``scale = alpha / (2^(b-1) - 1)`` (see the module docstring for how they were fitted: the
#: MSE-optimal scales of the fit, re-expressed for this grid).
SAWB_COEFFICIENTS: dict[int, tuple[float, float]] = {
    2: (3.442, 2.347),  # 2-bit: scale = alpha / 1.5 (see functional.symmetric_scale)
    3: (6.466, 5.847),
    4: (12.173, 12.281),
    5: (18.974, 20.151),
    6: (26.577, 29.044),
    7: (35.531, 39.590),
    8: (47.186, 53.362),
}


@dataclass(frozen=True)
class SAWB(ObserverSpec):
    """The ``"sawb"`` observer (statistics-aware weight binning; no options).

    Example:
        >>> import torchcompress as tc
        >>> tc.QuantConfig(weight_observer=tc.quant.SAWB()).weight_observer_name
        'sawb'
    """

    name: ClassVar[str] = "sawb"


@OBSERVERS.register("sawb")
class SAWBObserver(Observer):
    """Statistics-aware weight binning (Choi et al. 2018): ``alpha = c1 sqrt(E x^2) - c2 E|x|``.

    Streams ``E[x^2]`` and ``E|x|`` per group (float64 sums; across ranks they are summed, equal to
    one process's to rounding); the range is the observed range clipped to ``[-alpha, alpha]``. Used up to :data:`SAWB_MAX_BITS` (4) bits, the low-bit regime the method
    is for; wider formats use the plain min/max. Above 4 bits the fitted coefficients grow large
    and nearly cancel, so ``alpha`` becomes unstable for distributions outside the fit family (for
    uniform data the 8-bit fit clips at 0.56 of the maximum, where the optimum is about the maximum;
    depthwise filters of nine weights look like that and an 8-bit MobileNetV2 collapsed), while
    the best clip at those widths is close to the maximum anyway.
    """

    Spec = SAWB
    across_ranks = "rounding"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("sum_sq", None, persistent=False)
        self.register_buffer("sum_abs", None, persistent=False)
        self.count = 0

    def reset(self) -> None:
        super().reset()
        self.sum_sq = None
        self.sum_abs = None
        self.count = 0

    def _update(self, x: Tensor, bmin: Tensor, bmax: Tensor) -> None:
        sq = x.double().pow(2).sum(1)
        ab = x.double().abs().sum(1)
        if self.exact or self.sum_sq is None or self.sum_sq.shape != sq.shape:
            self.sum_sq, self.sum_abs, self.count = sq, ab, x.shape[1]
        else:
            self.sum_sq = self.sum_sq + sq
            self.sum_abs = self.sum_abs + ab
            self.count += x.shape[1]

    def reduce_stats(self, groups: int, device: torch.device) -> None:
        """Sum the moments and the counts of the ranks."""
        zero = torch.zeros(groups, dtype=torch.float64, device=device)
        sq = self.sum_sq if self.sum_sq is not None else zero
        ab = self.sum_abs if self.sum_abs is not None else zero
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=device)
        both = all_reduce_(torch.cat([sq.double(), ab.double(), count]), "sum")
        self.sum_sq, self.sum_abs = both[:groups], both[groups : 2 * groups]
        self.count = int(both[-1].item())

    def compute_range(self) -> tuple[Tensor, Tensor]:
        self._check()
        bits = round(math.log2(self.qmax - self.qmin + 1))
        if bits > SAWB_MAX_BITS or bits not in SAWB_COEFFICIENTS:
            return self.min_val, self.max_val  # type: ignore[return-value]
        c1, c2 = SAWB_COEFFICIENTS[bits]
        m2 = (self.sum_sq / self.count).sqrt()  # type: ignore[operator]
        m1 = self.sum_abs / self.count  # type: ignore[operator]
        alpha = (c1 * m2 - c2 * m1).float().clamp(min=0)
        amax = torch.maximum(self.min_val.abs(), self.max_val.abs())  # type: ignore[union-attr]
        alpha = torch.where(alpha > 0, torch.minimum(alpha, amax), amax)
        return self._clip_symmetric(alpha)
