"""quant.calib: the calibration loops (modes restored, hooks removed, statistics by hand)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.errors import CalibrationError, DataError, NumericalError
from torchcompress.quant.calib import (
    check_reaches,
    example_batch,
    input_hooks,
    input_sq_means,
    run_batches,
)


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
    with input_hooks(m, ["lin"], lambda name, x: seen.append((name, m.training, x.requires_grad))):
        n = run_batches(m, [torch.randn(2, 3) for _ in range(3)], max_batches=2, progress=False)
    assert n == 2 and seen == [("lin", False, False)] * 2  # eval mode, no gradients
    assert m.training and not m.lin.training  # modes restored
    assert not m.lin._forward_pre_hooks  # hooks removed
    with pytest.raises(DataError, match="does not fit"):
        run_batches(m, [torch.randn(2, 5)], progress=False)
    assert m.training and not m.lin._forward_pre_hooks


def test_hooks_are_removed_when_the_forward_raises() -> None:
    m = Two()

    def boom(name: str, x: torch.Tensor) -> None:
        raise NumericalError("boom")

    with pytest.raises(NumericalError), input_hooks(m, ["lin", "conv"], boom):
        run_batches(m, [torch.randn(2, 3)], progress=False)
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
    m = Two()
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]])
    got = input_sq_means(m, ["lin", "conv"], [x, 2 * x], channels_first={"conv"}, progress=False)
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
