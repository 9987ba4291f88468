"""Outputs of named modules, forward by forward: :func:`capture_outputs`.

A small, general piece of the shared machinery: hooks on the modules named (qualified names as in
``model.named_modules()``) keep what each one returned, without rewriting the model. Distillation
reads intermediate features of a student and a teacher through it; sensitivity analysis or any
other client that needs "the output of ``layer2`` for this batch" can do the same.

- Names are checked when the capture is built: an unknown name is a
  :class:`~torchcompress.errors.SelectionError` naming the closest module names.
- Outputs keep their autograd graph (unless ``detach=True``), so a loss on them trains the model.
- An output changed in place after it was captured (``ReLU(inplace=True)`` right after the
  module, say) would silently give wrong values; reading it is an error that says which module to
  capture instead, or to capture with ``clone=True``.
- The hooks are removed on leaving the ``with`` block (also when the forward raised), or by
  :meth:`OutputCapture.remove`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.tracing import capture_outputs
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with capture_outputs(model, ["0", "2"]) as outs:
    ...     y = model(torch.randn(5, 3))
    >>> outs["0"].shape, torch.equal(outs["2"], y)
    (torch.Size([5, 4]), True)
    >>> len(model[0]._forward_hooks)  # removed on leaving the block
    0
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CompressionStateError, SelectionError, did_you_mean
from .recorder import _version

__all__ = ["OutputCapture", "capture_outputs", "check_module_names"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers (names are relative to it)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def _map_tensors(obj: Any, fn: Any) -> Any:
    """``obj`` with every tensor (in nested tuples, lists and dicts) replaced by ``fn(tensor)``."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(_map_tensors(o, fn) for o in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        try:
            out = type(obj)()  # OrderedDict, Hugging Face ModelOutput (all fields optional)
        except TypeError:
            out = {}
        for k, v in obj.items():
            out[k] = _map_tensors(v, fn)
        return out
    return obj


def _tensors(obj: Any, out: list[Tensor]) -> list[Tensor]:
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, list | tuple):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


def check_module_names(model: nn.Module, names: Iterable[str], *, what: str = "module") -> None:
    """Raise a :class:`SelectionError` for the first name that is not a submodule of ``model``.

    The message names the closest module names (or, when none is close, the model's children).

    Example:
        >>> from torch import nn
        >>> try:
        ...     check_module_names(nn.Sequential(nn.Linear(2, 2)), ["1"])
        ... except ValueError as e:
        ...     print(str(e).split(".")[0])
        Sequential has no module '1'
    """
    model = _unwrap(model)
    known = {n for n, _ in model.named_modules()}
    for name in names:
        if not isinstance(name, str):
            raise SelectionError(
                f"A {what} name must be a string (a qualified module name such as "
                f"'layer1.0.conv1'), got {type(name).__name__} {name!r}."
            )
        if name in known:
            continue
        hint = did_you_mean(name, [n for n in known if n])
        if not hint:
            children = [n for n, _ in model.named_children()]
            hint = f" Its top-level modules: {', '.join(repr(c) for c in children[:12])}." + (
                " ..." if len(children) > 12 else ""
            )
        raise SelectionError(
            f"{type(model).__name__} has no {what} {name!r}.{hint} (Names are qualified, as in "
            "model.named_modules(), e.g. 'layer1.0.conv1'.)"
        )


