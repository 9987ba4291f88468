"""Surgery: shrinking tensors and modules, and restoring the model on a failure."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    UnsupportedModuleError,
)

from .conftest import states_equal


def test_size_written_in_an_attribute_fails_cleanly_and_restores() -> None:
    class FixedHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = 2
            self.qkv = nn.Linear(8, 24)
            self.out = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).chunk(3, -1)
            q, k, v = (z.reshape(b, t, self.heads, 4).transpose(1, 2) for z in (q, k, v))
            y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
            return self.head(self.out(y.transpose(1, 2).reshape(b, t, 8)).mean(1))

    m = FixedHeads().eval()
    before = copy.deepcopy(m.state_dict())
    x = torch.randn(2, 3, 8)
    with pytest.raises(UnsupportedModuleError, match="After pruning, the forward failed"):
        tc.prune_channels(m, x, 0.5)
    assert states_equal(m.state_dict(), before)
    assert m.qkv.out_features == 24 and m.qkv.weight.shape == (24, 8)
    assert m(x).shape == (2, 2)
