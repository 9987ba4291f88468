"""Toy models the test suites share (and that make quick experiments easy).

Small enough to compress, train and profile in milliseconds on a CPU, and built to cover the cases
the verbs must handle:

- :class:`TinyCNN`: conv-BN-ReLU twice (the second strided), global pooling and a classifier: the
  usual shape of a CNN to prune, fold or quantize.
- :class:`MixedConvNet`: one convolution of each flavour (plain, strided and dilated, grouped,
  depthwise) and a classifier: what factorization and layer-kind handling must get right.

Nothing here is seeded: seed torch before building one when the weights must repeat.

Example:
    >>> import torch
    >>> from torchcompress.testing import TinyCNN
    >>> _ = torch.manual_seed(0)
    >>> TinyCNN()(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MixedConvNet", "TinyCNN"]


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, a strided conv-BN-ReLU, global average pooling, a linear classifier.

    Inputs ``(N, 3, H, W)``; outputs ``(N, 4)``. The first convolution has no bias (a BatchNorm
    follows), the second has one.

    Example:
        >>> import torch
        >>> TinyCNN()(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 4])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


class MixedConvNet(nn.Module):
    """One convolution of each flavour, then a classifier.

    ``conv1`` plain (3 -> 24), ``conv2`` strided and dilated without bias (24 -> 32), ``conv3``
    grouped (2 groups), ``dw`` depthwise, global average pooling and ``fc`` (32 -> 10). Inputs
    ``(N, 3, H, W)``; outputs ``(N, 10)``.

    Example:
        >>> import torch
        >>> MixedConvNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 10])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1)
        self.conv2 = nn.Conv2d(24, 32, 3, stride=2, padding=2, dilation=2, bias=False)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x``."""
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.dw(x))
        return self.fc(self.pool(x).flatten(1))
