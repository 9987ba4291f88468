"""The builder: one recorded forward into the channel graph; models it refuses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    CompressionStateError,
    ShapeError,
    UnsupportedModuleError,
)
from torchcompress.testing import TinyCNN

from .conftest import X


def test_model_that_does_not_run_names_the_module() -> None:
    m = TinyCNN().eval()
    with pytest.raises(ShapeError, match=r"module 'conv1' \(Conv2d\)"):
        tc.prune_channels(m, torch.randn(2, 5, 8, 8), 0.5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_model_cannot_be_recorded() -> None:
    m = torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    with pytest.raises(UnsupportedModuleError, match="TorchScript"):
        tc.prune_channels(m, torch.randn(1, 4), 0.5)


def test_masked_model_must_prune_channels_first() -> None:
    m = TinyCNN().eval()
    tc.prune(m, tc.PruneConfig(sparsity=0.5))
    with pytest.raises(CompressionStateError, match="prune channels first"):
        tc.prune_channels(m, X, 0.5)
