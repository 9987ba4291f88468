"""Each observer against a hand-computed value; streaming histograms; bounded memory."""

from __future__ import annotations

import math

import pytest
import torch

from torchcompress.errors import CalibrationError, ConfigError
from torchcompress.quant import functional as QF
from torchcompress.quant.observers import OBSERVERS, SAWB_COEFFICIENTS, make_observer


def row(*vals: float) -> torch.Tensor:
    return torch.tensor([list(vals)])


def test_registry_has_all_observers() -> None:
    assert set(OBSERVERS.names()) >= {"minmax", "moving_minmax", "percentile", "mse", "kl", "sawb"}
    with pytest.raises(ConfigError, match="registered"):
        make_observer("minmx", qmin=0, qmax=255, symmetric=False)


def test_minmax_accumulates() -> None:
    obs = make_observer("minmax", qmin=0, qmax=255, symmetric=False)
    obs.observe(row(-1.0, 2.0))
    obs.observe(row(0.5, 7.0))
    lo, hi = obs.compute_range()
    assert lo.tolist() == [-1.0] and hi.tolist() == [7.0]
    s, _ = obs.qparams()
    assert float(s) == pytest.approx(8.0 / 255)


def test_minmax_without_data_is_an_error() -> None:
    obs = make_observer("minmax", qmin=0, qmax=255, symmetric=False)
    with pytest.raises(CalibrationError):
        obs.compute_range()


def test_moving_minmax_hand_computed() -> None:
    obs = make_observer("moving_minmax", qmin=0, qmax=255, symmetric=False, averaging_constant=0.5)
    obs.observe(row(-1.0, 1.0))
    obs.observe(row(-3.0, 5.0))
    lo, hi = obs.compute_range()
    assert float(lo) == pytest.approx(-2.0) and float(hi) == pytest.approx(3.0)


def test_percentile_symmetric_and_asymmetric() -> None:
    x = torch.arange(10000, dtype=torch.float32).reshape(1, -1)
    obs = make_observer("percentile", qmin=-128, qmax=127, symmetric=True, percentile=99.0)
    for chunk in x.split(1000, dim=1):  # streamed
        obs.observe(chunk)
    lo, hi = obs.compute_range()
    width = 9999 / 2048
    assert float(hi) == pytest.approx(9900, abs=2 * width)
    assert float(lo) == 0.0  # clipped to the data (all non-negative)
    obs = make_observer("percentile", qmin=0, qmax=255, symmetric=False, percentile=99.0)
    y = x - 5000
    for chunk in y.split(1000, dim=1):
        obs.observe(chunk)
    lo, hi = obs.compute_range()
    assert float(lo) == pytest.approx(-4900, abs=2 * width)
    assert float(hi) == pytest.approx(4900, abs=2 * width)


def test_percentile_exact_for_weights() -> None:
    w = torch.arange(1, 101, dtype=torch.float32).reshape(1, -1)
    obs = make_observer("percentile", qmin=-8, qmax=7, symmetric=True, exact=True, percentile=90.0)
    obs.observe(w)
    _, hi = obs.compute_range()
    assert float(hi) == 90.0


def test_streaming_histogram_rebins_and_stays_bounded() -> None:
    g = torch.Generator().manual_seed(0)
    obs = make_observer("percentile", qmin=0, qmax=255, symmetric=False, percentile=95.0, bins=512)
    seen = []
    for i in range(30):
        b = torch.randn(1, 2000, generator=g) * (1 + i / 10)  # the range grows: re-binning
        seen.append(b)
        obs.observe(b)
    assert tuple(obs.hist.shape) == (1, 512)  # memory does not grow with batches
    allx = torch.cat(seen, dim=1).reshape(-1)
    lo, hi = obs.compute_range()
    exact_hi = float(torch.quantile(allx, 0.95))
    exact_lo = float(torch.quantile(allx, 0.05))
    width = float(allx.max() - allx.min()) / 512
    assert float(hi) == pytest.approx(exact_hi, abs=3 * width)
    assert float(lo) == pytest.approx(exact_lo, abs=3 * width)


def test_mse_hand_computed() -> None:
    # 2-bit unsigned: 100 ones and one 10. Clipping at a = 0.1 k: error 100 (1 - s round(1/s))^2 +
    # (10 - a)^2 with s = a / 3; the minimum over the grid is at a = 3.6 (44.96, vs 49 at a = 3).
    x = torch.tensor([[1.0] * 100 + [10.0]])
    obs = make_observer("mse", qmin=0, qmax=3, symmetric=True, exact=True)
    obs.observe(x)
    lo, hi = obs.compute_range()
    assert float(lo) == 1.0  # the data's minimum (one-sided data keep zero point 0)
    assert float(hi) == pytest.approx(3.6, abs=1e-5)
    # on the histogram path the answer is the same up to a bin
    obs = make_observer("mse", qmin=0, qmax=3, symmetric=True, bins=2048)
    obs.observe(x)
    _, hi2 = obs.compute_range()
    assert float(hi2) == pytest.approx(3.6, abs=0.11)


