"""quant.calib: calibration on the shared engine (passes, modes restored, no hooks left, statistics
by hand)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.calibration import collect, run_batches
from torchcompress.errors import CalibrationError, DataError, NumericalError
from torchcompress.quant import IntSpec, QuantConfig
from torchcompress.quant.build import make_activation_quant
from torchcompress.quant.calib import calibrate, check_reaches, example_batch, rereadable


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.conv = nn.Conv1d(2, 2, 1)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.lin(x).unsqueeze(-1))


def test_run_batches_restores_modes_and_counts() -> None:
    m = Two().train()
    m.lin.eval()
    seen = []

    def step(batch, i: int) -> None:
        seen.append(("lin", m.training, torch.is_grad_enabled()))
        m(*batch.args)

    n = run_batches(m, [torch.randn(2, 3) for _ in range(3)], step=step, max_batches=2)
    assert n == 2 and seen == [("lin", False, False)] * 2  # eval mode, no gradients
    assert m.training and not m.lin.training  # modes restored
    assert not m.lin._forward_pre_hooks and not m.lin._forward_hooks  # no hooks left
    with pytest.raises(DataError, match="does not fit"):
        run_batches(m, [torch.randn(2, 5)], progress=False)
    assert m.training and not m.lin._forward_pre_hooks


def test_hooks_are_removed_when_the_forward_raises() -> None:
    m = Two()
    bad = torch.randn(2, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(NumericalError):
        check_reaches(m, [bad], ["lin", "conv"])
    assert not m.lin._forward_hooks and not m.conv._forward_hooks
    assert not m.lin._forward_pre_hooks and not m.conv._forward_pre_hooks


def test_check_reaches_names_every_missing_layer_and_non_finite_inputs() -> None:
    m = Two()
    check_reaches(m, [torch.randn(2, 3)], ["lin", "conv"])
    with pytest.raises(CalibrationError, match=r"1 targeted layer\(s\): 'unused'"):
        check_reaches(m, [torch.randn(2, 3)], ["lin", "unused"])
    bad = torch.randn(2, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(NumericalError, match="'lin'"):
        check_reaches(m, [bad], ["lin"])


def test_input_sq_means_by_hand() -> None:
    """k-means' importance: the engine's ``channel_sq`` (per input channel, channels of a conv)."""
    m = Two()
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]])
    stats = collect(m, [x, 2 * x], {"lin": ["channel_sq"], "conv": ["channel_sq"]}, progress=False)
    got = {n: stats[n]["channel_sq"] for n in ("lin", "conv")}
    want_lin = (x**2 + (2 * x) ** 2).sum(0) / 4
    assert torch.allclose(got["lin"], want_lin)
    with torch.no_grad():
        h = torch.cat([m.lin(x), m.lin(2 * x)])  # the conv's channels are the Linear's outputs
    assert torch.allclose(got["conv"], (h**2).mean(0), atol=1e-6)


def test_example_batch_never_consumes_a_one_shot_iterator() -> None:
    data = [torch.randn(2, 3)]
    b = example_batch(data)
    assert b is not None and torch.equal(b.args[0], data[0])
    gen = (t for t in data)
    assert example_batch(gen) is None and next(gen) is data[0]
    assert example_batch(None) is None


def test_rereadable() -> None:
    data = [torch.randn(2, 3)]
    assert rereadable(data) and rereadable(torch.randn(2, 3)) and rereadable({"x": 1})
    assert not rereadable(t for t in data) and not rereadable(None)


def _fq(observer: str) -> tc.quant.FakeQuantize:
    cfg = QuantConfig(activation=IntSpec(8, symmetric=False, signed=False), observer=observer)
    return make_activation_quant(cfg, "fq")


class Holder(nn.Module):
    def __init__(self, fq: nn.Module) -> None:
        super().__init__()
        self.fq = fq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fq(x)


@pytest.mark.parametrize("observer", ["percentile", "mse", "kl"])
def test_histograms_count_over_the_range_of_a_first_pass(observer: str) -> None:
    """Two passes: the histogram's range is the data's, whatever the order of the batches."""
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, generator=g) * s for s in (0.5, 1.0, 4.0, 2.0)]
    got = []
    for order in (batches, batches[::-1], [batches[2], batches[0], batches[3], batches[1]]):
        fq = _fq(observer)
        assert fq.observer.needs_range_pass
        n = calibrate(Holder(fq), order, {"h": [fq]}, progress=False)
        assert n == 4 and fq.calibrated and fq.enabled and not fq.observing
        got.append((fq.scale.clone(), fq.zero_point.clone()))
    for s, z in got[1:]:  # bit for bit
        assert torch.equal(s, got[0][0]) and torch.equal(z, got[0][1])
    # the histogram spans exactly the data's range (no re-binning)
    fq = _fq(observer)
    fq.begin_range_pass()
    for b in batches:
        fq.observe(b)
    fq.end_range_pass()
    lo, hi = torch.cat(batches).aminmax()
    assert fq.observer.hist_lo.item() == lo.item() and fq.observer.hist_hi.item() == hi.item()
    assert fq.observer.hist.sum().item() == 0 and fq.observer.fixed


def test_one_shot_data_is_read_once_with_a_streaming_histogram() -> None:
    batches = [torch.randn(64) * s for s in (0.5, 4.0)]
    fq = _fq("percentile")
    calibrate(Holder(fq), (b for b in batches), {"h": [fq]}, progress=False)
    assert fq.calibrated and not fq.observer.fixed


def test_unreached_quantizers_are_named() -> None:
    fq, idle = _fq("minmax"), _fq("kl")
    with pytest.raises(CalibrationError, match=r"1 targeted layer\(s\): 'idle'"):
        calibrate(Holder(fq), [torch.randn(8)], {"h": [fq], "idle": [idle]}, progress=False)
