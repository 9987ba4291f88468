"""Range estimators ("observers"): statistics accumulated over batches with bounded memory.

An observer sees a ``[groups, elements]`` view of a tensor (one group per scale: the whole tensor,
one output channel, or one weight group) at each call of :meth:`Observer.observe`, and returns a real
range ``(lo, hi)`` per group from :meth:`Observer.compute_range`; :meth:`Observer.qparams` turns it
into scales and zero points for the quantizer's integer format. Memory is bounded: min/max and
moments are ``O(groups)``, histograms ``O(groups * bins)``, whatever the number of batches. Weight
quantizers set ``exact=True``: the observer then works on the weight itself (observed once) instead of
a histogram of it.

Registered observers (:data:`OBSERVERS`):

- ``"minmax"``: the running min and max.
- ``"moving_minmax"``: exponential moving averages of each batch's min and max
  (``averaging_constant``), as in Jacob et al. 2018.
- ``"percentile"``: the ``percentile``-th percentile of ``|x|`` (symmetric formats) or the
  ``(100 - p)``-th and ``p``-th percentiles (asymmetric), read from a streaming histogram.
- ``"mse"``: the clipping range minimising the mean squared quantization error of the observed
  distribution (a search over shrunk ranges; coordinate descent on both ends for asymmetric
  formats), as in e.g. Banner et al. 2019 / Choukroun et al. 2019 (OMSE).
- ``"kl"``: TensorRT's entropy calibration (Migacz 2017): the clipping threshold minimising the KL
  divergence between the observed histogram and its quantized version, vectorised over all
  candidate thresholds; for unsigned or asymmetric formats the candidate windows shrink towards zero.
- ``"sawb"``: statistics-aware weight binning (Choi et al. 2018, "Bridging the accuracy gap for
  2-bit quantized neural networks", arXiv:1807.06964): ``alpha = c1 * sqrt(E[x^2]) - c2 * E[|x|]``
  with ``(c1, c2)`` for each bit width. The paper fits the coefficients by regressing the
  MSE-optimal clipping value on the two moments over several distributions; we did the same for
  this library's symmetric integer grid (``scale = alpha / qmax``; normal, Laplace, uniform,
  logistic, Student-t(5) and triangular distributions, 2 million samples each; :data:`SAWB_COEFFICIENTS`, refitted by
  ``tests/quant/test_observers.py``). Designed for weights.

Add one by subclassing :class:`Observer` and registering it::

    @OBSERVERS.register("absmax_half")
    class AbsmaxHalf(MinMaxObserver):
        def compute_range(self):
            lo, hi = super().compute_range()
            return lo / 2, hi / 2

Example:
    >>> import torch
    >>> from torchcompress.quant.observers import make_observer
    >>> obs = make_observer("minmax", qmin=-128, qmax=127, symmetric=True)
    >>> obs.observe(torch.tensor([[-1.0, 3.0]])); obs.observe(torch.tensor([[2.0, -4.0]]))
    >>> [t.tolist() for t in obs.compute_range()]
    [[-4.0], [3.0]]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CalibrationError
from ..registry import Registry
from . import functional as QF

__all__ = [
    "OBSERVERS",
    "SAWB_COEFFICIENTS",
    "SAWB_MAX_BITS",
    "HistogramObserver",
    "KLObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "SAWBObserver",
    "make_observer",
]

#: name -> observer class
OBSERVERS: Registry[type[Observer]] = Registry("observer")


class Observer(nn.Module):
    """Base class: accumulate statistics of ``[groups, elements]`` tensors, then give ranges.

    Statistics live in non-persistent buffers (they follow ``.to(device)`` but are not saved: once
    calibrated, a quantizer keeps only its scales and zero points).

    Args:
        qmin: smallest integer of the target format.
        qmax: largest integer of the target format.
        symmetric: the target format is symmetric (ranges are estimated on ``|x|``).
        include_zero: the quantizer widens ranges to include zero (activations).
        exact: observe exact values instead of streaming statistics (weights).
        percentile: see :class:`~torchcompress.quant.QuantConfig`.
        averaging_constant: see :class:`~torchcompress.quant.QuantConfig`.
        bins: see :class:`~torchcompress.quant.QuantConfig`.
    """

    def __init__(
        self,
        qmin: int,
        qmax: int,
        *,
        symmetric: bool,
        include_zero: bool = False,
        exact: bool = False,
        percentile: float = 99.99,
        averaging_constant: float = 0.01,
        bins: int = 2048,
    ) -> None:
        super().__init__()
        self.qmin = int(qmin)
        self.qmax = int(qmax)
        self.symmetric = bool(symmetric)
        self.include_zero = bool(include_zero)
        self.exact = bool(exact)
        self.percentile = float(percentile)
        self.averaging_constant = float(averaging_constant)
        self.bins = int(bins)
        self.register_buffer("min_val", None, persistent=False)
        self.register_buffer("max_val", None, persistent=False)
        self.batches = 0

    @property
    def observed(self) -> bool:
        """Whether at least one tensor was observed."""
        return self.batches > 0

    def reset(self) -> None:
        """Forget everything observed."""
        self.min_val = None
        self.max_val = None
        self.batches = 0

    def observe(self, x: Tensor) -> None:
        """Accumulate the statistics of ``x`` (``[groups, elements]``)."""
        x = x.detach()
        if x.dim() != 2:
            x = x.reshape(1, -1)
        if x.numel() == 0:
            return
        x = x.float()
        bmin, bmax = torch.aminmax(x, dim=1)
        if self.min_val is None or self.min_val.shape != bmin.shape:
            self.min_val, self.max_val = bmin, bmax
        else:
            self.min_val = torch.minimum(self.min_val, bmin)
            self.max_val = torch.maximum(self.max_val, bmax)
        self._update(x, bmin, bmax)
        self.batches += 1

    def _update(self, x: Tensor, bmin: Tensor, bmax: Tensor) -> None:
        """Subclass hook: update the statistics with one ``[groups, elements]`` float tensor."""

    def compute_range(self) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` per group (``[groups]`` each)."""
        self._check()
        return self.min_val, self.max_val  # type: ignore[return-value]

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` per group for the observer's integer format."""
        lo, hi = self.compute_range()
        return QF.choose_qparams(
            lo, hi, self.qmin, self.qmax, symmetric=self.symmetric, include_zero=self.include_zero
        )

    def _check(self) -> None:
        if not self.observed:
            raise CalibrationError(
                f"{type(self).__name__} has observed no data; run calibration data through the "
                "model first."
            )

    def _clip_symmetric(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """The observed range clipped to ``[-a, a]``."""
        lo = torch.maximum(self.min_val, -a)  # type: ignore[arg-type]
        hi = torch.minimum(self.max_val, a)  # type: ignore[arg-type]
        return lo, hi

    def _fq_error(self, values: Tensor, counts: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """Squared quantization error of weighted samples for candidate ranges.

        ``values``/``counts``: ``[G, M]``; ``lo``/``hi``: ``[G, C]``. Returns ``[G, C]``.
        """
        s, z = QF.choose_qparams(
            lo, hi, self.qmin, self.qmax, symmetric=self.symmetric, include_zero=self.include_zero
        )
        v = values.unsqueeze(1)
        q = QF.quantize(v, s.unsqueeze(-1), z.unsqueeze(-1), self.qmin, self.qmax)
        err = (QF.dequantize(q, s.unsqueeze(-1), z.unsqueeze(-1)) - v) ** 2
        return (err * counts.unsqueeze(1)).sum(-1)

    def extra_repr(self) -> str:
        return f"qmin={self.qmin}, qmax={self.qmax}, symmetric={self.symmetric}, batches={self.batches}"


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """The running minimum and maximum of every group."""


@OBSERVERS.register("moving_minmax")
class MovingMinMaxObserver(Observer):
    """Exponential moving averages of each batch's min and max (weight ``averaging_constant``).

    The first batch initialises the averages; batch ``t`` then moves them by
    ``averaging_constant * (batch_value - average)``.
    """

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
            c = self.averaging_constant
            self.avg_min = self.avg_min + c * (bmin - self.avg_min)
            self.avg_max = self.avg_max + c * (bmax - self.avg_max)

    def compute_range(self) -> tuple[Tensor, Tensor]:
        self._check()
        return self.avg_min, self.avg_max  # type: ignore[return-value]


class HistogramObserver(Observer):
    """Base of the observers that need the distribution: a streaming histogram per group.

    ``skip_zeros`` (a class attribute) leaves exact zeros out of the histogram: they are
    represented exactly by the zero point whatever the range, and after a ReLU they can hold half of
    the mass in one bin, which would dominate a distribution-matching criterion.

    For symmetric formats the histogram is of ``|x|`` over ``[0, max|x|]``; otherwise of ``x`` over
    ``[min, max]``. When a batch falls outside the current range the histogram is re-binned onto the
    wider range (its CDF interpolated linearly, i.e. counts assumed uniform inside a bin). With
    ``exact=True`` (weights) the observed tensor itself is used.
    """

    skip_zeros = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("hist", None, persistent=False)
        self.register_buffer("hist_lo", None, persistent=False)
        self.register_buffer("hist_hi", None, persistent=False)
        self.register_buffer("data", None, persistent=False)

    def reset(self) -> None:
        super().reset()
        self.hist = None
        self.hist_lo = None
        self.hist_hi = None
        self.data = None

    def _update(self, x: Tensor, bmin: Tensor, bmax: Tensor) -> None:
        if self.exact:
            self.data = x
            return
        v = x.abs() if self.symmetric else x
        if self.symmetric:
            lo = torch.zeros_like(bmin)
            hi = torch.maximum(bmin.abs(), bmax.abs())
        else:
            lo, hi = bmin, bmax
        if self.hist is None or self.hist.shape[0] != x.shape[0]:
            hi = torch.where(hi > lo, hi, lo + 1e-8 * lo.abs().clamp(min=1.0))
            self.hist_lo, self.hist_hi = lo, hi
            self.hist = torch.zeros(x.shape[0], self.bins, dtype=torch.float64, device=x.device)
        else:
            new_lo = torch.minimum(self.hist_lo, lo)
            new_hi = torch.maximum(self.hist_hi, hi)
            if bool(((new_lo < self.hist_lo) | (new_hi > self.hist_hi)).any()):
                self.hist = _rebin(self.hist, self.hist_lo, self.hist_hi, new_lo, new_hi)
                self.hist_lo, self.hist_hi = new_lo, new_hi
        h = _histc_rows(v, self.hist_lo, self.hist_hi, self.bins)
        if self.skip_zeros:
            h = _drop_zeros(h, v, self.hist_lo, self.hist_hi)
        self.hist += h

    def samples(self) -> tuple[Tensor, Tensor, bool]:
        """``(values, counts, abs_values)``: weighted samples of the observed distribution.

        Values are ``|x|`` (``abs_values`` true) for symmetric formats, else ``x``. From the
        histogram they are the bin centres with their counts.
        """
        self._check()
        if self.exact:
            v = self.data.abs() if self.symmetric else self.data  # type: ignore[union-attr]
            return v, torch.ones_like(v), self.symmetric
        width = (self.hist_hi - self.hist_lo) / self.bins  # type: ignore[operator]
        idx = torch.arange(self.bins, device=self.hist.device, dtype=torch.float32)  # type: ignore[union-attr]
        centres = self.hist_lo.unsqueeze(1) + (idx + 0.5) * width.unsqueeze(1)  # type: ignore[union-attr]
        return centres, self.hist.float(), self.symmetric  # type: ignore[union-attr]

    def histogram(self, bins: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(hist [G, B], lo [G], hi [G])``, built from the exact values when ``exact``."""
        self._check()
        if not self.exact:
            return self.hist.float(), self.hist_lo, self.hist_hi  # type: ignore[union-attr, return-value]
        v, _, _ = self.samples()
        b = bins or self.bins
        if self.symmetric:
            lo = torch.zeros(v.shape[0], device=v.device)
            hi = v.amax(1)
        else:
            lo, hi = v.amin(1), v.amax(1)
        hi = torch.where(hi > lo, hi, lo + 1e-8 * lo.abs().clamp(min=1.0))
        h = _histc_rows(v, lo, hi, b)
        if self.skip_zeros:
            h = _drop_zeros(h, v, lo, hi)
        return h.float(), lo, hi


def _histc_rows(v: Tensor, lo: Tensor, hi: Tensor, bins: int) -> Tensor:
    """Histogram of each row of ``v`` over its own ``[lo, hi]`` (float64 counts)."""
    g = v.shape[0]
    width = (hi - lo).clamp(min=1e-30) / bins
    idx = ((v - lo.unsqueeze(1)) / width.unsqueeze(1)).floor().clamp_(0, bins - 1).long()
    idx += torch.arange(g, device=v.device).unsqueeze(1) * bins
    counts = torch.bincount(idx.reshape(-1), minlength=g * bins)
    return counts.reshape(g, bins).double()


def _drop_zeros(h: Tensor, v: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Remove the count of exact zeros of each row from the bin holding zero."""
    zeros = (v == 0).sum(1).double()
    if not bool((zeros > 0).any()):
        return h
    bins = h.shape[1]
    width = (hi - lo).clamp(min=1e-30) / bins
    idx = ((0 - lo) / width).floor().clamp_(0, bins - 1).long()
    inside = (lo <= 0) & (hi >= 0)
    h = h.clone()
    h.scatter_add_(1, idx.unsqueeze(1), -(zeros * inside).unsqueeze(1))
    return h.clamp_(min=0)


def _rebin(hist: Tensor, lo: Tensor, hi: Tensor, new_lo: Tensor, new_hi: Tensor) -> Tensor:
    """Re-bin ``hist`` (rows over ``[lo, hi]``) onto ``[new_lo, new_hi]`` by interpolating its CDF."""
    g, b = hist.shape
    steps = torch.linspace(0, 1, b + 1, device=hist.device, dtype=torch.float64)
    old_edges = lo.double().unsqueeze(1) + steps * (hi - lo).double().unsqueeze(1)
    new_edges = new_lo.double().unsqueeze(1) + steps * (new_hi - new_lo).double().unsqueeze(1)
    cdf = torch.cat([hist.new_zeros(g, 1), hist.cumsum(1)], dim=1)
    pos = torch.searchsorted(old_edges.contiguous(), new_edges.contiguous()).clamp_(1, b)
    e0 = old_edges.gather(1, pos - 1)
    e1 = old_edges.gather(1, pos)
    c0 = cdf.gather(1, pos - 1)
    c1 = cdf.gather(1, pos)
    t = ((new_edges - e0) / (e1 - e0).clamp(min=1e-300)).clamp_(0, 1)
    new_cdf = c0 + t * (c1 - c0)
    new_cdf[:, -1] = cdf[:, -1]
    return new_cdf.diff(dim=1).clamp_(min=0)


def _weighted_quantile(values: Tensor, counts: Tensor, q: float) -> Tensor:
    """Per-row ``q``-quantile (``0 <= q <= 1``) of weighted samples."""
    v, order = values.sort(dim=1)
    c = counts.gather(1, order)
    cdf = c.cumsum(1)
    total = cdf[:, -1:]
    target = q * total
    idx = torch.searchsorted(cdf.contiguous(), target.contiguous()).clamp_(0, v.shape[1] - 1)
    return v.gather(1, idx).squeeze(1)


@OBSERVERS.register("percentile")
class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile``-th percentile (of ``|x|`` for symmetric formats).

    For asymmetric formats the range is ``[P(100 - p), P(p)]``. Percentiles are read from the
    streaming histogram (to one bin), or computed exactly for weights.
    """

    def compute_range(self) -> tuple[Tensor, Tensor]:
        v, c, absolute = self.samples()
        p = self.percentile / 100.0
        if absolute:
            a = _weighted_quantile(v, c, p)
            return self._clip_symmetric(a)
        lo = _weighted_quantile(v, c, 1.0 - p)
        hi = _weighted_quantile(v, c, p)
        return torch.minimum(lo, hi), torch.maximum(lo, hi)


@OBSERVERS.register("mse")
class MSEObserver(HistogramObserver):
    """The clipping range that minimises the mean squared quantization error.

    Symmetric formats search ``a = alpha * max|x|`` over ``alpha`` in ``1/candidates .. 1``;
    asymmetric formats shrink each end in turn (two rounds of coordinate descent). The error of a
    candidate is evaluated exactly with this format's rounding, over the histogram (bin centres
    weighted by counts) or over the exact weight values.

    Args:
        candidates: grid points of each 1-D search (default 100).
    """

    candidates = 100

    def compute_range(self) -> tuple[Tensor, Tensor]:
        v, c, absolute = self.samples()
        if not self.exact:  # drop empty bins: same error, less work
            keep = c.sum(0) > 0
            v, c = v[:, keep], c[:, keep]
        alphas = torch.arange(1, self.candidates + 1, device=v.device) / self.candidates
        lo0, hi0 = self.min_val, self.max_val
        if absolute:
            signed_v = v
            amax = v.amax(1) if self.exact else self.hist_hi  # type: ignore[assignment]
            a = amax.unsqueeze(1) * alphas  # [G, C]
            lo_c = torch.maximum(lo0.unsqueeze(1), -a)  # type: ignore[union-attr]
            hi_c = torch.minimum(hi0.unsqueeze(1), a)  # type: ignore[union-attr]
            # |x| samples: the error of -x equals that of x for signed symmetric formats; for
            # unsigned one-sided data the samples are the data themselves.
            err = _chunked_error(self, signed_v, c, lo_c, hi_c)
            best = _last_argmin(err)
            return lo_c.gather(1, best).squeeze(1), hi_c.gather(1, best).squeeze(1)
        lo, hi = lo0.clone(), hi0.clone()  # type: ignore[union-attr]
        if self.include_zero:  # the quantizer widens to zero: search the widened range
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        for _ in range(2):
            span = (hi - lo).unsqueeze(1)
            hi_c = lo.unsqueeze(1) + alphas * span
            if self.include_zero:
                hi_c = hi_c.clamp(min=0)
            lo_rep = lo.unsqueeze(1).expand_as(hi_c)
            err = _chunked_error(self, v, c, lo_rep, hi_c)
            hi = hi_c.gather(1, _last_argmin(err)).squeeze(1)
            span = (hi - lo).unsqueeze(1)
            lo_c = hi.unsqueeze(1) - alphas * span
            if self.include_zero:
                lo_c = lo_c.clamp(max=0)
            hi_rep = hi.unsqueeze(1).expand_as(lo_c)
            err = _chunked_error(self, v, c, lo_c, hi_rep)
            lo = lo_c.gather(1, _last_argmin(err)).squeeze(1)
        return lo, hi


def _last_argmin(err: Tensor) -> Tensor:
    """Index of the minimum of each row, the last one on ties (the widest range: keep, not clip)."""
    k = err.shape[1]
    return k - 1 - err.flip(1).argmin(1, keepdim=True)


def _chunked_error(
    obs: Observer, v: Tensor, c: Tensor, lo: Tensor, hi: Tensor, budget: int = 1 << 22
) -> Tensor:
    g, m = v.shape
    k = lo.shape[1]
    step = max(1, budget // max(1, m * k))
    out = []
    for i in range(0, g, step):
        out.append(
            obs._fq_error(v[i : i + step], c[i : i + step], lo[i : i + step], hi[i : i + step])
        )
    return torch.cat(out)


@OBSERVERS.register("kl")
class KLObserver(HistogramObserver):
    """TensorRT entropy calibration (Migacz 2017, "8-bit Inference with TensorRT").

    For each candidate window of the histogram (``[0, t)`` of ``|x|`` for signed symmetric formats,
    with ``2^(b-1)`` levels; for unsigned or asymmetric formats windows shrinking towards zero, with
    ``2^b`` levels), the reference distribution ``P`` is the histogram inside the window with the
    mass outside folded into its edge bins, and ``Q`` is the window merged into the format's levels
    and expanded back (each level's mass spread over its non-empty bins). The window with the
    smallest ``KL(P || Q)`` gives the range. All candidates are evaluated at once (in chunks). Exact
    zeros are left out of the histogram (as pytorch-quantization's ``skip_zeros``): they are exact
    at any range, and the spike a ReLU leaves at zero would otherwise push the threshold down.

    Args:
        max_candidates: candidate windows per group (the search grid is subsampled beyond it).
    """

    max_candidates = 1024
    skip_zeros = True
    #: candidates per group when observing weights exactly (one search per output channel)
    max_candidates_exact = 128

    def compute_range(self) -> tuple[Tensor, Tensor]:
        levels_signed = (self.qmax - self.qmin + 1) // 2
        levels_full = self.qmax - self.qmin + 1
        bins = self.bins if not self.exact else min(self.bins, max(4 * levels_full, 512))
        hist, lo, hi = self.histogram(bins)
        g, b = hist.shape
        width = (hi - lo) / b
        one_sided = self.min_val >= 0  # type: ignore[operator]
        if self.symmetric:
            # |x| histogram: windows [0, t). Signed formats spend half their levels on each side;
            # unsigned formats on one-sided data use all levels for [0, t).
            levels = torch.where(
                one_sided & torch.tensor(self.qmin >= 0, device=hist.device),
                torch.tensor(levels_full, device=hist.device),
                torch.tensor(levels_signed, device=hist.device),
            )
            out_a = torch.empty(g, device=hist.device)
            for i in range(g):
                L = int(levels[i])
                starts = torch.zeros(1, dtype=torch.long, device=hist.device)
                ends = self._ends(L, b, hist.device)
                best = _kl_best_window(hist[i], starts.expand_as(ends), ends, min(L, b))
                out_a[i] = lo[i] + ends[best].float() * width[i]
            return self._clip_symmetric(out_a)
        out_lo = torch.empty(g, device=hist.device)
        out_hi = torch.empty(g, device=hist.device)
        for i in range(g):
            L = min(levels_full, b)
            z = float(((-lo[i]) / width[i]).clamp(0, b))
            n = min(self._max_candidates(), b)
            alphas = torch.linspace(L / b, 1.0, n, device=hist.device, dtype=torch.float64)
            starts = torch.floor(z - alphas * z).long().clamp_(0, b - 1)
            ends = torch.ceil(z + alphas * (b - z)).long().clamp_(1, b)
            ends = torch.maximum(ends, starts + min(L, b))
            ends = ends.clamp_(max=b)
            starts = torch.minimum(starts, ends - 1)
            best = _kl_best_window(hist[i], starts, ends, L)
            out_lo[i] = lo[i] + starts[best].float() * width[i]
            out_hi[i] = lo[i] + ends[best].float() * width[i]
        return out_lo, out_hi

    def _max_candidates(self) -> int:
        return self.max_candidates_exact if self.exact else self.max_candidates

    def _ends(self, levels: int, b: int, device: torch.device) -> Tensor:
        lo_end = min(levels, b)
        n = b - lo_end + 1
        if n <= self._max_candidates():
            return torch.arange(lo_end, b + 1, device=device)
        return (
            torch.linspace(lo_end, b, self._max_candidates(), device=device).round().long().unique()
        )


def _kl_best_window(
    hist: Tensor, starts: Tensor, ends: Tensor, levels: int, chunk: int = 256
) -> int:
    """Index of the window ``[starts[c], ends[c])`` of ``hist`` with the smallest KL(P || Q)."""
    b = hist.shape[0]
    h = hist.double()
    cum = torch.cat([h.new_zeros(1), h.cumsum(0)])
    bins = torch.arange(b, device=h.device)
    nonzero = (h > 0).double()
    kls = []
    eps = 1e-4
    for i in range(0, starts.numel(), chunk):
        s = starts[i : i + chunk].unsqueeze(1)
        e = ends[i : i + chunk].unsqueeze(1)
        inside = (bins >= s) & (bins < e)
        p = torch.where(inside, h, h.new_zeros(()))
        left = cum[s.squeeze(1)]
        right = cum[-1] - cum[e.squeeze(1)]
        p = p.scatter_add(1, s, left.unsqueeze(1))
        p = p.scatter_add(1, e - 1, right.unsqueeze(1))
        # merge the window into `levels` chunks and expand back over the non-empty bins
        # TensorRT's partition: level j covers bins [floor(j n / L), floor((j + 1) n / L))
        rel = (bins - s).clamp(min=0)
        chunk_id = (((rel + 1) * levels + (e - s) - 1) // (e - s) - 1).clamp_(0, levels - 1)
        q_in = torch.where(inside, h, h.new_zeros(()))
        nz_in = torch.where(inside, nonzero, h.new_zeros(()))
        sums = h.new_zeros(p.shape[0], levels).scatter_add_(1, chunk_id, q_in)
        cnts = h.new_zeros(p.shape[0], levels).scatter_add_(1, chunk_id, nz_in)
        q = (sums / cnts.clamp(min=1)).gather(1, chunk_id) * nz_in
        p = p / p.sum(1, keepdim=True).clamp(min=1e-300)
        q = q / q.sum(1, keepdim=True).clamp(min=1e-300)
        # smooth Q where P has mass but Q has none (as MXNet's/TVM's reference implementations)
        zero_q = (q <= 0) & inside
        n_zero = zero_q.sum(1, keepdim=True).double()
        n_nonzero = (inside & ~zero_q).sum(1, keepdim=True).double().clamp(min=1)
        q = torch.where(zero_q, q + eps, q - eps * n_zero / n_nonzero * (q > 0))
        q = q.clamp(min=1e-12)
        terms = torch.where(p > 0, p * torch.log(p / q), p.new_zeros(()))
        kls.append(terms.sum(1))
    return int(torch.cat(kls).argmin())


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


@OBSERVERS.register("sawb")
class SAWBObserver(Observer):
    """Statistics-aware weight binning (Choi et al. 2018): ``alpha = c1 sqrt(E x^2) - c2 E|x|``.

    Streams ``E[x^2]`` and ``E|x|`` per group; the range is the observed range clipped to
    ``[-alpha, alpha]``. Used up to :data:`SAWB_MAX_BITS` (4) bits, the low-bit regime the method
    is for; wider formats use the plain min/max. Above 4 bits the fitted coefficients grow large
    and nearly cancel, so ``alpha`` becomes unstable for distributions outside the fit family (for
    uniform data the 8-bit fit clips at 0.56 of the maximum, where the optimum is about the maximum;
    depthwise filters of nine weights look like that and an 8-bit MobileNetV2 collapsed), while
    the best clip at those widths is close to the maximum anyway.
    """

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


def make_observer(
    name: str,
    *,
    qmin: int,
    qmax: int,
    symmetric: bool,
    include_zero: bool = False,
    exact: bool = False,
    **options: Any,
) -> Observer:
    """Build the registered observer ``name`` for the integer range ``[qmin, qmax]``.

    Raises:
        ConfigError: unknown observer name (the message lists the registered ones).
    """
    cls = OBSERVERS.get(name)
    return cls(qmin, qmax, symmetric=symmetric, include_zero=include_zero, exact=exact, **options)
