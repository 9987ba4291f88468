"""Shared fixtures for the low-rank tests: tiny models and correlated data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.testing import MixedConvNet as TinyCNN


def correlated(n: int, dim: int, *, rank: int = 4, seed: int = 0) -> torch.Tensor:
    """``n`` samples of ``dim`` features that mostly live in a ``rank``-dimensional subspace."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, dim, generator=g)
    return torch.randn(n, rank, generator=g) @ basis + 0.05 * torch.randn(n, dim, generator=g)


@pytest.fixture
def tiny_cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 8)
    ).eval()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: one thread is faster, and the 2 shared cores are not oversubscribed."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
