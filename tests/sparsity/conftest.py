"""Shared fixtures for the sparsity tests: tiny models and data, built in the tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.testing import TinyCNN

# These machines are shared: OpenMP threads spinning on busy cores make tiny ops 100x slower.
torch.set_num_threads(1)


@pytest.fixture
def cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)
    )


@pytest.fixture
def cnn_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g))
        for _ in range(3)
    ]


@pytest.fixture
def mlp_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [
        (torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(3)
    ]
