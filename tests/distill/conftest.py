"""Shared models and data of the distillation tests: small CNNs on the real digits (8x8)."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import torchcompress as tc


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one thread avoids OpenMP spinning on a shared, loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Net(nn.Module):
    """A stem (conv-BN-ReLU), a strided ``block``, pooling, ``flatten`` and ``fc``; inputs (N, 1, 8, 8).

    ``width`` sets the channels (the block has twice as many), so a wide teacher and a narrow
    student differ in their features' channels but not in their spatial sizes.
    """

    def __init__(self, width: int = 8, classes: int = 10, bn: bool = True) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if bn else nn.Identity()

        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), norm(width), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), norm(2 * width), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.block(self.stem(x)))))


def net(width: int = 8, seed: int = 0, **kwargs) -> Net:
    torch.manual_seed(seed)
    return Net(width, **kwargs)


@pytest.fixture
def digits():
    """(train, test) loaders of the real digits at 8x8, one channel; a fresh shuffled train loader
    for each test, so no test depends on how far another one drew from its generator."""
    return tc.data.digits(batch_size=64, image_size=8, channels=1)


@pytest.fixture(scope="session")
def trained_teacher():
    """A width-16 Net trained 4 epochs on the digits (about 90% on the test images), in eval mode."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = net(16, seed=1)
        train, _ = tc.data.digits(batch_size=64, image_size=8, channels=1)
        tc.finetune(teacher, train, epochs=4, lr=0.1, progress=False)
    finally:
        torch.set_num_threads(n)
    return teacher.eval()


@pytest.fixture
def teacher(trained_teacher):
    """A fresh copy of the trained teacher for each test."""
    return copy.deepcopy(trained_teacher)


def batches(n: int = 4, batch: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Small random (images, labels) batches for exact, fast checks."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(n)
    ]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def kl_to_teacher(student: nn.Module, teacher: nn.Module, data, T: float = 1.0) -> float:
    """Mean KL(teacher || student) over the test data (eval mode)."""
    from torchcompress.distill.functional import kd_loss

    modes = [m.training for m in (student, teacher)]
    student.eval()
    teacher.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, _ in data:
            total += kd_loss(student(x), teacher(x), T).item() * len(x)
            n += len(x)
    student.train(modes[0])
    teacher.train(modes[1])
    return total / n
