"""scikit-learn's 1,797 real 8x8 handwritten digits: the offline default of the demo and tests.

Example:
    >>> import torchcompress as tc
    >>> train, test = tc.data.digits(batch_size=32, image_size=16, channels=1)
    >>> x, y = next(iter(train))
    >>> tuple(x.shape), y.dtype
    ((32, 1, 16, 16), torch.int64)
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..errors import ConfigError, check_range
from .common import check_int, make_loaders

__all__ = ["DigitsTensors", "digits", "digits_tensors"]


class DigitsTensors(NamedTuple):
    """The digits data set as tensors (see :func:`digits_tensors`).

    Attributes:
        x_train: float images ``(N_train, channels, image_size, image_size)``.
        y_train: int64 labels ``(N_train,)`` in ``0..9``.
        x_test: float images ``(N_test, channels, image_size, image_size)``.
        y_test: int64 labels ``(N_test,)``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # 16 gray levels -> [0, 1]
    return images, np.asarray(bunch.target, dtype=np.int64)


def digits_tensors(
    *,
    image_size: int = 32,
    channels: int = 3,
    test_size: float = 0.25,
    seed: int = 0,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> DigitsTensors:
    """scikit-learn's 1,797 real handwritten digits as train/test tensors.

    Each 8x8 image (16 gray levels, scaled to [0, 1]) is resized bilinearly to
    ``image_size x image_size`` (antialiased when shrinking) and repeated to ``channels`` channels.
    The split is stratified by class and reproducible given ``seed``. With ``normalize`` each channel
    is standardised with the mean and standard deviation of the *training* images only, so no
    statistic of the test set leaks into the inputs.

    Args:
        image_size: side of the square images (8 is the original resolution).
        channels: how many (identical) channels each image has (3 for CIFAR-style models).
        test_size: fraction of the 1,797 images held out for testing, in (0, 1).
        seed: seed of the stratified split.
        normalize: standardise with the training statistics (else pixel values in [0, 1]).
        dtype: floating dtype of the images.

    Returns:
        A :class:`DigitsTensors` ``(x_train, y_train, x_test, y_test)``.

    Raises:
        ConfigError: an argument is out of range.

    Example:
        >>> from torchcompress.data import digits_tensors
        >>> d = digits_tensors(image_size=8, channels=1)
        >>> tuple(d.x_train.shape), tuple(d.x_test.shape)
        ((1347, 1, 8, 8), (450, 1, 8, 8))
    """
    owner = "digits"
    check_int("image_size", image_size, 1, owner=owner)
    check_int("channels", channels, 1, owner=owner)
    check_int("seed", seed, 0, owner=owner)
    check_range(
        "test_size", test_size, 0.0, 1.0, low_inclusive=False, high_inclusive=False, owner=owner
    )
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"digits: dtype must be a floating torch.dtype, got {dtype!r}.")
    images, labels = _raw_digits()
    n_test = math.ceil(test_size * len(labels))  # as scikit-learn rounds a fractional test_size
    if n_test < 10 or len(labels) - n_test < 10:
        raise ConfigError(
            f"digits: test_size={test_size} leaves {n_test} test and {len(labels) - n_test} training "
            "images; a stratified split needs at least one image of each of the 10 classes on each side."
        )
    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=n_test, random_state=seed, stratify=labels
    )
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    if image_size != x.shape[-1]:
        x = F.interpolate(
            x,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=image_size < x.shape[-1],
        )
    x = x.expand(-1, channels, -1, -1)
    x_train, x_test = x[torch.from_numpy(idx_train)], x[torch.from_numpy(idx_test)]
    if normalize:
        mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
        std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
    y = torch.from_numpy(labels)
    return DigitsTensors(
        x_train.to(dtype).contiguous(),
        y[torch.from_numpy(idx_train)].clone(),
        x_test.to(dtype).contiguous(),
        y[torch.from_numpy(idx_test)].clone(),
    )


def digits(
    batch_size: int = 64,
    *,
    image_size: int = 32,
    channels: int = 3,
    test_size: float = 0.25,
    seed: int = 0,
    normalize: bool = True,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """scikit-learn's real handwritten digits as ``(train_loader, test_loader)``.

    1,797 real 8x8 digits (16 gray levels) from ``sklearn.datasets.load_digits``, resized to
    ``image_size`` and repeated to ``channels`` (see :func:`digits_tensors`), split 75/25 stratified
    by class and standardised with the training statistics. Batches are ``(images, labels)`` tuples.
    Everything is deterministic given ``seed`` (the split and the training loader's shuffling).

    Args:
        batch_size: images per batch.
        image_size: side of the square images (32 suits CIFAR models; 8 is the original).
        channels: image channels.
        test_size: fraction held out for testing.
        seed: seed of the split and of the training loader's shuffling.
        normalize: standardise with the training statistics.
        shuffle: shuffle the training loader (the test loader never is).
        num_workers: DataLoader worker processes.
        drop_last: drop the last incomplete training batch.
        pin_memory: pin host memory (faster copies to a GPU).

    Returns:
        ``(train_loader, test_loader)``: 1,347 and 450 images with the defaults.

    Raises:
        ConfigError: an argument is out of range.

    Example:
        >>> import torchcompress as tc
        >>> train, test = tc.data.digits(batch_size=64)
        >>> len(train.dataset), len(test.dataset)
        (1347, 450)
    """
    check_int("batch_size", batch_size, 1, owner="digits")
    check_int("num_workers", num_workers, 0, owner="digits")
    d = digits_tensors(
        image_size=image_size,
        channels=channels,
        test_size=test_size,
        seed=seed,
        normalize=normalize,
    )
    return make_loaders(
        TensorDataset(d.x_train, d.y_train),
        TensorDataset(d.x_test, d.y_test),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        seed=seed,
        pin_memory=pin_memory,
    )
