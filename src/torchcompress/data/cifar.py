"""CIFAR-10 read from a copy already on disk (Krizhevsky 2009); nothing is ever downloaded.

Example:
    >>> import torchcompress as tc
    >>> tc.data.CIFAR10_CLASSES[:3]
    ('airplane', 'automobile', 'bird')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .cifar_readers import bin_files, find_cifar, py_files, read_bin, read_class_names, read_py
from .common import check_int

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10Dataset", "cifar10"]

log = logging.getLogger(__name__)

#: The ten CIFAR-10 class names, in label order.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Per-channel mean of the CIFAR-10 training images (pixel values in [0, 1]).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
#: Per-channel standard deviation over all training pixels (not the popular per-batch average
#: 0.2023, 0.1994, 0.2010).
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


class CIFAR10Dataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """CIFAR-10 images held in memory as uint8, converted to float per item.

    Items are ``(image, label)``: a float32 ``(3, 32, 32)`` image in [0, 1], standardised with
    :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD` when ``normalize``, after the optional augmentation.

    Args:
        images: uint8 tensor ``(N, 3, 32, 32)``.
        labels: int64 tensor ``(N,)``.
        augment: ``True`` for the standard CIFAR augmentation (4-pixel padded random 32x32 crop and a
            random horizontal flip, He et al. 2016), ``False`` for none, or a callable applied to each
            float image in [0, 1] before normalisation.
        normalize: standardise each channel.
        classes: class names, in label order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        augment: bool | Callable[[torch.Tensor], torch.Tensor] = False,
        normalize: bool = True,
        classes: Sequence[str] = CIFAR10_CLASSES,
    ) -> None:
        self.images = images
        self.labels = labels
        self.augment = augment
        self.normalize = normalize
        self.classes = list(classes)
        self._mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[index].float().div_(255.0)
        if self.augment is True:
            img = _crop_flip(img)
        elif callable(self.augment):
            img = self.augment(img)
        if self.normalize:
            img = (img - self._mean) / self._std
        return img, self.labels[index]


def _crop_flip(img: torch.Tensor, pad: int = 4) -> torch.Tensor:
    h, w = img.shape[-2:]
    padded = F.pad(img, (pad, pad, pad, pad))
    i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    out = padded[:, i : i + h, j : j + w]
    if torch.rand(()) < 0.5:
        out = out.flip(-1)
    return out.contiguous()


def cifar10(
    root: str | os.PathLike[str],
    *,
    train: bool = True,
    batch_size: int = 128,
    augment: bool | Callable[[torch.Tensor], torch.Tensor] | None = None,
    normalize: bool = True,
    shuffle: bool | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    seed: int | None = None,
) -> DataLoader[Any]:
    """A DataLoader over a CIFAR-10 copy already on disk (Krizhevsky 2009). Never downloads.

    Reads either standard layout: the binary version (``cifar-10-batches-bin/data_batch_1.bin`` ...
    ``data_batch_5.bin``, ``test_batch.bin``) or the python version (``cifar-10-batches-py/
    data_batch_1`` ... ``data_batch_5``, ``test_batch``); ``root`` is that folder or its parent. The
    python batches are pickles: they are read with a restricted unpickler that can only rebuild numpy
    arrays and plain containers, so a tampered file cannot run code.

    Args:
        root: the batches folder, or the folder that contains it.
        train: the 50,000 training images (else the 10,000 test images).
        batch_size: images per batch.
        augment: ``None`` (default): the standard augmentation for the training split (random crop
            with 4-pixel padding and horizontal flip), none for the test split; ``True``/``False``;
            or a callable applied to each float image in [0, 1] before normalisation.
        normalize: standardise with :data:`CIFAR10_MEAN` and :data:`CIFAR10_STD`.
        shuffle: shuffle the batches (default: for the training split only).
        num_workers: DataLoader worker processes.
        drop_last: drop the last incomplete batch.
        pin_memory: pin host memory (faster copies to a GPU).
        seed: seed of the loader's shuffling (``None``: torch's global generator).

    Returns:
        A DataLoader of ``(images, labels)`` batches; ``loader.dataset`` is a
        :class:`CIFAR10Dataset` (with ``.classes``).

    Raises:
        DatasetNotFoundError: the folder is missing or lacks batch files (the message lists them).
        DataError: a batch file is malformed.

    Example:
        >>> import torchcompress as tc
        >>> test = tc.data.cifar10("~/data/cifar10", train=False)  # doctest: +SKIP
        >>> tc.evaluate(model, test)["accuracy"]                    # doctest: +SKIP
    """
    check_int("batch_size", batch_size, 1, owner="cifar10")
    check_int("num_workers", num_workers, 0, owner="cifar10")
    if augment is not None and not isinstance(augment, bool) and not callable(augment):
        raise ConfigError(
            f"cifar10: augment must be None, True, False or a callable, got {type(augment).__name__}."
        )
    folder_root = Path(os.path.expanduser(os.fspath(root)))
    kind, folder = find_cifar(folder_root, train)
    names = bin_files(train) if kind == "bin" else py_files(train)
    reader = read_bin if kind == "bin" else read_py
    images_list, labels_list = [], []
    for n in names:
        imgs, labels = reader(folder / n)
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(
                f"{str(folder / n)!r}: labels must be in 0..9, found {int(labels.min())}..{int(labels.max())}; "
                "is this CIFAR-100?"
            )
        images_list.append(imgs)
        labels_list.append(labels)
    images = torch.from_numpy(np.concatenate(images_list))
    labels = torch.from_numpy(np.concatenate(labels_list))
    dataset = CIFAR10Dataset(
        images,
        labels,
        augment=train if augment is None else augment,
        normalize=normalize,
        classes=read_class_names(kind, folder) or CIFAR10_CLASSES,
    )
    log.info(
        "CIFAR-10 %s split: %d images from %s", "train" if train else "test", len(labels), folder
    )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train if shuffle is None else shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=generator,
    )
