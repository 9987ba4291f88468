"""ResNets for 32x32 inputs.

- :class:`CifarResNet`: the CIFAR ResNets of He et al., "Deep Residual Learning for Image
  Recognition" (CVPR 2016, section 4.2): a 3x3 16-channel stem, three stages of ``n`` basic blocks
  with 16, 32 and 64 channels (strides 1, 2, 2), global average pooling and a linear head; depth
  ``6n + 2``. Shortcuts where the shape changes follow option A (parameter-free: subsample and pad
  with zero channels, as in the paper) or option B (a 1x1 convolution and BatchNorm projection).
- :class:`ResNet18`: the ImageNet ResNet-18 adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool),
  as commonly used for CIFAR-10; option-B shortcuts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "ResNet18",
    "cifar_resnet",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]


class PadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel and zero-pad the channels to ``out_channels``.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (``>= in_channels``).
        stride: spatial subsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(
                f"PadShortcut cannot shrink channels ({in_channels} -> {out_channels})."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        if extra:
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016).

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution.
        shortcut: ``"A"`` (zero-padding identity) or ``"B"`` (1x1 conv + BN projection), used when
            the stride or the width changes.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_planes, planes, stride)
            elif shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            else:
                raise ConfigError(f"shortcut={shortcut!r} must be 'A' or 'B'.")
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` (He et al. 2016, section 4.2).

    Args:
        depth: 20, 32, 44, 56, 110, ... (``6n + 2``).
        num_classes: outputs of the linear head.
        in_channels: input image channels.
        shortcut: ``"A"`` (the paper's parameter-free shortcut) or ``"B"`` (projection).
        width: channels of the first stage (16 in the paper); stages use ``width * (1, 2, 4)``.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "A",
        width: int = 16,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}."
            )
        if shortcut not in ("A", "B"):
            raise ConfigError(f"shortcut={shortcut!r} must be 'A' or 'B'.")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        planes = width
        stages = []
        for i, (w, s) in enumerate(((width, 1), (2 * width, 2), (4 * width, 2))):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(planes, w, s if j == 0 else 1, shortcut))
                planes = w
            stages.append(nn.Sequential(*blocks))
            setattr(self, f"layer{i + 1}", stages[-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(4 * width, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet(
    depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A"
) -> CifarResNet:
    """A CIFAR ResNet of the given depth (see :class:`CifarResNet`)."""
    return CifarResNet(depth, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-20: 269,722 parameters with option-A shortcuts, 272,474 with option B."""
    return cifar_resnet(20, num_classes, in_channels, shortcut)


def resnet32(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-32: 464,154 parameters (option A)."""
    return cifar_resnet(32, num_classes, in_channels, shortcut)


def resnet44(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-44: 658,586 parameters (option A)."""
    return cifar_resnet(44, num_classes, in_channels, shortcut)


def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-56: 853,018 parameters with option A, 855,770 with option B."""
    return cifar_resnet(56, num_classes, in_channels, shortcut)


def resnet110(num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
    """CIFAR ResNet-110: 1,727,962 parameters (option A)."""
    return cifar_resnet(110, num_classes, in_channels, shortcut)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) for 32x32 inputs: 3x3 stride-1 stem, no max-pool, 11,173,962 parameters.

    Args:
        num_classes: outputs of the linear head.
        in_channels: input image channels.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        planes = 64
        for i, (w, s) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
            blocks = [BasicBlock(planes, w, s, "B"), BasicBlock(w, w, 1, "B")]
            planes = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(512, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet18:
    """ResNet-18 for 32x32 inputs (see :class:`ResNet18`)."""
    return ResNet18(num_classes=num_classes, in_channels=in_channels)
