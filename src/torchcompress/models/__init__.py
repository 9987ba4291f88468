"""Models for experiments: CIFAR ResNets, a CIFAR ResNet-18, MobileNetV2 for 32x32, small VGGs.

All take ``num_classes`` and ``in_channels`` and use activation *modules* (not functional calls), so
fusion, PACT and structured pruning see every layer. Build one by name with :func:`create`.

Parameter counts (10 classes, 3 input channels), checked by the tests:

=====================  =============
model                  parameters
=====================  =============
``resnet20`` (A)           269,722
``resnet32`` (A)           464,154
``resnet44`` (A)           658,586
``resnet56`` (A)           853,018
``resnet110`` (A)        1,727,962
``resnet20`` (B)           272,474
``resnet56`` (B)           855,770
``resnet18``            11,173,962
``mobilenet_v2``         2,236,682
``vgg11``                9,228,362
``vgg_small``            1,766,122
=====================  =============

Example:
    >>> import torch, torchcompress as tc
    >>> model = tc.models.create("resnet20")
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import ConfigError, did_you_mean
from .mobilenet import MobileNetV2, mobilenet_v2
from .resnet import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    ResNet18,
    cifar_resnet,
    resnet18,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from .vgg import VGG, vgg, vgg11, vgg16, vgg_small

__all__ = [
    "VGG",
    "BasicBlock",
    "CifarResNet",
    "MobileNetV2",
    "PadShortcut",
    "ResNet18",
    "cifar_resnet",
    "create",
    "mobilenet_v2",
    "names",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg",
    "vgg11",
    "vgg16",
    "vgg_small",
]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "vgg_small": vgg_small,
}


def names() -> list[str]:
    """Names accepted by :func:`create`."""
    return list(_BUILDERS)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the model called ``name`` (see :func:`names`) with keyword arguments for its builder.

    Raises:
        ConfigError: unknown name.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown model {name!r}; available: {', '.join(_BUILDERS)}.{did_you_mean(name, _BUILDERS)}"
        ) from None
    return builder(**kwargs)