class OutputCapture(Mapping[str, Any]):
    """Hooks that keep the outputs of named modules; a mapping name -> the latest output.

    Build it with :func:`capture_outputs` (or directly), then either use it as a context manager
    or call :meth:`attach` and :meth:`remove` yourself (a capture that lives across many forwards,
    such as a distillation run). Between forwards, :meth:`clear` drops what was kept.

    Args:
        model: the model (a DDP / DataParallel wrapper is looked through: names are relative to
            the wrapped model).
        names: qualified module names (``""`` is the model itself).
        clone: keep a copy of each output (still differentiable), immune to later in-place ops.
        detach: keep outputs without their autograd graph.
        all_calls: keep every call's output until :meth:`clear` (``False``: only the latest, so
            forwards that nobody reads, such as evaluation passes, hold no memory).

    Raises:
        SelectionError: a name that is not a module of the model (with the closest names).
        UnsupportedModuleError: a named module is a TorchScript module (which takes no hooks).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        *,
        clone: bool = False,
        detach: bool = False,
        all_calls: bool = True,
    ) -> None:
        from ..errors import UnsupportedModuleError

        self.model = _unwrap(model)
        self.names = tuple(dict.fromkeys([names] if isinstance(names, str) else names))
        check_module_names(self.model, self.names)
        for name in self.names:
            if isinstance(self.model.get_submodule(name), torch.jit.ScriptModule):
                raise UnsupportedModuleError(
                    f"Module {name!r} is a TorchScript module, whose outputs cannot be captured; "
                    "capture its parent or the module that consumes its output."
                )
        self.clone = clone
        self.detach = detach
        self.all_calls = all_calls
        self._calls: dict[str, list[tuple[Any, list[tuple[Tensor, int | None]]]]] = {}
        self._handles: list[Any] = []
        self._attached = False

    # -- lifetime ---------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether the hooks are installed."""
        return self._attached

    def attach(self) -> OutputCapture:
        """Install the hooks and return ``self`` (attaching an attached capture is an error)."""
        if self._attached:
            raise CompressionStateError("This OutputCapture is already attached.")
        try:
            for name in self.names:
                module = self.model.get_submodule(name)
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self._unhook()
            raise
        self._attached = True
        return self

    def _unhook(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._attached = False

    def remove(self) -> None:
        """Remove the hooks and drop the kept outputs (removing twice is harmless)."""
        self._unhook()
        self._calls.clear()

    def __enter__(self) -> OutputCapture:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self._unhook()  # what was captured stays readable after the block

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.detach:
                output = _map_tensors(output, lambda t: t.detach())
            if self.clone:
                output = _map_tensors(output, lambda t: t.clone())
            kept = [(t, _version(t)) for t in _tensors(output, [])]
            if self.all_calls:
                self._calls.setdefault(name, []).append((output, kept))
            else:
                self._calls[name] = [(output, kept)]

        return hook

    # -- reading ----------------------------------------------------------------------------
    def clear(self) -> None:
        """Forget the outputs kept so far (call it between forwards)."""
        self._calls.clear()

    def missing(self) -> list[str]:
        """The names whose module has not run since the last :meth:`clear`."""
        return [n for n in self.names if n not in self._calls]

    def calls(self, name: str) -> list[Any]:
        """Every output of module ``name`` since the last :meth:`clear`, in call order.

        A module called several times in one forward (a shared block) has one entry per call
        (only the latest with ``all_calls=False``).
        """
        if name not in self.names:
            raise KeyError(f"{name!r} is not captured; captured names: {list(self.names)}")
        return [self._checked(name, out, kept) for out, kept in self._calls.get(name, [])]

    def _checked(self, name: str, output: Any, kept: list[tuple[Tensor, int | None]]) -> Any:
        for t, version in kept:
            if version is not None and _version(t) != version:
                raise CompressionStateError(
                    f"The output of module {name!r} was modified in place after it was captured "
                    "(an in-place op such as ReLU(inplace=True) ran on it), so it no longer holds "
                    f"what {name!r} returned. Capture the module that applies the in-place op "
                    "instead, or capture with clone=True."
                )
        return output

    def __getitem__(self, name: str) -> Any:
        """The output of the last call of module ``name`` since the last :meth:`clear`."""
        calls = self._calls.get(name)
        if not calls:
            if name in self.names:
                raise KeyError(f"module {name!r} has not run since the outputs were last cleared")
            raise KeyError(f"{name!r} is not captured; captured names: {list(self.names)}")
        return self._checked(name, *calls[-1])

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in self.names if n in self._calls])

    def __len__(self) -> int:
        return sum(1 for n in self.names if n in self._calls)

    def __repr__(self) -> str:
        return f"OutputCapture({list(self.names)}, captured={list(self)})"


def capture_outputs(
    model: nn.Module,
    names: Iterable[str] | str,
    *,
    clone: bool = False,
    detach: bool = False,
    all_calls: bool = True,
) -> OutputCapture:
    """Capture the outputs of the named modules of ``model`` (a context manager).

    Inside the ``with`` block every forward of a named module records its output;
    ``capture[name]`` is the output of its last call, :meth:`OutputCapture.calls` all of them,
    :meth:`OutputCapture.clear` forgets them between forwards. The hooks are removed on leaving the
    block (also when the forward raised); what was captured stays readable.

    Args:
        model: the model (a DDP / DataParallel wrapper is looked through).
        names: qualified module names, as in ``model.named_modules()``.
        clone: keep copies (still differentiable), immune to later in-place ops.
        detach: keep outputs without their autograd graph.
        all_calls: keep every call's output (``False``: only each module's latest).

    Returns:
        An :class:`OutputCapture` (not yet attached: ``with`` attaches it).

    Raises:
        SelectionError: an unknown module name; the message names the closest ones.

    Example:
        >>> import torch, torchcompress as tc
        >>> model = tc.models.create("resnet20").eval()
        >>> with capture_outputs(model, ["layer1", "layer3"]) as feats:
        ...     _ = model(torch.randn(2, 3, 32, 32))
        >>> [tuple(feats[n].shape) for n in feats]
        [(2, 16, 32, 32), (2, 64, 8, 8)]
        >>> try:
        ...     capture_outputs(model, ["layer4"])
        ... except ValueError as e:
        ...     print(str(e).split(" (")[0])
        CifarResNet has no module 'layer4'. Did you mean 'layer3' or 'layer2' or 'layer1'?
    """
    return OutputCapture(model, names, clone=clone, detach=detach, all_calls=all_calls)
