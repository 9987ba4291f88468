"""VGG networks with BatchNorm for 32x32 inputs (Simonyan & Zisserman, "Very Deep Convolutional
Networks for Large-Scale Image Recognition", ICLR 2015), with the single-Linear classifier common in
CIFAR work, plus a narrow ``vgg_small`` for quick experiments.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["VGG", "vgg", "vgg11", "vgg16", "vgg_small"]

_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ],
    "vgg_small": [32, 32, "M", 64, 64, "M", 128, 128, "M", 256, 256, "M", 256, "M"],
}


class VGG(nn.Module):
    """A VGG-style stack of 3x3 conv-BN-ReLU layers and max-pools, then a Linear classifier.

    Args:
        cfg: channel counts, with ``"M"`` for a 2x2 max-pool; five pools take 32x32 to 1x1.
        num_classes: outputs of the classifier.
        in_channels: input image channels.
    """

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            elif isinstance(v, int) and v > 0:
                layers += [
                    nn.Conv2d(c, v, 3, padding=1, bias=False),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                c = v
            else:
                raise ConfigError(f"VGG cfg entries must be positive ints or 'M', got {v!r}.")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def vgg(name: str = "vgg11", num_classes: int = 10, in_channels: int = 3) -> VGG:
    """A VGG by name: ``vgg11``, ``vgg13``, ``vgg16`` or ``vgg_small``."""
    if name not in _CFGS:
        raise ConfigError(f"Unknown VGG {name!r}; available: {', '.join(_CFGS)}.")
    return VGG(list(_CFGS[name]), num_classes=num_classes, in_channels=in_channels)


def vgg11(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-11 with BatchNorm for 32x32 inputs: 9,228,362 parameters."""
    return vgg("vgg11", num_classes, in_channels)


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 with BatchNorm for 32x32 inputs: 14,724,042 parameters."""
    return vgg("vgg16", num_classes, in_channels)


def vgg_small(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """A narrow 9-conv VGG for quick experiments: 1,766,122 parameters."""
    return vgg("vgg_small", num_classes, in_channels)
