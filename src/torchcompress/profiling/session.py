"""The counting session of :func:`profile`: a :class:`~torchcompress.tracing.Recorder` listener.

The profiler runs the model once under the shared recorder: every module call opens a frame, every
functional op with a registered formula (:mod:`~torchcompress.profiling.op_costs`) adds its MACs
to the innermost module running, and a module with a registered cost (:mod:`torchcompress.costs`),
or a weight layer of a registered layer kind (the MACs of its :class:`~torchcompress.layers.Geometry`,
:func:`~torchcompress.profiling.module_costs.layer_cost`), replaces what its children and ops
counted when its cost covers them.

Example:
    >>> import torch
    >>> from torch import nn
    >>> p = profile(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 4))
    >>> p.total_macs == 3 * (4 * 8 + 8 * 2), [r.name for r in p]
    (True, ['0', '2'])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..batches import describe_inputs, example_batch
from ..costs import LayerCost
from ..errors import ShapeError, TorchCompressError
from ..select import matches, select_modules
from ..tracing import Listener, ModuleCall, OpEvent, Recorder
from .module_costs import module_cost_fn
from .op_costs import _OPS, OpCost
from .report import _FIELDS, LayerProfile, Profile, _check_depth

__all__ = ["profile"]

log = logging.getLogger(__name__)


@dataclass
class _Acc:
    macs: int = 0
    effective_macs: int = 0
    flops: int = 0
    calls: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: _Acc) -> None:
        self.macs += other.macs
        self.effective_macs += other.effective_macs
        self.flops += other.flops
        self.calls += other.calls
        for n in other.notes:
            if n not in self.notes:
                self.notes.append(n)


def _merge(into: dict[str, _Acc], src: dict[str, _Acc]) -> None:
    for name, acc in src.items():
        if name in into:
            into[name].add(acc)
        else:
            into[name] = acc


@dataclass
class _Frame:
    call: ModuleCall
    cost_fn: Any
    acc: dict[str, _Acc] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.call.name


class _CostFunctionError(Exception):
    def __init__(self, name: str, module: nn.Module, error: BaseException) -> None:
        super().__init__(str(error))
        self.name, self.module, self.error = name, module, error


class _Counter(Listener):
    """Counts one recorded forward, per module (see :func:`profile`)."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[_Frame] = []
        self.final: dict[str, _Acc] = {}
        self.covering: set[str] = set()
        self.overrides: dict[str, LayerCost] = {}
        self._model_tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        self._density: dict[int, float] = {}

    def _parent_acc(self) -> dict[str, _Acc]:
        return self.stack[-1].acc if self.stack else self.final

    def on_module_enter(self, call: ModuleCall) -> None:
        self.stack.append(_Frame(call, module_cost_fn(call.module)))

    def on_module_exit(self, call: ModuleCall) -> None:
        if not any(f.call is call for f in self.stack):
            return
        while self.stack[-1].call is not call:  # not reported yet: merged as if it had failed
            stale = self.stack.pop()
            _merge(self._parent_acc(), stale.acc)
        frame = self.stack.pop()
        if call.failed:  # raised inside and caught by the model's own code: no cost of its own
            _merge(self._parent_acc(), frame.acc)
            return
        name, module = call.name, call.module
        own = _Acc(calls=1)
        if frame.cost_fn is not None:
            try:
                cost = frame.cost_fn(module, call.args, call.kwargs, call.output)
            except Exception as e:
                raise _CostFunctionError(name, module, e) from e
            if not isinstance(cost, LayerCost):
                raise _CostFunctionError(
                    name, module, TypeError(f"the cost function returned {type(cost).__name__}")
                )
            if cost.counts_children:
                frame.acc = {}
                self.covering.add(name)
            else:
                frame.acc.pop(name, None)  # its own functional work is in its cost
            own.macs = int(cost.macs)
            own.effective_macs = int(
                cost.effective_macs if cost.effective_macs is not None else cost.macs
            )
            own.flops = int(cost.flops if cost.flops is not None else 2 * cost.macs)
            if cost.note:
                own.notes.append(cost.note)
            self.overrides.setdefault(name, cost)
        _merge(frame.acc, {name: own})
        _merge(self._parent_acc(), frame.acc)

    def density(self, t: Any) -> float:
        """The fraction of non-zeros of a model parameter or buffer (1.0 for anything else)."""
        if not isinstance(t, torch.Tensor) or id(t) not in self._model_tensors:
            return 1.0
        d = self._density.get(id(t))
        if d is None:
            n = t.numel()
            d = float(torch.count_nonzero(t.detach())) / n if n else 1.0
            self._density[id(t)] = d
        return d

    def on_op(self, event: OpEvent) -> None:
        func = event.func
        try:
            formula = _OPS.get(func)
        except TypeError:  # unhashable callable
            formula = None
        if formula is None:
            return
        try:
            cost = formula(event.args, event.kwargs, event.output, self.density)
        except Exception as e:  # a shape the formula does not know: say so, do not crash
            log.debug("could not count %s: %s", getattr(func, "__name__", func), e)
            cost = OpCost(0, 0, f"could not count {getattr(func, '__name__', func)}")
        name = self.stack[-1].name if self.stack else ""
        macs = int(cost.macs)
        eff = int(cost.effective_macs if cost.effective_macs is not None else macs)
        acc = _Acc(macs=macs, effective_macs=eff, flops=2 * macs)
        if cost.note:
            acc.notes.append(cost.note)
        _merge(self._parent_acc(), {name: acc})


