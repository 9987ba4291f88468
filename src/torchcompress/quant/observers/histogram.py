"""Observers of the distribution, from a streaming histogram: ``"percentile"``, ``"mse"``, ``"kl"``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...errors import CalibrationError, ConfigError, check_range
from .base import OBSERVERS, Observer, ObserverSpec, all_reduce_

__all__ = [
    "KL",
    "MSE",
    "Histogram",
    "HistogramObserver",
    "KLObserver",
    "MSEObserver",
    "Percentile",
    "PercentileObserver",
]


@dataclass(frozen=True)
class Histogram(ObserverSpec):
    """Options of the histogram-based observers (the base of :class:`MSE` and :class:`KL`).

    Args:
        bins: histogram bins per group (at least 16).

    Example:
        >>> from torchcompress.quant.observers import Histogram
        >>> Histogram(bins=256).bins
        256
    """

    bins: int = 2048

    def validate(self) -> None:
        _check_bins(self)


def _check_bins(spec: Any) -> None:
    b = spec.bins
    if isinstance(b, bool) or not isinstance(b, int) or b < 16:
        raise ConfigError(f"{type(spec).__name__}.bins must be an int >= 16, got {b!r}.")


class HistogramObserver(Observer):
    """Base of the observers that need the distribution: a streaming histogram per group.

    ``skip_zeros`` (a class attribute) leaves exact zeros out of the histogram: they are
    represented exactly by the zero point whatever the range, and after a ReLU they can hold half of
    the mass in one bin, which would dominate a distribution-matching criterion.

    For symmetric formats the histogram is of ``|x|`` over ``[0, max|x|]``; otherwise of ``x`` over
    ``[min, max]``. Calibration fixes that range in a first pass over the data
    (:meth:`~Observer.begin_range_pass`, :meth:`fix_range`); the histogram then counts the second
    pass over the fixed range, so its counts (integers) do not depend on the order of the batches
    and sum exactly across ranks. Fed without a range pass (data that can be read only once), the
    histogram starts on the first batch's range and, when a batch falls outside it, is re-binned
    onto the wider range (its CDF interpolated linearly, i.e. counts assumed uniform inside a bin).
    With ``exact=True`` (weights) the observed tensor itself is used.
    """

    skip_zeros = False
    Spec: ClassVar[type[ObserverSpec]] = Histogram
    spec: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("hist", None, persistent=False)
        self.register_buffer("hist_lo", None, persistent=False)
        self.register_buffer("hist_hi", None, persistent=False)
        self.register_buffer("data", None, persistent=False)
        #: the histogram's range was fixed by a range pass (no re-binning)
        self.fixed = False

    @property
    def needs_range_pass(self) -> bool:
        return not self.exact

    def reset(self) -> None:
        super().reset()
        self.hist = None
        self.hist_lo = None
        self.hist_hi = None
        self.data = None
        self.fixed = False

    def _span(self, bmin: Tensor, bmax: Tensor) -> tuple[Tensor, Tensor]:
        """The histogram's range for values in ``[bmin, bmax]`` (of ``|x|`` if symmetric)."""
        if self.symmetric:
            return torch.zeros_like(bmin), torch.maximum(bmin.abs(), bmax.abs())
        return bmin, bmax

    def fix_range(self) -> None:
        """Start an empty histogram over the range seen so far (it is not re-binned afterwards:
        values outside it count in the edge bins)."""
        lo, hi = self._span(self.min_val, self.max_val)  # type: ignore[arg-type]
        hi = torch.where(hi > lo, hi, lo + 1e-8 * lo.abs().clamp(min=1.0))
        self.hist_lo, self.hist_hi = lo, hi
        self.hist = torch.zeros(lo.shape[0], self.spec.bins, dtype=torch.float64, device=lo.device)
        self.fixed = True

    def reduce_stats(self, groups: int, device: torch.device) -> None:
        """Sum the ranks' histograms (counts over the same fixed range)."""
        if self.exact:
            return  # a weight: the same tensor on every rank
        if not self.fixed:
            raise CalibrationError(
                f"{type(self).__name__}: histograms over different ranges cannot be combined "
                "across ranks; calibrate with a range pass (begin_range_pass / end_range_pass)."
            )
        h = self.hist
        if h is None:
            h = torch.zeros(groups, self.spec.bins, dtype=torch.float64, device=device)
        self.hist = all_reduce_(h, "sum")

    def _update(self, x: Tensor, bmin: Tensor, bmax: Tensor) -> None:
        if self.exact:
            self.data = x
            return
        v = x.abs() if self.symmetric else x
        lo, hi = self._span(bmin, bmax)
        if self.fixed and self.hist is not None:
            pass  # the range pass fixed it
        elif self.hist is None or self.hist.shape[0] != x.shape[0]:
            hi = torch.where(hi > lo, hi, lo + 1e-8 * lo.abs().clamp(min=1.0))
            self.hist_lo, self.hist_hi = lo, hi
            self.hist = torch.zeros(
                x.shape[0], self.spec.bins, dtype=torch.float64, device=x.device
            )
        else:
            new_lo = torch.minimum(self.hist_lo, lo)
            new_hi = torch.maximum(self.hist_hi, hi)
            if bool(((new_lo < self.hist_lo) | (new_hi > self.hist_hi)).any()):
                self.hist = _rebin(self.hist, self.hist_lo, self.hist_hi, new_lo, new_hi)
                self.hist_lo, self.hist_hi = new_lo, new_hi
        h = _histc_rows(v, self.hist_lo, self.hist_hi, self.spec.bins)
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
        width = (self.hist_hi - self.hist_lo) / self.spec.bins  # type: ignore[operator]
        idx = torch.arange(self.spec.bins, device=self.hist.device, dtype=torch.float32)  # type: ignore[union-attr]
        centres = self.hist_lo.unsqueeze(1) + (idx + 0.5) * width.unsqueeze(1)  # type: ignore[union-attr]
        return centres, self.hist.float(), self.symmetric  # type: ignore[union-attr]

    def histogram(self, bins: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(hist [G, B], lo [G], hi [G])``, built from the exact values when ``exact``."""
        self._check()
        if not self.exact:
            return self.hist.float(), self.hist_lo, self.hist_hi  # type: ignore[union-attr, return-value]
        v, _, _ = self.samples()
        b = bins or self.spec.bins
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


@dataclass(frozen=True)
class Percentile(ObserverSpec):
    """The ``"percentile"`` observer: clip at a percentile of a streaming histogram.

    Args:
        percentile: the percentile of the values (of ``|x|`` for symmetric formats) kept inside the
            range, in ``(0, 100]``.
        bins: histogram bins per group (at least 16).

    Example:
        >>> import torchcompress as tc
        >>> cfg = tc.QuantConfig(observer=tc.quant.Percentile(99.9))
        >>> cfg.observer
        Percentile(percentile=99.9, bins=2048)
    """

    percentile: float = 99.99
    bins: int = 2048
    name: ClassVar[str] = "percentile"

    def validate(self) -> None:
        check_range(
            "percentile",
            self.percentile,
            0.0,
            100.0,
            low_inclusive=False,
            owner=type(self).__name__,
        )
        _check_bins(self)


@OBSERVERS.register("percentile")
class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile``-th percentile (of ``|x|`` for symmetric formats).

    For asymmetric formats the range is ``[P(100 - p), P(p)]``. Percentiles are read from the
    streaming histogram (to one bin), or computed exactly for weights.
    """

    Spec = Percentile

    def compute_range(self) -> tuple[Tensor, Tensor]:
        v, c, absolute = self.samples()
        p = self.spec.percentile / 100.0
        if absolute:
            a = _weighted_quantile(v, c, p)
            return self._clip_symmetric(a)
        lo = _weighted_quantile(v, c, 1.0 - p)
        hi = _weighted_quantile(v, c, p)
        return torch.minimum(lo, hi), torch.maximum(lo, hi)


@dataclass(frozen=True)
class MSE(Histogram):
    """The ``"mse"`` observer: the clipping range minimising the squared quantization error.

    Args:
        bins: histogram bins per group (at least 16).

    Example:
        >>> import torchcompress as tc
        >>> tc.QuantConfig(weight_observer=tc.quant.MSE()).weight_observer_name
        'mse'
    """

    name: ClassVar[str] = "mse"


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
    Spec = MSE

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


@dataclass(frozen=True)
class KL(Histogram):
    """The ``"kl"`` observer (TensorRT's entropy calibration).

    Args:
        bins: histogram bins per group (at least 16).

    Example:
        >>> import torchcompress as tc
        >>> tc.QuantConfig(observer=tc.quant.KL(bins=512)).to_dict()["observer"]
        {'__config__': 'KL', 'bins': 512}
    """

    name: ClassVar[str] = "kl"


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

    Spec = KL
    max_candidates = 1024
    skip_zeros = True
    #: candidates per group when observing weights exactly (one search per output channel)
    max_candidates_exact = 128

    def compute_range(self) -> tuple[Tensor, Tensor]:
        levels_signed = (self.qmax - self.qmin + 1) // 2
        levels_full = self.qmax - self.qmin + 1
        bins = self.spec.bins if not self.exact else min(self.spec.bins, max(4 * levels_full, 512))
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
