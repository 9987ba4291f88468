"""Seeding, devices, train/eval modes and progress bars around the training and evaluation loops.

Example:
    >>> import torch, torchcompress as tc
    >>> _ = tc.seed_everything(0); a = torch.rand(2)
    >>> _ = tc.seed_everything(0); bool((torch.rand(2) == a).all())
    True
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["seed_everything"]


def seed_everything(seed: int, *, deterministic: bool = False) -> int:
    """Seed Python's ``random``, numpy and torch (CPU and every CUDA device).

    Args:
        seed: the seed (a non-negative int).
        deterministic: also ask torch for deterministic algorithms (``warn_only``: an op without a
            deterministic implementation warns instead of failing) and turn off cuDNN autotuning.

    Returns:
        ``seed``.

    Raises:
        ConfigError: ``seed`` is not a non-negative int.

    Example:
        >>> import torch, torchcompress as tc
        >>> _ = tc.seed_everything(0); a = torch.rand(2)
        >>> _ = tc.seed_everything(0); bool((torch.rand(2) == a).all())
        True
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed_everything: seed must be a non-negative int, got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too, lazily (no CUDA initialisation)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return seed


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter or buffer is (CPU for a model without tensors)."""
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device=`` of a loop: ``None`` follows the model; otherwise the model is moved there."""
    if device is None:
        return model_device(model)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device={device!r} is not a torch device: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available on this machine.")
    if model_device(model) != dev:
        model.to(dev)
    return dev


class Modes:
    """Remember every submodule's train/eval flag and put them back (new submodules inherit)."""

    def __init__(self, *models: nn.Module | None) -> None:
        self.models = [m for m in models if m is not None]
        self.saved = {id(mod): mod.training for m in self.models for mod in m.modules()}

    def restore(self) -> None:
        """Put every remembered flag back; a submodule added since takes its parent's."""
        for m in self.models:
            stack: list[tuple[nn.Module, bool]] = [(m, self.saved.get(id(m), m.training))]
            while stack:
                mod, inherited = stack.pop()
                mode = self.saved.get(id(mod), inherited)
                mod.training = mode
                stack.extend((c, mode) for c in mod.children())


def progress_bar(show: bool, total: int | None, desc: str) -> Any:
    """A tqdm bar when ``show``, else ``None``."""
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors in a (nested) output to ``device``, keeping the containers' types."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(o, device) for o in obj))
    if isinstance(obj, tuple | list):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, Mapping):
        moved = {k: to_device(v, device) for k, v in obj.items()}
        try:
            return type(obj)(**moved)
        except TypeError:
            return moved
    return obj
