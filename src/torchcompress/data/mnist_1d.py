"""MNIST-1D (Greydanus, "Scaling down Deep Learning", 2020), generated offline.

Example:
    >>> import torchcompress as tc
    >>> train, test = tc.data.mnist1d(batch_size=100)    # doctest: +SKIP
    >>> len(train.dataset), len(test.dataset)            # doctest: +SKIP
    (4000, 1000)
"""

from __future__ import annotations

import functools
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import ConfigError, DependencyError, check_range, did_you_mean
from .common import check_int, make_loaders

__all__ = ["mnist1d", "mnist1d_tensors"]

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
            allowed = [n for n in known if n not in _MNIST1D_FIXED]
            raise ConfigError(
                f"mnist1d: unknown dataset argument {k!r} (known: {', '.join(allowed)})."
                f"{did_you_mean(k, allowed)}"
            )
        if k == "num_samples":
            check_int(k, v, 20, owner="mnist1d")
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
    check_int("batch_size", batch_size, 1, owner="mnist1d")
    check_int("num_workers", num_workers, 0, owner="mnist1d")
    if seed is not None:
        check_int("seed", seed, 0, owner="mnist1d")
        dataset_args["seed"] = seed
    x, y, xt, yt = mnist1d_tensors(channel_dim=channel_dim, **dataset_args)
    return make_loaders(
        TensorDataset(x, y),
        TensorDataset(xt, yt),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        seed=0 if seed is None else seed,
        pin_memory=False,
    )
