"""Offline data sets.

Nothing here downloads. What ships with the dependencies, or is read from a copy you already have:

- :func:`digits` / :func:`digits_tensors`: scikit-learn's 1,797 real 8x8 handwritten digits
  (16 gray levels), upsampled to a configurable image size and channel count, with a stratified
  train/test split. The offline default for the demo, the tests and the benchmarks.
- :func:`cifar10`: a reader for a CIFAR-10 copy on disk (the standard binary or python batches).
- :func:`mnist1d`: the procedurally generated MNIST-1D benchmark (Greydanus 2020), built offline by
  the ``mnist1d`` package.
- :func:`english_sentences`: real English sentences from the documentation that ships with Python
  (``pydoc_data``), for transformer calibration and embedding-fidelity benchmarks.

Example:
    >>> import torchcompress as tc
    >>> train, test = tc.data.digits(batch_size=32, image_size=16, channels=1)
    >>> x, y = next(iter(train))
    >>> tuple(x.shape), y.dtype
    ((32, 1, 16, 16), torch.int64)
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import math
import os
import pickle
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import ConfigError, DataError, DatasetNotFoundError, DependencyError, check_range

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10Dataset",
    "DigitsTensors",
    "cifar10",
    "digits",
    "digits_tensors",
    "english_sentences",
    "mnist1d",
    "mnist1d_tensors",
]

log = logging.getLogger(__name__)

_SKIP_CHARS = set("*()[]{}=_`<>|\\$#@~^")


def _check_int(field: str, value: Any, low: int, *, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{owner}: {field} must be an int, got {type(value).__name__} {value!r}.")
    check_range(field, int(value), low, owner=owner)


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------


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
    _check_int("image_size", image_size, 1, owner=owner)
    _check_int("channels", channels, 1, owner=owner)
    _check_int("seed", seed, 0, owner=owner)
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


def _loaders(
    train: Dataset[Any],
    test: Dataset[Any],
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    drop_last: bool,
    seed: int,
    pin_memory: bool,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
    )
    test_loader = DataLoader(
        test, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=pin_memory
    )
    return train_loader, test_loader


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
    _check_int("batch_size", batch_size, 1, owner="digits")
    _check_int("num_workers", num_workers, 0, owner="digits")
    d = digits_tensors(
        image_size=image_size,
        channels=channels,
        test_size=test_size,
        seed=seed,
        normalize=normalize,
    )
    return _loaders(
        TensorDataset(d.x_train, d.y_train),
        TensorDataset(d.x_test, d.y_test),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        seed=seed,
        pin_memory=pin_memory,
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 from disk
# --------------------------------------------------------------------------------------------

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

_BIN_DIR = "cifar-10-batches-bin"
_PY_DIR = "cifar-10-batches-py"
_RECORD = 1 + 3 * 32 * 32


def _bin_files(train: bool) -> list[str]:
    return [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]


def _py_files(train: bool) -> list[str]:
    return [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]


def _find_cifar(root: Path, train: bool) -> tuple[str, Path]:
    """Return ``("bin" | "py", folder)`` for the layout found at or under ``root``."""
    candidates = [
        ("bin", root),
        ("py", root),
        ("bin", root / _BIN_DIR),
        ("py", root / _PY_DIR),
    ]
    for kind, folder in candidates:
        names = _bin_files(train) if kind == "bin" else _py_files(train)
        if all((folder / n).is_file() for n in names):
            return kind, folder
    split = "training" if train else "test"
    partial = [
        (kind, folder)
        for kind, folder in candidates
        if folder.is_dir()
        and any(
            (folder / n).is_file()
            for n in (_bin_files(train) if kind == "bin" else _py_files(train))
        )
    ]
    if partial:
        kind, folder = partial[0]
        names = _bin_files(train) if kind == "bin" else _py_files(train)
        missing = [n for n in names if not (folder / n).is_file()]
        raise DatasetNotFoundError(
            f"The CIFAR-10 folder {str(folder)!r} is incomplete: the {split} split needs "
            f"{', '.join(names)}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing."
        )
    where = (
        f"{str(root)!r} does not exist"
        if not root.exists()
        else f"{str(root)!r} holds no CIFAR-10 {split} batches"
    )
    raise DatasetNotFoundError(
        f"CIFAR-10 not found: {where}. Pass the '{_BIN_DIR}' folder (data_batch_1.bin ... "
        f"data_batch_5.bin, test_batch.bin), the '{_PY_DIR}' folder (data_batch_1 ... data_batch_5, "
        "test_batch) or the folder that contains one of them. torchcompress never downloads; get "
        "the archive from https://www.cs.toronto.edu/~kriz/cifar.html and extract it there."
    )


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise DataError(
            f"{str(path)!r} is not a CIFAR-10 binary batch: its size ({raw.size} bytes) is not a "
            f"positive multiple of {_RECORD} (1 label byte + 3x32x32 pixel bytes per image)."
        )
    records = raw.reshape(-1, _RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), records[:, 0].astype(np.int64)


# (module, name) pairs the python batches need: numpy arrays and dtypes, and the bytes helper that
# Python 3 pickles written at protocol 2 use. Nothing else may be imported while unpickling.
_PICKLE_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only reconstructs numpy arrays, dtypes and plain containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch only holds numpy arrays, "
                "lists, strings and numbers"
            )
        if module.startswith("numpy.core."):  # numpy 2 renamed numpy.core to numpy._core
            try:
                return getattr(importlib.import_module("numpy._core" + module[10:]), name)
            except (ImportError, AttributeError):
                pass
        return getattr(importlib.import_module(module), name)


def _get(d: dict[Any, Any], key: str) -> Any:
    if key in d:
        return d[key]
    return d.get(key.encode())


def _read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as e:
        raise DataError(f"{str(path)!r} is not a CIFAR-10 python batch: {e}") from e
    if not isinstance(obj, dict):
        raise DataError(
            f"{str(path)!r} is not a CIFAR-10 python batch: it holds a {type(obj).__name__}, "
            "expected a dict with 'data' and 'labels'."
        )
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in obj]
        raise DataError(
            f"{str(path)!r} is not a CIFAR-10 python batch: expected keys 'data' and 'labels', found "
            f"{keys}. (CIFAR-100 batches, with 'fine_labels', are not CIFAR-10.)"
        )
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{str(path)!r}: 'data' should be a uint8 array of shape (N, 3072), got {data.dtype} "
            f"{tuple(data.shape)}."
        )
    try:
        labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{str(path)!r}: 'labels' should be a list of ints: {e}") from e
    if len(labels_arr) != len(data):
        raise DataError(
            f"{str(path)!r}: {len(data)} images but {len(labels_arr)} labels; the file is corrupt."
        )
    return data.reshape(-1, 3, 32, 32).copy(), labels_arr


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


def _cifar_classes(kind: str, folder: Path) -> list[str]:
    try:
        if kind == "bin":
            meta = folder / "batches.meta.txt"
            if meta.is_file():
                names = [s.strip() for s in meta.read_text().splitlines() if s.strip()]
                if len(names) == 10:
                    return names
        else:
            meta = folder / "batches.meta"
            if meta.is_file():
                with open(meta, "rb") as f:
                    obj = _RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
                names = _get(obj, "label_names") if isinstance(obj, dict) else None
                if names is not None and len(names) == 10:
                    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError):
        log.debug("could not read the CIFAR-10 class names in %s", folder)
    return list(CIFAR10_CLASSES)


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
    _check_int("batch_size", batch_size, 1, owner="cifar10")
    _check_int("num_workers", num_workers, 0, owner="cifar10")
    if augment is not None and not isinstance(augment, bool) and not callable(augment):
        raise ConfigError(
            f"cifar10: augment must be None, True, False or a callable, got {type(augment).__name__}."
        )
    folder_root = Path(os.path.expanduser(os.fspath(root)))
    kind, folder = _find_cifar(folder_root, train)
    names = _bin_files(train) if kind == "bin" else _py_files(train)
    reader = _read_bin if kind == "bin" else _read_py
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
        classes=_cifar_classes(kind, folder),
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


# --------------------------------------------------------------------------------------------
# MNIST-1D
# --------------------------------------------------------------------------------------------

_MNIST1D_FIXED = ("url",)


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(overrides: tuple[tuple[str, Any], ...]) -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise DependencyError(
            "tc.data.mnist1d needs the 'mnist1d' package: pip install mnist1d."
        ) from e
    args = get_dataset_args()
    for k, v in overrides:
        setattr(args, k, list(v) if isinstance(v, tuple) else v)
    # make_dataset reseeds Python's and numpy's global generators; put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def mnist1d_tensors(
    *, channel_dim: bool = False, dtype: torch.dtype = torch.float32, **dataset_args: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MNIST-1D as tensors ``(x_train, y_train, x_test, y_test)``; see :func:`mnist1d`.

    Example:
        >>> from torchcompress.data import mnist1d_tensors
        >>> x, y, xt, yt = mnist1d_tensors(num_samples=500)   # doctest: +SKIP
        >>> tuple(x.shape), tuple(xt.shape)                    # doctest: +SKIP
        ((400, 40), (100, 40))
    """
    try:
        from mnist1d.data import get_dataset_args
    except ImportError as e:
        raise DependencyError(
            "tc.data.mnist1d needs the 'mnist1d' package: pip install mnist1d."
        ) from e
    known = get_dataset_args(as_dict=True)
    for k, v in dataset_args.items():
        if k not in known or k in _MNIST1D_FIXED:
            from .errors import did_you_mean

            allowed = [n for n in known if n not in _MNIST1D_FIXED]
            raise ConfigError(
                f"mnist1d: unknown dataset argument {k!r} (known: {', '.join(allowed)})."
                f"{did_you_mean(k, allowed)}"
            )
        if k == "num_samples":
            _check_int(k, v, 20, owner="mnist1d")
        elif k == "train_split":
            check_range(k, v, 0.0, 1.0, low_inclusive=False, high_inclusive=False, owner="mnist1d")
    overrides = tuple(
        sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dataset_args.items())
    )
    arrays = _mnist1d_arrays(overrides)

    def x_of(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a).to(dtype)
        return t.unsqueeze(1) if channel_dim else t

    return (
        x_of(arrays["x"]),
        torch.from_numpy(arrays["y"]).long(),
        x_of(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"]).long(),
    )


def mnist1d(
    batch_size: int = 64,
    *,
    channel_dim: bool = False,
    shuffle: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    **dataset_args: Any,
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """MNIST-1D (Greydanus, "Scaling down Deep Learning", 2020) as ``(train_loader, test_loader)``.

    The data set is generated procedurally and offline by the ``mnist1d`` package's
    ``make_dataset`` with its default arguments (5,000 signals of length 40 in 10 classes, split
    4,000/1,000, seed 42), never through its download path; the result is cached per process.
    Keyword ``dataset_args`` override the package's arguments (``num_samples``, ``train_split``,
    ``seed``, noise scales, ...). Python's and numpy's global random states are left as they were.

    Args:
        batch_size: signals per batch.
        channel_dim: give inputs a channel dimension, ``(B, 1, 40)`` for Conv1d models, instead of
            ``(B, 40)``.
        shuffle: shuffle the training loader.
        num_workers: DataLoader worker processes.
        drop_last: drop the last incomplete training batch.
        seed: seed of the generated data set and of the training loader's shuffling (``None``: the
            package's default data set, seed 42, and shuffling seeded with 0).
        **dataset_args: overrides of ``mnist1d.data.get_dataset_args()``.

    Returns:
        ``(train_loader, test_loader)`` of ``(signals, labels)`` batches.

    Raises:
        DependencyError: ``mnist1d`` is not installed.
        ConfigError: an unknown or out-of-range dataset argument.

    Example:
        >>> import torchcompress as tc
        >>> train, test = tc.data.mnist1d(batch_size=100)    # doctest: +SKIP
        >>> len(train.dataset), len(test.dataset)            # doctest: +SKIP
        (4000, 1000)
    """
    _check_int("batch_size", batch_size, 1, owner="mnist1d")
    _check_int("num_workers", num_workers, 0, owner="mnist1d")
    if seed is not None:
        _check_int("seed", seed, 0, owner="mnist1d")
        dataset_args["seed"] = seed
    x, y, xt, yt = mnist1d_tensors(channel_dim=channel_dim, **dataset_args)
    return _loaders(
        TensorDataset(x, y),
        TensorDataset(xt, yt),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        seed=0 if seed is None else seed,
        pin_memory=False,
    )


# --------------------------------------------------------------------------------------------
# English sentences
# --------------------------------------------------------------------------------------------


def english_sentences(
    n: int | None = 256, *, seed: int = 0, min_words: int = 8, max_words: int = 40
) -> list[str]:
    """Real English sentences taken from the Python documentation bundled with the interpreter.

    Sentences with code-like characters are dropped; whitespace is normalised. About 950 are
    available with the default length limits.

    Args:
        n: how many (sampled without replacement, reproducibly); ``None`` for all.
        seed: sampling seed.
        min_words: shortest sentence kept, in words.
        max_words: longest sentence kept, in words.

    Raises:
        ConfigError: more sentences asked for than are available.

    Example:
        >>> from torchcompress.data import english_sentences
        >>> s = english_sentences(3)
        >>> len(s), all(isinstance(x, str) for x in s)
        (3, True)
    """
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    out: list[str] = []
    seen: set[str] = set()
    for raw in re.split(r"(?<=[.!?])\s+", text):
        s = " ".join(raw.split())
        words = s.split(" ")
        if not (min_words <= len(words) <= max_words) or _SKIP_CHARS & set(s) or not s[0].isupper():
            continue
        if s in seen:
            continue
        seen.add(s)
        out.append(s)
    if n is None:
        return out
    if n > len(out):
        raise ConfigError(f"english_sentences(n={n}): only {len(out)} sentences are available.")
    return random.Random(seed).sample(out, n)
