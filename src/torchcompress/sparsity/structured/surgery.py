"""The surgery: slice every parameter and buffer, then let handlers fix the attributes.

:func:`keep_indices` turns the removed units into the indices each ``(tensor, dimension)`` keeps;
:func:`apply_pruning` slices each tensor once (tied tensors stay tied: every module holding it gets
the new one), calls each handler's ``resize`` (layers first, then the blocks around them, deepest
first) and marks every changed module so that ``tc.save`` records its new shapes
(:mod:`~torchcompress.sparsity.structured.codecs`). :func:`transaction` puts the model back as it
was if anything fails.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.batches import example_batch
    >>> from torchcompress.sparsity.structured.builder import analyse
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> a = analyse(model, example_batch(model, torch.randn(1, 4)))
    >>> _ = apply_pruning(model, a.groups, [[0, 1, 2]])
    >>> model[0].out_features, model[2].weight.shape
    (3, torch.Size([2, 3]))
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ... import forms
from .graph import Group, split_key
from .handlers import Keep, handler_for

__all__ = ["RESIZED_ATTR", "apply_pruning", "keep_indices", "transaction"]

#: set (in a module's ``__dict__``) on every module whose shapes channel pruning changed
RESIZED_ATTR = "_torchcompress_resized"

# a module resized here is in the "channel-pruned" form of torchcompress.forms
forms.register_recogniser("channel-pruned", lambda m: bool(m.__dict__.get(RESIZED_ATTR)))


def keep_indices(
    groups: Sequence[Group], removed: Sequence[Sequence[int]], sizes: dict[tuple[str, int], int]
) -> dict[tuple[str, int], Tensor]:
    """``(key, dim)`` -> the sorted indices kept, for every dimension that loses some."""
    gone: dict[tuple[str, int], set[int]] = {}
    for g, units in zip(groups, removed):
        for u in units:
            for kd, pos in g.units[u].slices.items():
                gone.setdefault(kd, set()).update(pos)
    return {
        kd: torch.tensor([i for i in range(sizes[kd]) if i not in out], dtype=torch.long)
        for kd, out in gone.items()
        if out
    }


def _locations(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    out: dict[int, list[tuple[nn.Module, str, bool]]] = {}
    for m in model.modules():
        for n, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, n, True))
        for n, b in m._buffers.items():
            if b is not None:
                out.setdefault(id(b), []).append((m, n, False))
    return out


def _local(key: str, prefix: str) -> str:
    if not prefix:
        return key
    if key.startswith(prefix + "#"):
        return key[len(prefix) :]
    return key[len(prefix) + 1 :]


def apply_pruning(
    model: nn.Module,
    groups: Sequence[Group],
    removed: Sequence[Sequence[int]],
    binders: dict[tuple[str, int], str | None] | None = None,
) -> list[str]:
    """Remove the units ``removed[i]`` of ``groups[i]`` from ``model``; return the changed modules.

    Args:
        model: the model (changed in place).
        groups: the groups of its dependency graph.
        removed: per group, the indices of the units to remove.
        binders: ``(key, dim)`` -> the module whose handler bound it (default: from the groups).
    """
    sizes = {(m.key, m.dim): m.size for g in groups for m in g.members}
    if binders is None:
        binders = {(m.key, m.dim): m.binder for g in groups for m in g.members}
    keep = keep_indices(groups, removed, sizes)
    if not keep:
        return []
    where = _locations(model)
    names = {id(m): n for n, m in model.named_modules()}
    by_key: dict[str, dict[int, Tensor]] = {}
    for (key, dim), idx in keep.items():
        by_key.setdefault(key, {})[dim] = idx
    # what each module's handler is told: the tensors it holds, the keys it bound
    per_module: dict[str, Keep] = {}
    # plain tensors even under an outer torch.inference_mode (the pruned model must stay trainable)
    with torch.inference_mode(False), torch.no_grad():
        for key, dims in by_key.items():
            owner, attr = split_key(key)
            if attr.startswith("#"):
                continue
            t = getattr(model.get_submodule(owner), attr)
            new = t.detach()
            for dim, idx in sorted(dims.items()):
                new = new.index_select(dim, idx.to(new.device))
            new = new.contiguous()
            if isinstance(t, nn.Parameter):
                new = nn.Parameter(new, requires_grad=t.requires_grad)
            for module, local, is_param in where.get(id(t), []):
                if is_param:
                    module._parameters[local] = new
                else:
                    module._buffers[local] = new
                per_module.setdefault(names[id(module)], {})[local] = dict(dims)
    for (key, dim), idx in keep.items():
        b = binders.get((key, dim))
        if b is not None:
            per_module.setdefault(b, {}).setdefault(_local(key, b), {})[dim] = idx
    changed: dict[str, nn.Module] = {}
    for name in sorted(per_module, key=lambda n: -n.count(".")):
        module = model.get_submodule(name)
        h = handler_for(module)
        if h is not None:
            h.resize(module, per_module[name], name)
        changed[name] = module
    # other handlers (blocks around layers), deepest first
    touched = list(changed)
    for name, module in reversed(list(model.named_modules())):
        h = handler_for(module)
        if h is None or h.leaf or name in per_module:
            continue
        prefix = name + "." if name else ""
        if not any(t.startswith(prefix) for t in touched if t != name):
            continue
        local: Keep = {}
        for (key, dim), idx in keep.items():
            if key.startswith(prefix):
                local.setdefault(key[len(prefix) :], {})[dim] = idx
        h.resize(module, local, name)
        changed[name] = module
    for module in changed.values():
        module.__dict__[RESIZED_ATTR] = True
    return sorted(changed)


@contextlib.contextmanager
def transaction(model: nn.Module) -> Iterator[None]:
    """Restore every module (attributes, parameters, buffers, children) and configs on an error."""
    saved: list[
        tuple[nn.Module, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]
    ] = []
    configs: dict[int, tuple[Any, dict[str, Any]]] = {}
    for m in model.modules():
        saved.append((m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)))
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "__dict__") and not isinstance(c, nn.Module):
            configs.setdefault(id(c), (c, dict(c.__dict__)))
    try:
        yield
    except BaseException:
        for m, d, p, b, mods in saved:
            params, buffers, modules = m._parameters, m._buffers, m._modules
            m.__dict__.clear()
            m.__dict__.update(d)
            for container, before in ((params, p), (buffers, b), (modules, mods)):
                container.clear()
                container.update(before)
        for c, d in configs.values():
            c.__dict__.clear()
            c.__dict__.update(d)
        raise
