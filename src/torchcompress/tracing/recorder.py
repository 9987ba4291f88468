"""The one op recorder of torchcompress: :class:`Recorder`.

One real forward with module pre/post hooks keeping a module stack and a
:class:`~torch.overrides.TorchFunctionMode` seeing every torch op (functional calls made outside
any layer included, e.g. ``torch.matmul`` in a custom attention). Each op is attributed to the
module at the top of the stack, each tensor to its :class:`Source` (the op that computed it, the
modules that returned it, a model input, a parameter or buffer; an in-place op makes a new source,
an op returning its input unchanged does not), and reads of a parameter or buffer
outside the module that owns it are flagged. Clients subscribe as listeners (any object with some
of ``on_module_enter``, ``on_module_exit``, ``on_op``; :class:`Listener` is a no-op base) instead of
writing their own mode: the profiler counts MACs, fusion checks which layer feeds each BatchNorm,
QAT follows ReLU outputs, the channel-pruning dependency graph links the ops.

Inside the ``with`` block the model runs in eval mode under ``torch.no_grad()`` (both optional);
on leaving it, also when the forward raised, the hooks and the mode are removed and every module's
train/eval flag is restored. Work done by listeners (and by the recorder itself) is not recorded.
:attr:`Recorder.stack` is left as it was when the forward raised, so its last entry names the
module that failed.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.tracing import Listener, Recorder
    >>> class Ops(Listener):
    ...     def __init__(self):
    ...         self.seen = []
    ...     def on_op(self, event):
    ...         self.seen.append((event.name, event.func_name))
    >>> model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    >>> ops, x = Ops(), torch.randn(2, 3)
    >>> with Recorder(model, [ops]) as rec:
    ...     y = model(x)
    >>> ops.seen
    [('0', 'linear'), ('1', 'relu')]
    >>> rec.source(y).module, rec.source(y).op.func_name
    ('1', 'relu')
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .ops import OPS

__all__ = ["Listener", "ModuleCall", "OpEvent", "Recorder", "Source", "TensorUse", "flat_tensors"]


@dataclass(eq=False)
class ModuleCall:
    """One call of a module's forward.

    Attributes:
        name: qualified module name (``""``: the model; a module registered under several names has
            the first one).
        module: the module.
        args: positional inputs.
        kwargs: keyword inputs.
        parent: the call it happened in (``None``: the outermost).
        index: how many earlier calls of this module the forward made.
        output: what it returned (set on exit).
        failed: its forward raised and the model's own code caught the exception (the exit is
            reported when an enclosing module returns).
    """

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    parent: ModuleCall | None = None
    index: int = 0
    output: Any = None
    failed: bool = False

    def ancestors(self) -> Iterator[ModuleCall]:
        """The enclosing calls, innermost first."""
        call = self.parent
        while call is not None:
            yield call
            call = call.parent


@dataclass(eq=False)
class Source:
    """Where a tensor came from.

    Attributes:
        op: the recorded op that computed it last, in place included (``None``: not computed by a
            recorded op). An op that returns one of its inputs unchanged (dropout in eval mode,
            ``contiguous`` on a contiguous tensor) leaves the source as it was.
        calls: the module calls that returned it, innermost first.
        param: its qualified name when it is a parameter or buffer of the model.
        input: it is an input of the outermost call (the model's inputs).
    """

    op: OpEvent | None = None
    calls: list[ModuleCall] = field(default_factory=list)
    param: str | None = None
    input: bool = False

    @property
    def module(self) -> str | None:
        """The innermost module that returned the tensor (``None``: no module returned it)."""
        return self.calls[0].name if self.calls else None


@dataclass(eq=False)
class TensorUse:
    """A tensor among an op's arguments.

    Attributes:
        tensor: the tensor.
        where: its position in the arguments: ``(i,)`` for ``args[i]``, ``(i, j)`` for
            ``args[i][j]`` (the tensors of ``torch.cat``), ``("name",)`` for a keyword argument.
        source: where it came from (``None`` when the recorder does not track sources).
    """

    tensor: Tensor
    where: tuple[int | str, ...]
    source: Source | None


@dataclass(eq=False)
class OpEvent:
    """One torch op seen by the :class:`Recorder`.

    Attributes:
        index: its position among the recorded ops.
        func: the function called (``torch.cat``, ``F.relu``, ``Tensor.view``, ...).
        args: positional arguments as passed (dims, sizes and other non-tensor values kept).
        kwargs: keyword arguments as passed.
        output: what it returned.
        call: the module call at the top of the stack (``None``: outside every module).
        inputs: the tensors among the arguments, in order, with their positions and sources.
        outputs: the tensors it returned (flattened, in order).
        param_reads: ``(name, owner)`` for each parameter or buffer read by the op while its owner
            module is not the one running it (e.g. ``F.batch_norm`` on a BN's statistics in the
            parent's forward).
    """

    index: int
    func: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    call: ModuleCall | None
    inputs: list[TensorUse]
    outputs: list[Tensor]
    param_reads: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The qualified name of the module that ran the op (``""``: the model or none)."""
        return self.call.name if self.call is not None else ""

    @property
    def func_name(self) -> str:
        """The function's name (``"cat"``, ``"relu"``, ``"view"``)."""
        return str(getattr(self.func, "__name__", self.func))

    @property
    def categories(self) -> frozenset[str]:
        """The op's categories in :data:`~torchcompress.tracing.OPS`."""
        return OPS.of_op(self.func, self.args, self.kwargs)


class Listener:
    """A no-op base for :class:`Recorder` listeners (override what you need)."""

    def on_module_enter(self, call: ModuleCall) -> None:
        """A module's forward starts (``call`` is on top of the recorder's stack)."""

    def on_module_exit(self, call: ModuleCall) -> None:
        """A module's forward returned (``call.output``) or failed (``call.failed``)."""

    def on_op(self, event: OpEvent) -> None:
        """A torch op ran."""


def _walk(obj: Any, where: tuple[int | str, ...], out: list[tuple[Tensor, tuple]]) -> None:
    if isinstance(obj, Tensor):
        out.append((obj, where))
    elif isinstance(obj, list | tuple):
        for i, o in enumerate(obj):
            _walk(o, (*where, i), out)
    elif isinstance(obj, dict):
        for k, o in obj.items():
            _walk(o, (*where, k), out)


def _version(t: Tensor) -> int | None:
    """The tensor's in-place modification counter (``None`` where it keeps none)."""
    try:
        return int(t._version)
    except (RuntimeError, AttributeError):  # inference tensors, exotic subclasses
        return None


def flat_tensors(obj: Any) -> list[Tensor]:
    """Every tensor in ``obj`` (nested lists, tuples and dicts), in order."""
    found: list[tuple[Tensor, tuple]] = []
    _walk(obj, (), found)
    return [t for t, _ in found]


class Recorder(TorchFunctionMode):
    """Records one forward: module calls, ops, and where every tensor came from.

    Args:
        model: the model whose modules are hooked (TorchScript modules are not).
        listeners: objects with any of ``on_module_enter(call)``, ``on_module_exit(call)`` and
            ``on_op(event)``; called in order. An exception a listener raises propagates out of
            the forward.
        sources: track the :class:`Source` of every tensor (this keeps the forward's tensors alive
            until the recorder is dropped); without it :meth:`source` returns ``None``.
        eval: run the model in eval mode (every module's flag is restored on exit).
        no_grad: run under ``torch.no_grad()``.

    Attributes:
        stack: the module calls in progress, outermost first (after a forward that raised: the
            calls it raised in).
        ops: how many ops were recorded.
    """

    def __init__(
        self,
        model: nn.Module,
        listeners: Iterable[Any] = (),
        *,
        sources: bool = True,
        eval: bool = True,
        no_grad: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.listeners = list(listeners)
        self.track_sources = sources
        self.eval_mode = eval
        self.no_grad = no_grad
        self.stack: list[ModuleCall] = []
        self.ops = 0
        self._counts: dict[str, int] = {}
        self._sources: dict[int, tuple[Tensor, Source]] = {}
        self._owners: dict[int, tuple[Tensor, list[str]]] = {}
        self._busy = False
        self._active = False
        self._handles: list[Any] = []
        self._modes: dict[nn.Module, bool] = {}
        self._exits = contextlib.ExitStack()

    # -- entering and leaving ---------------------------------------------------------------
    def __enter__(self) -> Recorder:
        if self._active:
            raise RuntimeError("This Recorder is already recording; create another one.")
        self.stack, self.ops, self._counts, self._sources = [], 0, {}, {}
        self._owners = {}
        for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
            self._owners.setdefault(id(t), (t, []))[1].append(name)
        self._modes = {m: m.training for m in self.model.modules()}
        self._active = True
        try:
            if self.eval_mode:
                self.model.eval()
            self._install()
            if self.no_grad:
                self._exits.enter_context(torch.no_grad())
            super().__enter__()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        try:
            self._exits.close()
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            for m, training in self._modes.items():
                m.training = training
            self._modes = {}
            self._active = False

    def _install(self) -> None:
        for name, m in self.model.named_modules():
            if isinstance(m, torch.jit.ScriptModule):
                continue
            self._handles.append(m.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self._handles.append(m.register_forward_hook(self._post(name), with_kwargs=True))

    # -- queries ----------------------------------------------------------------------------
    @property
    def where(self) -> str:
        """The innermost module call in progress (``""``: none or the model)."""
        return self.stack[-1].name if self.stack else ""

    def source(self, tensor: Any) -> Source | None:
        """Where ``tensor`` came from (``None``: not a tensor the recorder saw, or no tracking)."""
        if not self.track_sources or not isinstance(tensor, Tensor):
            return None
        entry = self._sources.get(id(tensor))
        if entry is not None and entry[0] is tensor:
            return entry[1]
        owned = self._owners.get(id(tensor))
        if owned is not None and owned[0] is tensor:
            return Source(param=owned[1][0])
        return None

    def _set_source(self, tensor: Tensor, source: Source) -> None:
        self._sources[id(tensor)] = (tensor, source)

    def _notify(self, method: str, arg: Any) -> None:
        for listener in self.listeners:
            fn = getattr(listener, method, None)
            if fn is not None:
                fn(arg)

    # -- hooks ------------------------------------------------------------------------------
    def _pre(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._busy:
                return
            self._busy = True
            try:
                index = self._counts.get(name, 0)
                self._counts[name] = index + 1
                parent = self.stack[-1] if self.stack else None
                call = ModuleCall(name, module, args, kwargs, parent, index)
                if parent is None and self.track_sources:
                    for t in flat_tensors((args, kwargs)):
                        if self.source(t) is None:
                            self._set_source(t, Source(input=True))
                self.stack.append(call)
                self._notify("on_module_enter", call)
            finally:
                self._busy = False

        return hook

    def _post(self, name: str) -> Any:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            if self._busy:
                return
            self._busy = True
            try:
                pos = next(
                    (
                        i
                        for i in range(len(self.stack) - 1, -1, -1)
                        if self.stack[i].module is module
                    ),
                    None,
                )
                if pos is None:
                    return
                while len(self.stack) > pos + 1:  # raised inside, caught by the model's own code
                    stale = self.stack.pop()
                    stale.failed = True
                    self._notify("on_module_exit", stale)
                call = self.stack.pop()
                call.output = output
                if self.track_sources:
                    for t in flat_tensors(output):
                        src = self.source(t)
                        if src is None or src.param is not None:
                            src = Source()
                            self._set_source(t, src)
                        src.calls.append(call)
                self._notify("on_module_exit", call)
            finally:
                self._busy = False

        return hook

    # -- ops --------------------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._busy:
            return func(*args, **kwargs)
        found: list[tuple[Tensor, tuple]] = []
        for i, a in enumerate(args):
            _walk(a, (i,), found)
        for k, v in kwargs.items():
            _walk(v, (k,), found)
        versions = {id(t): _version(t) for t, _ in found} if self.track_sources else {}
        out = func(*args, **kwargs)
        if self._busy:
            return out
        self._busy = True
        try:
            self._record(func, args, kwargs, out, found, versions)
        finally:
            self._busy = False
        return out

    def _record(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
        found: list[tuple[Tensor, tuple]],
        versions: dict[int, int | None],
    ) -> None:
        call = self.stack[-1] if self.stack else None
        running = call.name if call is not None else ""
        inputs = [TensorUse(t, where, self.source(t)) for t, where in found]
        reads = []
        for t, _ in found:
            owned = self._owners.get(id(t))
            if owned is not None and owned[0] is t:
                owners = [n.rpartition(".")[0] for n in owned[1]]
                if running not in owners:
                    reads.append((owned[1][0], owners[0]))
        outputs = flat_tensors(out)
        event = OpEvent(self.ops, func, args, kwargs, out, call, inputs, outputs, reads)
        self.ops += 1
        if self.track_sources:
            inputs_by_id = {id(t): t for t, _ in found}
            for t in outputs:
                before = versions.get(id(t)) if inputs_by_id.get(id(t)) is t else None
                if before is not None and _version(t) == before:
                    continue  # an input returned unchanged (dropout in eval, contiguous)
                self._set_source(t, Source(op=event))
        self._notify("on_op", event)
