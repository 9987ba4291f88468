"""Reading CIFAR-10 batch files: the binary and the python layouts, and a restricted unpickler.

The python batches are pickles; they are read with an unpickler that can only rebuild numpy
arrays, dtypes and plain containers, so a tampered file cannot run code.

Example:
    >>> import pickle, io
    >>> RestrictedUnpickler(io.BytesIO(pickle.dumps({"labels": [1, 2]}))).load()
    {'labels': [1, 2]}
"""

from __future__ import annotations

import importlib
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, DatasetNotFoundError

__all__: list[str] = []

log = logging.getLogger(__name__)

_BIN_DIR = "cifar-10-batches-bin"
_PY_DIR = "cifar-10-batches-py"
_RECORD = 1 + 3 * 32 * 32


def bin_files(train: bool) -> list[str]:
    """The batch files of a split in the binary layout."""
    return [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]


def py_files(train: bool) -> list[str]:
    """The batch files of a split in the python layout."""
    return [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]


def find_cifar(root: Path, train: bool) -> tuple[str, Path]:
    """Return ``("bin" | "py", folder)`` for the layout found at or under ``root``."""
    candidates = [
        ("bin", root),
        ("py", root),
        ("bin", root / _BIN_DIR),
        ("py", root / _PY_DIR),
    ]
    for kind, folder in candidates:
        names = bin_files(train) if kind == "bin" else py_files(train)
        if all((folder / n).is_file() for n in names):
            return kind, folder
    split = "training" if train else "test"
    partial = [
        (kind, folder)
        for kind, folder in candidates
        if folder.is_dir()
        and any(
            (folder / n).is_file() for n in (bin_files(train) if kind == "bin" else py_files(train))
        )
    ]
    if partial:
        kind, folder = partial[0]
        names = bin_files(train) if kind == "bin" else py_files(train)
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


def read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` of a binary batch file."""
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


class RestrictedUnpickler(pickle.Unpickler):
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


def read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` of a python (pickled) batch file."""
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
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


def read_class_names(kind: str, folder: Path) -> list[str] | None:
    """The ten class names stored beside the batches (``None`` when absent or unreadable)."""
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
                    obj = RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
                names = _get(obj, "label_names") if isinstance(obj, dict) else None
                if names is not None and len(names) == 10:
                    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError):
        log.debug("could not read the CIFAR-10 class names in %s", folder)
    return None
