"""Tensor slots, ties made and unmade, and loading with clear errors (torchcompress.state)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.errors import CompressionStateError
from torchcompress.state import has_module, load_state, slot, tie_aliases, untie_unshared


def _two() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))


def test_tie_and_untie() -> None:
    m = _two()
    tie_aliases(m, {"1.weight": "0.weight"})
    assert m[1].weight is m[0].weight and slot(m, "1.weight") is m[0].weight
    untie_unshared(m, {}, {"0.weight", "1.weight"})
    assert m[1].weight is not m[0].weight
    assert torch.equal(m[1].weight, m[0].weight)  # the same values, a slot of its own
    assert has_module(m, "1") and not has_module(m, "2") and slot(m, "2.weight") is None


def test_load_state_reports_keys_and_refuses_sizes() -> None:
    m = _two()
    missing, unexpected = load_state(m, {"0.weight": torch.zeros(3, 3), "x": torch.ones(1)})
    assert torch.equal(m[0].weight, torch.zeros(3, 3))
    assert "0.bias" in missing and unexpected == ["x"]
    with pytest.raises(CompressionStateError, match="do not fit"):
        load_state(m, {"0.weight": torch.zeros(2, 2)})
