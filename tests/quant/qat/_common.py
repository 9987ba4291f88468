"""Models and data shared by the quantization-aware training tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.quant import IntSpec, QuantConfig

W4A4 = QuantConfig(
    weight=IntSpec(4, granularity="channel"),
    activation=IntSpec(4, symmetric=False, signed=False),
)


class Net(nn.Module):
    """conv-bn-relu, a residual block (functional relu), pooling, linear."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


def digits(batch_size: int = 32):
    return tc.data.digits(batch_size=batch_size, image_size=8, channels=1)


def calib_of(train, n: int = 4):
    return [x for (x, _), _ in zip(train, range(n))]


def warm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give BatchNorms non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


def deep_cnn(c: int = 16, n: int = 6) -> nn.Module:
    layers: list[nn.Module] = []
    cin = 1
    for _ in range(n):
        layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c, 10))
