"""Helpers the data sets share: argument checks and the train/test DataLoader pair."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, check_range

__all__: list[str] = []


def check_int(field: str, value: Any, low: int, *, owner: str) -> None:
    """``value`` is an int ``>= low``, else a :class:`~torchcompress.errors.ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{owner}: {field} must be an int, got {type(value).__name__} {value!r}.")
    check_range(field, int(value), low, owner=owner)


def make_loaders(
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
    """A shuffled (seeded) training loader and an unshuffled test loader."""
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
