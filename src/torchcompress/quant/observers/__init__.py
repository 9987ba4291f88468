"""Range estimators ("observers"): statistics accumulated over batches with bounded memory.

An observer sees a ``[groups, elements]`` view of a tensor (one group per scale: the whole tensor,
one output channel, or one weight group) at each call of :meth:`Observer.observe`, and returns a real
range ``(lo, hi)`` per group from :meth:`Observer.compute_range`; :meth:`Observer.qparams` turns it
into scales and zero points for the quantizer's integer format. Memory is bounded: min/max and
moments are ``O(groups)``, histograms ``O(groups * bins)``, whatever the number of batches. Weight
quantizers set ``exact=True``: the observer then works on the weight itself (observed once) instead of
a histogram of it.

Each observer's options are a small typed spec (an :class:`ObserverSpec`, a frozen
:class:`~torchcompress.config.Config`): ``QuantConfig(observer=Percentile(99.9))`` beside the plain
name ``QuantConfig(observer="percentile")`` (default options). Registered observers
(:data:`OBSERVERS`), with their specs:

- ``"minmax"`` (:class:`MinMax`): the running min and max.
- ``"moving_minmax"`` (:class:`MovingMinMax`): exponential moving averages of each batch's min and
  max (``averaging_constant``), as in Jacob et al. 2018.
- ``"percentile"`` (:class:`Percentile`): the ``percentile``-th percentile of ``|x|`` (symmetric formats) or the
  ``(100 - p)``-th and ``p``-th percentiles (asymmetric), read from a streaming histogram.
- ``"mse"`` (:class:`MSE`): the clipping range minimising the mean squared quantization error of the observed
  distribution (a search over shrunk ranges; coordinate descent on both ends for asymmetric
  formats), as in e.g. Banner et al. 2019 / Choukroun et al. 2019 (OMSE).
- ``"kl"`` (:class:`KL`): TensorRT's entropy calibration (Migacz 2017): the clipping threshold minimising the KL
  divergence between the observed histogram and its quantized version, vectorised over all
  candidate thresholds; for unsigned or asymmetric formats the candidate windows shrink towards zero.
- ``"sawb"`` (:class:`SAWB`): statistics-aware weight binning (Choi et al. 2018, "Bridging the accuracy gap for
  2-bit quantized neural networks", arXiv:1807.06964): ``alpha = c1 * sqrt(E[x^2]) - c2 * E[|x|]``
  with ``(c1, c2)`` for each bit width. The paper fits the coefficients by regressing the
  MSE-optimal clipping value on the two moments over several distributions; we did the same for
  this library's symmetric integer grid (``scale = alpha / qmax``; normal, Laplace, uniform,
  logistic, Student-t(5) and triangular distributions, 2 million samples each;
  :data:`SAWB_COEFFICIENTS`, refitted by ``tests/quant/test_observers.py``). Designed for weights.

Add one by subclassing :class:`Observer` and registering it; its options are a spec class set as
its ``Spec`` (an observer without options of its own gets a spec class naming it)::

    @dataclass(frozen=True)
    class Shrunk(ObserverSpec):
        factor: float = 0.5

    @OBSERVERS.register("shrunk")
    class ShrunkMinMax(MinMaxObserver):
        Spec = Shrunk

        def compute_range(self):
            lo, hi = super().compute_range()
            return lo * self.spec.factor, hi * self.spec.factor

    tc.QuantConfig(observer=Shrunk(0.8))  # or observer="shrunk" for the default factor

Example:
    >>> import torch
    >>> from torchcompress.quant.observers import make_observer
    >>> obs = make_observer("minmax", qmin=-128, qmax=127, symmetric=True)
    >>> obs.observe(torch.tensor([[-1.0, 3.0]])); obs.observe(torch.tensor([[2.0, -4.0]]))
    >>> [t.tolist() for t in obs.compute_range()]
    [[-4.0], [3.0]]
"""

from __future__ import annotations

from .base import OBSERVERS, Observer, ObserverSpec, all_reduce_, make_observer, observer_spec
from .histogram import (
    KL,
    MSE,
    Histogram,
    HistogramObserver,
    KLObserver,
    MSEObserver,
    Percentile,
    PercentileObserver,
)
from .minmax import (
    SAWB,
    SAWB_COEFFICIENTS,
    SAWB_MAX_BITS,
    MinMax,
    MinMaxObserver,
    MovingMinMax,
    MovingMinMaxObserver,
    SAWBObserver,
)

__all__ = [
    "KL",
    "MSE",
    "OBSERVERS",
    "SAWB",
    "SAWB_COEFFICIENTS",
    "SAWB_MAX_BITS",
    "Histogram",
    "HistogramObserver",
    "KLObserver",
    "MSEObserver",
    "MinMax",
    "MinMaxObserver",
    "MovingMinMax",
    "MovingMinMaxObserver",
    "Observer",
    "ObserverSpec",
    "Percentile",
    "PercentileObserver",
    "SAWBObserver",
    "all_reduce_",
    "make_observer",
    "observer_spec",
]