def _tensor_bytes(t: torch.Tensor) -> int:
    try:
        return int(t.numel()) * int(t.element_size())
    except (RuntimeError, NotImplementedError):  # sparse or exotic layouts
        return int(t.untyped_storage().nbytes())


def _storage_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    if t.numel() == 0 or t.is_sparse:
        return None
    try:
        return (
            t.untyped_storage().data_ptr(),
            t.device,
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )
    except (RuntimeError, NotImplementedError):
        return None


def _owner(key: str) -> str:
    return key.rpartition(".")[0]


def _covering_ancestor(name: str, covering: set[str]) -> str:
    """The outermost ancestor of ``name`` (itself included) whose cost covers its children."""
    if not covering:
        return name
    parts = name.split(".") if name else []
    if "" in covering:
        return ""
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in covering:
            return prefix
    return name


def _has_weight_matrix(module: nn.Module) -> bool:
    return any(p.dim() >= 2 and p.is_floating_point() for p in module.parameters(recurse=False))


def profile(
    model: nn.Module,
    example_inputs: Any,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    depth: int | None = None,
) -> Profile:
    """Count params, MACs, FLOPs and stored bytes of ``model``, per layer and in total.

    The model runs once on ``example_inputs`` in eval mode under ``torch.no_grad()`` (so MACs are
    those of inference on that batch); afterwards nothing of the profiler is left in it (hooks
    removed, every module's train/eval mode restored, no buffer or attribute added). See the module
    documentation for exactly what is counted.

    Args:
        model: any ``nn.Module`` (CNNs, Hugging Face transformers, compressed models).
        example_inputs: a tensor (the single positional input), a tuple of positional inputs, a dict
            of keyword inputs (Hugging Face style), a :class:`~torchcompress.batches.Batch`, or a
            DataLoader batch list ``[inputs, targets]``. Tensors are moved to the model's device
            (and floating ones cast to its dtype).
        include: glob patterns on module names: only matching layers (or layers inside matching
            blocks) are listed. Totals stay those of the whole model.
        exclude: glob patterns of layers not to list.
        depth: list blocks at this depth of the module tree instead of single layers (``1``: the
            model's children, ``0``: one row for the whole model); ``None`` lists every layer.

    Returns:
        A :class:`Profile`.

    Raises:
        ShapeError: the forward failed on ``example_inputs``; the message names the module where it
            failed and the shapes that module got.
        SelectionError: an ``include``/``exclude`` pattern matches no module.

    Example:
        >>> import torch, torchcompress as tc
        >>> p = tc.profile(tc.models.create("resnet20"), torch.randn(1, 3, 32, 32))
        >>> round(p.total_macs / 1e6, 2), p.total_params
        (40.55, 269722)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile() needs an nn.Module, got {type(model).__name__}.")
    _check_depth(depth)
    if include is not None or exclude is not None:
        select_modules(model, include, exclude, types=None)  # patterns that match nothing raise
    inc = [include] if isinstance(include, str) else list(include or [])
    exc = [exclude] if isinstance(exclude, str) else list(exclude or [])
    batch = example_batch(model, example_inputs)
    inputs = describe_inputs(batch.args, batch.kwargs)

    counter = _Counter(model)
    recorder = Recorder(model, [counter], sources=False)
    with recorder:
        try:
            batch(model)
        except _CostFunctionError as e:
            raise TorchCompressError(
                f"The cost function registered for {type(e.module).__name__} (module "
                f"{e.name!r}) failed: {e.error}"
            ) from e.error
        except TorchCompressError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
            call = recorder.stack[-1] if recorder.stack else None
            where = (
                "in the model's own forward"
                if call is None or call.name == ""
                else f"in module {call.name!r} ({type(call.module).__name__})"
            )
            got = (
                f", which got inputs {describe_inputs(call.args, call.kwargs)}"
                if call is not None
                else ""
            )
            raise ShapeError(
                f"profile: the forward of {type(model).__name__} failed {where}{got}: {e} "
                f"(the model was called with {inputs}). Pass example_inputs of the shape the "
                "model expects (a tensor, a tuple of positional inputs or a dict of keyword "
                "inputs)."
            ) from e

    return _build_profile(model, counter, inputs, inc, exc, depth)


def _build_profile(
    model: nn.Module,
    session: _Counter,
    inputs: str,
    inc: list[str],
    exc: list[str],
    depth: int | None,
) -> Profile:
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    covering = session.covering
    params: dict[str, int] = {}
    nonzero: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for key, p in model.named_parameters():  # deduplicated: tied parameters once
        row = _covering_ancestor(_owner(key), covering)
        params[row] = params.get(row, 0) + p.numel()
        nonzero[row] = nonzero.get(row, 0) + int(torch.count_nonzero(_effective(model, key, p)))
    seen: set[tuple[Any, ...]] = set()
    for key, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor):
            continue
        sk = _storage_key(t)
        if sk is not None:
            if sk in seen:
                continue
            seen.add(sk)
        row = _covering_ancestor(_owner(key), covering)
        nbytes[row] = nbytes.get(row, 0) + _tensor_bytes(t)

    names = set(session.final) | set(params) | set(nbytes)
    rows: list[LayerProfile] = []
    for name in sorted(names, key=lambda n: order.get(n, len(order))):
        module = modules.get(name)
        if module is None:
            continue
        acc = session.final.get(name, _Acc())
        cost = session.overrides.get(name)
        n_params = params.get(name, 0)
        n_nonzero = nonzero.get(name, 0)
        n_bytes = nbytes.get(name, 0)
        if cost is not None:
            n_params = n_params if cost.params is None else int(cost.params)
            n_nonzero = n_nonzero if cost.nonzero_params is None else int(cost.nonzero_params)
            n_bytes = n_bytes if cost.bytes is None else int(cost.bytes)
        if not (acc.macs or n_params or n_bytes or cost is not None):
            continue
        notes = list(acc.notes)
        if acc.calls == 0:
            notes.append("not called")
        elif acc.macs == 0 and cost is None and _has_weight_matrix(module) and name not in covering:
            notes.append(f"MACs not counted: no cost formula for {type(module).__name__}")
        if acc.macs and acc.effective_macs < acc.macs and n_nonzero < n_params and not acc.notes:
            zeros = 100.0 * (n_params - n_nonzero) / max(n_params, 1)
            notes.append(f"{zeros:.0f}% zeros: dense kernels still run all MACs")
        rows.append(
            LayerProfile(
                name=name,
                type=type(module).__name__,
                params=n_params,
                nonzero_params=n_nonzero,
                macs=acc.macs,
                effective_macs=acc.effective_macs,
                flops=acc.flops,
                bytes=n_bytes,
                calls=acc.calls,
                note="; ".join(notes),
            )
        )
    totals = {f: sum(getattr(r, f) for r in rows) for f in _FIELDS}
    leaf = [r for r in rows if _selected(r.name, inc, exc)]
    types = {name: type(m).__name__ for name, m in modules.items()}
    result = Profile(
        leaf, totals, model=type(model).__name__, inputs=inputs, leaf_rows=leaf, module_types=types
    )
    return result if depth is None else result.at_depth(depth)


def _effective(model: nn.Module, key: str, p: torch.Tensor) -> torch.Tensor:
    """The tensor a parameter stands for in the forward: for the ``original`` of a parametrized
    tensor (``<layer>.parametrizations.weight.original``), the parametrized value (a pruning
    mask applied), whatever module holds it; otherwise the parameter itself."""
    owner, sep, rest = key.rpartition(".parametrizations.")
    tensor, _, leaf = rest.partition(".")
    if not sep or leaf != "original":
        return p.detach()
    try:
        value = getattr(model.get_submodule(owner) if owner else model, tensor)
    except AttributeError:
        return p.detach()
    return (
        value.detach() if isinstance(value, torch.Tensor) and value.shape == p.shape else p.detach()
    )


def _selected(name: str, inc: list[str], exc: list[str]) -> bool:
    if inc and not (name and matches(name, inc)):
        return False
    return not (exc and name and matches(name, exc))
