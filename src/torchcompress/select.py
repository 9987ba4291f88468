"""Selecting modules by qualified name and type, and replacing them safely.

Every verb that changes a model takes ``include=`` / ``exclude=`` lists of glob patterns on qualified
module names (``"layer1.*"``, ``"fc"``). A module is *included* when its name, or the name of one of
its ancestors, matches an include pattern (so ``include=["layer1"]`` takes every layer inside
``layer1``); it is *excluded* likewise. By default every module of the family's supported types is a
target. Patterns that match nothing are an error (a typo would otherwise silently do nothing), and a
module named exactly in ``include`` that the family cannot handle is an error naming the module.

Replacement (:func:`replace_modules`) builds every new module first and swaps them in only when all
were built, keeping device, dtype and train/eval mode; if anything fails, the model is left as it was.

Two torch modules read their children's weights directly instead of calling them, so a replacement
child would never run: ``nn.MultiheadAttention`` multiplies by ``out_proj.weight`` itself (families
that replace modules skip such children, :func:`read_by_parent` names them), and
``nn.TransformerEncoderLayer``'s fused inference fast path (eval mode under ``no_grad``) reads
``linear1``/``linear2``/``norm1``/``norm2`` by weight. :func:`set_module` turns that fast path off for
a layer whose children it replaces by other module types (and back on when they are plain again),
so the replacement is what runs.

Example:
    >>> import torch.nn as nn
    >>> from torchcompress.select import select_modules
    >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    >>> [n for n, _ in select_modules(m, types=(nn.Linear,))]
    ['0', '2.0']
    >>> [n for n, _ in select_modules(m, types=(nn.Linear,), exclude=["2"])]
    ['0']
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import SelectionError, UnsupportedModuleError, did_you_mean

__all__ = [
    "DEFAULT_TYPES",
    "get_module",
    "matches",
    "module_device_dtype",
    "read_by_parent",
    "replace_modules",
    "select_modules",
    "set_module",
    "snapshot_modules",
]

#: Layer types every family supports unless it says otherwise.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)

Patterns = str | Sequence[str] | None


def _as_list(patterns: Patterns, field: str) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    out = list(patterns)
    for p in out:
        if not isinstance(p, str):
            raise SelectionError(f"{field} must be a list of glob patterns (str), got {p!r}.")
    return out


def _prefixes(name: str) -> Iterator[str]:
    """``"a.b.c"`` -> ``"a.b.c"``, ``"a.b"``, ``"a"``."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        yield ".".join(parts[:i])


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` or one of its ancestors' names matches one of the glob ``patterns``."""
    if not patterns:
        return False
    return any(fnmatch.fnmatchcase(p, pat) for p in _prefixes(name) for pat in patterns)


def select_modules(
    model: nn.Module,
    include: Patterns = None,
    exclude: Patterns = None,
    types: Sequence[type[nn.Module]] | None = DEFAULT_TYPES,
    *,
    predicate: Callable[[str, nn.Module], bool] | None = None,
    skip_types: Sequence[type[nn.Module]] = (),
    family: str = "this technique",
) -> list[tuple[str, nn.Module]]:
    """Return the ``(qualified_name, module)`` targets of a verb, in ``named_modules`` order.

    Args:
        model: the model to search.
        include: glob patterns on qualified names; ``None`` means every module of ``types``.
        exclude: glob patterns removed from the selection.
        types: module classes the family supports (``None``: any module that ``predicate`` accepts).
        predicate: optional extra test ``(name, module) -> bool`` applied to candidates.
        skip_types: classes never selected and never descended into (e.g. already-compressed
            wrappers whose inner Linear must not be selected again).
        family: the technique's name, used in error messages.

    Raises:
        SelectionError: an include or exclude pattern matches no module of the model.
        UnsupportedModuleError: a module named exactly in ``include`` is not a supported type.
    """
    inc = _as_list(include, "include")
    exc = _as_list(exclude, "exclude")
    named = [(n, m) for n, m in model.named_modules() if n]
    names = [n for n, _ in named]
    for field, pats in (("include", inc), ("exclude", exc)):
        for pat in pats:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise SelectionError(
                    f"{field} pattern {pat!r} matches no module of {type(model).__name__}."
                    f"{did_you_mean(pat, names)} (Names are qualified, e.g. 'layer1.0.conv1'; "
                    "use '*' as a wildcard.)"
                )

    skipped_prefixes: list[str] = []
    out: list[tuple[str, nn.Module]] = []
    supported_names: list[str] = []
    unsupported_exact: list[tuple[str, nn.Module]] = []
    for name, module in named:
        if any(name.startswith(p + ".") for p in skipped_prefixes):
            continue
        if skip_types and isinstance(module, tuple(skip_types)):
            skipped_prefixes.append(name)
            continue
        supported = types is None or isinstance(module, tuple(types))
        if predicate is not None and supported:
            supported = predicate(name, module)
        if supported:
            supported_names.append(name)
        if inc and not matches(name, inc):
            continue
        if exc and matches(name, exc):
            continue
        if not supported:
            if name in inc:
                unsupported_exact.append((name, module))
            continue
        out.append((name, module))
    # A module named exactly in include= that the family cannot handle is an error, unless it is
    # a container of supported layers (include=["layer1"] takes every layer inside layer1).
    for name, module in unsupported_exact:
        if not any(n.startswith(name + ".") for n in supported_names):
            allowed = ", ".join(t.__name__ for t in types) if types else "the supported layers"
            raise UnsupportedModuleError(
                f"Module {name!r} ({type(module).__name__}) was asked for in include=, but "
                f"{family} supports {allowed}. Remove it from include= or pick its sub-layers."
            )
    if inc and not out:
        raise SelectionError(
            f"include={inc!r} selects no layer {family} supports"
            + (f" ({', '.join(t.__name__ for t in types)})" if types else "")
            + (f" after exclude={exc!r}" if exc else "")
            + "."
        )
    return out


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name`` (``""`` is the model itself).

    Raises:
        SelectionError: there is no such submodule; the message suggests close names.
    """
    if name == "":
        return model
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise SelectionError(
            f"{type(model).__name__} has no submodule {name!r}.{did_you_mean(name, names)}"
        ) from None


def read_by_parent(model: nn.Module) -> dict[str, str]:
    """Children whose parent multiplies by their weights directly, never calling them.

    Replacing such a child by another module would change nothing in the forward (the parent keeps
    reading the old weight), so families that replace modules leave them alone.

    Returns:
        Qualified name -> the reason, for every child of an ``nn.MultiheadAttention``.
    """
    out: dict[str, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            for child, _ in mod.named_children():
                full = f"{name}.{child}" if name else child
                out[full] = (
                    f"{full!r} belongs to the nn.MultiheadAttention {name or '(root)'!r}, which "
                    "multiplies by its weight directly instead of calling it"
                )
    return out


#: Children of nn.TransformerEncoderLayer that its fused fast path reads by weight, with the
#: classes that path handles.
_ENCODER_FASTPATH_CHILDREN: dict[str, type[nn.Module]] = {
    "linear1": nn.Linear,
    "linear2": nn.Linear,
    "norm1": nn.LayerNorm,
    "norm2": nn.LayerNorm,
}
_FASTPATH_SAVED = "_torchcompress_fastpath_activation"


def _sync_encoder_fastpath(layer: nn.Module) -> None:
    """Turn the fused fast path of an ``nn.TransformerEncoderLayer`` off while it holds replaced
    children (it would read their weights and skip their forward), and back on when it does not.

    The layer's fast path (and ``nn.TransformerEncoder``'s nested-tensor path) is only taken when
    ``activation_relu_or_gelu`` is set; the slow path uses ``layer.activation`` and never reads it.
    """
    if not isinstance(layer, nn.TransformerEncoderLayer):
        return
    plain = all(
        type(getattr(layer, child, None)) is cls
        for child, cls in _ENCODER_FASTPATH_CHILDREN.items()
    )
    saved = layer.__dict__.get(_FASTPATH_SAVED)
    if not plain and saved is None:
        layer.__dict__[_FASTPATH_SAVED] = layer.activation_relu_or_gelu
        layer.activation_relu_or_gelu = 0
    elif plain and saved is not None:
        layer.activation_relu_or_gelu = saved
        del layer.__dict__[_FASTPATH_SAVED]


def _sync_encoder_nested(encoder: nn.Module) -> None:
    """``nn.TransformerEncoder`` feeds nested tensors to its layers on its own fast path (judged by
    its first layer only); off while any of its layers has its fast path turned off."""
    if not isinstance(encoder, nn.TransformerEncoder) or not hasattr(encoder, "use_nested_tensor"):
        return
    replaced = any(_FASTPATH_SAVED in layer.__dict__ for layer in encoder.layers)
    saved = encoder.__dict__.get(_FASTPATH_SAVED)
    if replaced and saved is None:
        encoder.__dict__[_FASTPATH_SAVED] = encoder.use_nested_tensor
        encoder.use_nested_tensor = False
    elif not replaced and saved is not None:
        encoder.use_nested_tensor = saved
        del encoder.__dict__[_FASTPATH_SAVED]


def set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at qualified ``name`` and return the module it replaced.

    A parent ``nn.TransformerEncoderLayer`` whose ``linear1``/``linear2``/``norm1``/``norm2``
    becomes another module type has its fused inference fast path turned off, so that the new
    module really runs (see the module docstring).

    Raises:
        SelectionError: ``name`` is empty (the root cannot be replaced in place) or missing.
    """
    if name == "":
        raise SelectionError("The root module cannot be replaced in place; wrap it instead.")
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name)
    old = get_module(model, name)
    if isinstance(parent, nn.Sequential | nn.ModuleList) and child.isdigit():
        parent[int(child)] = new
    elif isinstance(parent, nn.ModuleDict):
        parent[child] = new
    else:
        setattr(parent, child, new)
    _sync_encoder_fastpath(parent)
    for prefix in dict.fromkeys([*_prefixes(parent_name), ""]):
        _sync_encoder_nested(get_module(model, prefix))
    return old


def module_device_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of a module's first parameter or buffer (``None`` if none)."""
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    for t in [*module.parameters(recurse=True), *module.buffers(recurse=True)]:
        if device is None:
            device = t.device
        if dtype is None and t.is_floating_point():
            dtype = t.dtype
        if device is not None and dtype is not None:
            break
    return device, dtype


def replace_modules(
    model: nn.Module,
    factories: Mapping[str, Callable[[nn.Module], nn.Module]],
    *,
    keep_dtype: bool = True,
) -> dict[str, nn.Module]:
    """Replace submodules atomically and return the old ones by name.

    Each ``factories[name](old_module)`` builds the replacement. All replacements are built before any
    is swapped in; the new modules are moved to the old module's device (and floating dtype, unless
    ``keep_dtype`` is false) and put in the old module's train/eval mode. If a factory raises, the
    model is unchanged and the exception propagates.

    Args:
        model: the model to edit in place.
        factories: qualified name -> function from the old module to its replacement.
        keep_dtype: cast floating parameters of the new module to the old module's dtype.

    Returns:
        The replaced modules, by name (useful to undo).
    """
    olds = {name: get_module(model, name) for name in factories}
    news: dict[str, nn.Module] = {}
    for name, factory in factories.items():
        old = olds[name]
        new = factory(old)
        if not isinstance(new, nn.Module):
            raise TypeError(f"The replacement built for {name!r} is not an nn.Module: {new!r}")
        device, dtype = module_device_dtype(old)
        if device is not None:
            new = new.to(device=device)
        if keep_dtype and dtype is not None:
            _cast_floating(new, dtype)
        new.train(old.training)
        news[name] = new
    done: list[str] = []
    try:
        for name, new in news.items():
            set_module(model, name, new)
            done.append(name)
    except BaseException:
        for name in reversed(done):
            set_module(model, name, olds[name])
        raise
    return olds


def _cast_floating(module: nn.Module, dtype: torch.dtype) -> None:
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point() and t.dtype != dtype and not getattr(t, "_tc_keep_dtype", False):
            t.data = t.data.to(dtype)


_MODULE_SLOTS = frozenset({"_parameters", "_buffers", "_modules", "training"})


@contextlib.contextmanager
def snapshot_modules(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Context manager that restores the model's module tree and tensors if the block raises.

    Use it around multi-step surgery that edits tensors in place as well as swapping modules. It
    keeps references to every child module and clones of every parameter and buffer, so it costs
    one copy of the model's tensors. The model's own attributes (a bound ``forward``, the recorded
    history of steps) are put back too.

    Example:
        >>> import torch.nn as nn
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> w = m[0].weight.detach().clone()
        >>> try:
        ...     with snapshot_modules(m):
        ...         _ = m[0].weight.data.zero_()
        ...         raise RuntimeError("boom")
        ... except RuntimeError:
        ...     pass
        >>> bool((m[0].weight == w).all())
        True
    """
    children = {name: dict(mod._modules) for name, mod in model.named_modules()}
    mods = dict(model.named_modules())
    tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = set()
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        tensors.append((t, t.detach().clone()))
    params = {name: dict(mod._parameters) for name, mod in mods.items()}
    buffers = {name: dict(mod._buffers) for name, mod in mods.items()}
    training = {name: mod.training for name, mod in mods.items()}
    classes = {name: type(mod) for name, mod in mods.items()}  # parametrize swaps classes
    # the model's own attributes: a bound forward, the recorded history, reports
    attributes = {k: v for k, v in model.__dict__.items() if k not in _MODULE_SLOTS}
    state: dict[str, Any] = {}
    try:
        yield state
    except BaseException:
        for k in [k for k in model.__dict__ if k not in _MODULE_SLOTS and k not in attributes]:
            del model.__dict__[k]
        model.__dict__.update(attributes)
        for name, mod in mods.items():
            mod._modules.clear()
            mod._modules.update(children[name])
            mod._parameters.clear()
            mod._parameters.update(params[name])
            mod._buffers.clear()
            mod._buffers.update(buffers[name])
            mod.training = training[name]
            if type(mod) is not classes[name]:
                mod.__class__ = classes[name]
        with torch.no_grad():
            for t, saved in tensors:
                if t.shape != saved.shape or t.dtype != saved.dtype:
                    t.data = saved
                else:
                    t.copy_(saved)
        raise
