"""Shared fixtures for the low-rank tests: tiny models and correlated data."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def correlated(n: int, dim: int, *, rank: int = 4, seed: int = 0) -> torch.Tensor:
    """``n`` samples of ``dim`` features that mostly live in a ``rank``-dimensional subspace."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, dim, generator=g)
    return torch.randn(n, rank, generator=g) @ basis + 0.05 * torch.randn(n, dim, generator=g)


class TinyCNN(nn.Module):
    """Conv (plain, strided+dilated, grouped) + Linear, small enough for fast tests."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1)
        self.conv2 = nn.Conv2d(24, 32, 3, stride=2, padding=2, dilation=2, bias=False)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.dw(x))
        return self.fc(self.pool(x).flatten(1))


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