def test_mse_keeps_full_range_for_uniform_data() -> None:
    x = torch.linspace(-1, 1, 10001).reshape(1, -1)
    obs = make_observer("mse", qmin=-128, qmax=127, symmetric=True)
    obs.observe(x)
    _, hi = obs.compute_range()
    assert float(hi) >= 0.98


def test_mse_asymmetric_clips_outlier_side() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.rand(1, 50_000, generator=g), torch.tensor([[40.0]])], dim=1)
    obs = make_observer("mse", qmin=0, qmax=15, symmetric=False, exact=True)
    obs.observe(x)
    lo, hi = obs.compute_range()
    assert float(hi) < 5.0 and float(lo) < 0.1


def _kl_reference(hist: list[float], levels: int) -> int:
    """TensorRT's entropy calibration, written as a plain loop (Migacz 2017)."""
    best, best_i = math.inf, -1
    n = len(hist)
    for i in range(levels, n + 1):
        p = list(hist[:i])
        p[i - 1] += sum(hist[i:])
        ref = hist[:i]
        q = [0.0] * i
        for j in range(levels):
            a = (j * i) // levels
            b = ((j + 1) * i) // levels
            chunk = ref[a:b]
            nz = sum(1 for c in chunk if c > 0)
            if nz:
                avg = sum(chunk) / nz
                for t in range(a, b):
                    q[t] = avg if ref[t] > 0 else 0.0
        sp, sq = sum(p), sum(q)
        p = [v / sp for v in p]
        q = [v / sq for v in q]
        zero = [k for k in range(i) if q[k] <= 0]
        nzq = i - len(zero)
        eps = 1e-4
        q = [v + eps if v <= 0 else v - eps * len(zero) / max(nzq, 1) for v in q]
        kl = sum(pv * math.log(pv / max(qv, 1e-12)) for pv, qv in zip(p, q) if pv > 0)
        if kl < best:
            best, best_i = kl, i
    return best_i


def test_kl_matches_reference_loop() -> None:
    from torchcompress.quant.observers.histogram import _kl_best_window

    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g).abs()
    x[:20] *= 8  # outliers
    hist = torch.histc(x, bins=64, min=0, max=float(x.max()))
    levels = 8
    ends = torch.arange(levels, 65)
    best = _kl_best_window(hist, torch.zeros_like(ends), ends, levels)
    assert int(ends[best]) == _kl_reference(hist.tolist(), levels)


def test_kl_observer_clips_outliers_signed_and_unsigned() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 20000, generator=g)
    x[0, :10] = 30.0
    obs = make_observer("kl", qmin=-128, qmax=127, symmetric=True, bins=512)
    obs.observe(x)
    _, hi = obs.compute_range()
    assert 2.0 < float(hi) < 20.0
    relu = x.clamp(min=0)
    obs = make_observer("kl", qmin=0, qmax=255, symmetric=True, bins=512)
    obs.observe(relu)
    lo, hi2 = obs.compute_range()
    assert float(lo) == 0.0 and 2.0 < float(hi2) < 20.0
    obs = make_observer("kl", qmin=0, qmax=255, symmetric=False, bins=512)
    obs.observe(x)
    lo3, hi3 = obs.compute_range()
    assert float(lo3) < -2.0 and 2.0 < float(hi3) < 20.0


def test_sawb_hand_computed() -> None:
    x = row(-2.0, -1.0, 1.0, 2.0)
    obs = make_observer("sawb", qmin=-2, qmax=1, symmetric=True, exact=True)
    obs.observe(x)
    lo, hi = obs.compute_range()
    c1, c2 = SAWB_COEFFICIENTS[2]
    alpha = c1 * math.sqrt(2.5) - c2 * 1.5
    assert float(hi) == pytest.approx(min(2.0, alpha), rel=1e-6)
    assert float(lo) == pytest.approx(-min(2.0, alpha), rel=1e-6)


