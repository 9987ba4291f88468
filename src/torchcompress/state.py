"""Where a model keeps its tensors: the parameter or buffer slot a state-dict key names, weight ties
made and unmade across a load, and loading values with clear errors (helpers of :mod:`.io`).

Example:
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> slot(m, "1.weight") is m[1].weight, has_module(m, "2")
    (True, False)
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import CompressionStateError, SelectionError
from .select import get_module

__all__ = ["has_module", "load_state", "owner_and_attr", "slot", "tie_aliases", "untie_unshared"]


def owner_and_attr(model: nn.Module, key: str) -> tuple[nn.Module, str] | None:
    """The module holding the parameter or buffer ``key`` names and the attribute, or ``None``."""
    owner_name, _, attr = key.rpartition(".")
    try:
        owner = get_module(model, owner_name)
    except SelectionError:
        return None
    if attr in owner._parameters or attr in owner._buffers:
        return owner, attr
    return None


def slot(model: nn.Module, key: str) -> torch.Tensor | None:
    """The parameter or buffer the state-dict ``key`` names (the tensor itself), or ``None``."""
    found = owner_and_attr(model, key)
    if found is None:
        return None
    owner, attr = found
    return owner._parameters.get(attr, owner._buffers.get(attr))


def tie_aliases(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make every tensor the file stored once (``alias -> key``) one tensor of the model again.

    Modules rebuilt by a codec hold tensors of their own (a fake-quant ``lm_head`` made from a
    Linear tied to the embedding): after the values are loaded, the alias's slot is pointed at the
    key's tensor, so tied weights are tied again whatever rebuilt their modules.
    """
    for alias, key in aliases.items():
        target = slot(model, key)
        found = owner_and_attr(model, alias)
        if target is None or found is None:
            continue
        owner, attr = found
        current = owner._parameters.get(attr, owner._buffers.get(attr))
        if current is target or current is None or current.shape != target.shape:
            continue
        if attr in owner._parameters:
            owner._parameters[attr] = target  # type: ignore[assignment]
        else:
            owner._buffers[attr] = target


def untie_unshared(model: nn.Module, aliases: dict[str, str], stored: set[str]) -> None:
    """Give tensors the fresh model ties but the file stores separately a slot of their own, so
    loading the second value does not overwrite the first."""
    seen: dict[int, str] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor):
            continue
        first = seen.setdefault(id(t), key)
        if first == key or key not in stored or first not in stored:
            continue
        if aliases.get(key) == first or aliases.get(first) == key:
            continue
        found = owner_and_attr(model, key)
        if found is None:
            continue
        owner, attr = found
        if attr in owner._parameters:
            p = owner._parameters[attr]
            owner._parameters[attr] = nn.Parameter(p.detach().clone(), p.requires_grad)  # type: ignore[union-attr]
        else:
            owner._buffers[attr] = t.detach().clone()


def has_module(model: nn.Module, name: str) -> bool:
    """Whether ``model`` has a submodule called ``name``."""
    try:
        get_module(model, name)
    except SelectionError:
        return False
    return True


def load_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load ``tensors`` non-strictly; return the missing and unexpected keys.

    Raises:
        CompressionStateError: a tensor's size does not fit the model's.
    """
    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # size mismatch
        raise CompressionStateError(f"The file's tensors do not fit the model: {e}") from e
    return list(result.missing_keys), list(result.unexpected_keys)