def test_sawb_coefficients_refit() -> None:
    """The 2-bit table entry is what the documented fit gives (fewer samples here)."""
    g = torch.Generator().manual_seed(0)
    n = 40_000

    def unit(t: torch.Tensor) -> torch.Tensor:
        return (t / t.pow(2).mean().sqrt()).double()

    u = torch.rand(n, generator=g).clamp(1e-7, 1 - 1e-7)
    dists = [
        unit(torch.randn(n, generator=g)),
        unit(
            torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
            * torch.empty(n).exponential_(generator=g)
        ),
        unit(torch.rand(n, generator=g) * 2 - 1),
        unit(torch.log(u / (1 - u))),
        unit(torch.rand(n, generator=g) + torch.rand(n, generator=g) - 1),
    ]
    rows = []
    for x in dists:
        grid = torch.linspace(0.5, 3.0, 126, dtype=torch.float64)
        s = grid / 1.5  # alpha -> scale: 2-bit keeps its four levels (functional.symmetric_scale)
        q = torch.clamp(torch.round(x[None] / s[:, None]), -2, 1)
        err = ((q * s[:, None] - x[None]) ** 2).mean(1)
        rows.append((float(grid[err.argmin()]), float(x.abs().mean())))
    a = torch.tensor([[1.0, -m1] for _, m1 in rows], dtype=torch.float64)
    y = torch.tensor([[al] for al, _ in rows], dtype=torch.float64)
    c = torch.linalg.lstsq(a, y).solution.squeeze()
    c1, c2 = SAWB_COEFFICIENTS[2]
    # predictions agree on a Gaussian (the coefficients are collinear, so compare alpha)
    m1 = math.sqrt(2 / math.pi)
    assert float(c[0] - c[1] * m1) == pytest.approx(c1 - c2 * m1, rel=0.03)


def test_observers_are_per_group() -> None:
    x = torch.tensor([[-1.0, 1.0], [-4.0, 2.0]])
    for name in ("minmax", "moving_minmax", "percentile", "mse", "kl", "sawb"):
        obs = make_observer(name, qmin=-128, qmax=127, symmetric=True, exact=True, percentile=100.0)
        obs.observe(x)
        lo, hi = obs.compute_range()
        assert lo.shape == (2,) and hi.shape == (2,), name
        s, _ = obs.qparams()
        assert s.shape == (2,) and bool((s > 0).all()), name


def test_observer_state_is_not_saved() -> None:
    obs = make_observer("kl", qmin=0, qmax=255, symmetric=False)
    obs.observe(torch.randn(1, 100))
    assert obs.state_dict() == {}
    assert QF.SCALE_EPS > 0


def test_a_new_observer_with_options_is_two_small_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered from outside: an observer and its spec; used by name or by spec, saved, loaded."""
    import copy
    from dataclasses import dataclass

    import torchcompress as tc
    from torchcompress.quant.observers import MinMaxObserver, ObserverSpec

    monkeypatch.setattr(OBSERVERS, "_entries", dict(OBSERVERS._entries))

    @dataclass(frozen=True)
    class Shrunk(ObserverSpec):
        factor: float = 0.5

    @OBSERVERS.register("shrunk")
    class ShrunkMinMax(MinMaxObserver):
        Spec = Shrunk

        def compute_range(self):
            lo, hi = super().compute_range()
            return lo * self.spec.factor, hi * self.spec.factor

    assert Shrunk.name == "shrunk"
    model = torch.nn.Sequential(torch.nn.Linear(4, 4)).eval()
    x = torch.linspace(-2, 2, 16).reshape(4, 4)
    q = tc.quantize(copy.deepcopy(model), tc.QuantConfig(observer=Shrunk(0.25)), [x], graph="layer")
    fq = q[0].input_quant
    assert isinstance(fq.observer, ShrunkMinMax) and fq.observer_spec == Shrunk(0.25)
    assert float(fq.scale) == pytest.approx(1.0 / 255)  # [-0.5, 0.5] on 256 levels
    cfg = tc.QuantConfig(observer="shrunk")
    assert cfg.observer == Shrunk() and tc.QuantConfig.from_dict(cfg.to_dict()) == cfg
    import tempfile

    path = tempfile.mkdtemp() + "/m.safetensors"
    tc.save(q, path)
    back = tc.load(path, copy.deepcopy(model))
    assert back[0].input_quant.observer_spec == Shrunk(0.25)
    assert torch.equal(back(x), q(x))


def test_an_observer_without_options_gets_a_spec_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchcompress.quant.observers import MinMax, MinMaxObserver

    monkeypatch.setattr(OBSERVERS, "_entries", dict(OBSERVERS._entries))

    @OBSERVERS.register("halved")
    class Halved(MinMaxObserver):
        def compute_range(self):
            lo, hi = super().compute_range()
            return lo / 2, hi / 2

    spec = Halved.Spec()
    assert spec.name == "halved" and isinstance(spec, MinMax) and MinMax.name == "minmax"
    obs = make_observer("halved", qmin=0, qmax=255, symmetric=False)
    obs.observe(row(-2.0, 4.0))
    assert [t.tolist() for t in obs.compute_range()] == [[-1.0], [2.0]]
