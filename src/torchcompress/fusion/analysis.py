"""What the model does with its layers: facts for BatchNorm folding, from fx or a recorded forward.

Where the model traces (:func:`torchcompress.tracing.trace`, sub-modules that do not trace being
analysed on their own), the graphs say which module feeds each BatchNorm, how often each layer is
called, how often its output is used and whether a layer's tensors are read elsewhere. Otherwise one
real forward under the shared :class:`~torchcompress.tracing.Recorder` says the same from the
tensors themselves. :func:`_verdict` then decides, pair by pair, whether folding is exact.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    >>> facts, _ = _analyse(model, None)
    >>> facts.method, facts.bn_input
    ('fx', {'1': '0'})
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..batches import describe_inputs, example_batch
from ..errors import ShapeError, TorchCompressError
from ..select import get_module
from ..tracing import Listener, ModuleCall, OpEvent, Recorder, Source, Traced, flat_tensors, trace
from .surgery import (
    _BN_TYPES,
    _FUSABLE,
    _PAIR_TYPES,
    _check_pair_types,
    _is_compressed,
    _plain_type,
)

log = logging.getLogger(__name__)


@dataclass
class _Facts:
    """How the layers are called and used, as far as an analysis could see."""

    method: str
    calls: dict[str, int] = field(default_factory=dict)
    bn_input: dict[str, str | None] = field(
        default_factory=dict
    )  # BN -> module producing its input
    uses: dict[str, int] = field(default_factory=dict)  # layer -> uses of its output
    users: dict[str, list[str]] = field(default_factory=dict)  # layer -> what used its output
    attr_refs: set[str] = field(default_factory=set)  # modules whose tensors are read elsewhere
    out_ndim: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # modules whose calls the analysis saw completely
    unseen: dict[str, str] = field(default_factory=dict)  # BN -> why it could not be analysed

    def covers(self, name: str) -> bool:
        return name in self.seen


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


# --------------------------------------------------------------------------------------------
# Facts from torch.fx
# --------------------------------------------------------------------------------------------


def _mark_scope_seen(model: nn.Module, root: str, facts: _Facts, traced: Traced) -> None:
    """Every module whose parent's forward was traced (so all its calls are visible)."""
    stack = [(root, get_module(model, root))]
    while stack:
        name, mod = stack.pop()
        for child_name, child in mod.named_children():
            full = _join(name, child_name)
            facts.seen.add(full)
            if full in traced.opaque or traced.is_leaf(full):
                continue
            stack.append((full, child))


def _fx_facts(model: nn.Module) -> _Facts:
    """Facts from torch.fx graphs of the model (or of its traceable parts)."""
    facts = _Facts(method="fx")
    # Linear/Conv/BN subclasses are leaves too: they are judged (and refused) as modules
    traced = trace(model, leaves=_PAIR_TYPES)
    for root_name, graph in traced.graphs.items():
        _record_graph(graph, root_name, get_module(model, root_name), facts)
        _mark_scope_seen(model, root_name, facts, traced)
    for root_name, error in traced.failed.items():
        # the module's own forward does not trace: its direct BatchNorm children are invisible
        reason = f"torch.fx cannot trace {root_name or type(model).__name__!r}: {error}"
        for child_name, child in get_module(model, root_name).named_children():
            if isinstance(child, _BN_TYPES):
                facts.unseen[_join(root_name, child_name)] = reason
    return facts


def _record_graph(graph: torch.fx.Graph, prefix: str, root: nn.Module, facts: _Facts) -> None:
    for node in graph.nodes:
        if node.op == "get_attr":
            facts.attr_refs.add(_join(prefix, node.target.rpartition(".")[0]))
        if node.op != "call_module":
            continue
        name = _join(prefix, node.target)
        facts.calls[name] = facts.calls.get(name, 0) + 1
        users = list(node.users)
        facts.uses[name] = facts.uses.get(name, 0) + sum(_count_refs(u, node) for u in users)
        facts.users.setdefault(name, []).extend(_node_label(u, prefix) for u in users)
        if not isinstance(root.get_submodule(node.target), _BN_TYPES):
            continue
        producer = None
        if len(node.args) + len(node.kwargs) == 1:
            first = node.args[0] if node.args else next(iter(node.kwargs.values()))
            if isinstance(first, torch.fx.Node) and first.op == "call_module":
                producer = _join(prefix, first.target)
        facts.bn_input.setdefault(name, producer)


def _count_refs(user: torch.fx.Node, node: torch.fx.Node) -> int:
    count = 0

    def visit(a: Any) -> Any:
        nonlocal count
        if a is node:
            count += 1
        return a

    torch.fx.node.map_arg(user.args, visit)
    torch.fx.node.map_arg(user.kwargs, visit)
    return count


def _node_label(node: torch.fx.Node, prefix: str) -> str:
    if node.op == "call_module":
        return repr(_join(prefix, node.target))
    if node.op == "output":
        return "the forward's output"
    return f"{getattr(node.target, '__name__', node.target)}"


# --------------------------------------------------------------------------------------------
# Facts from one recorded forward
# --------------------------------------------------------------------------------------------


class _FactsListener(Listener):
    """Which layer feeds each BatchNorm, how often layers are called and their outputs used."""

    def __init__(self, recorder: Recorder, facts: _Facts) -> None:
        self.recorder = recorder
        self.facts = facts

    @staticmethod
    def _inside_compressed(call: ModuleCall) -> bool:
        return any(_is_compressed(c.module) for c in call.ancestors())

    def producer(self, source: Source | None) -> str | None:
        """The plain Linear/Conv (outside compressed layers) that returned a tensor, if any."""
        if source is None:
            return None
        for call in source.calls:
            if _plain_type(call.module) in _FUSABLE and not self._inside_compressed(call):
                return call.name
        return None

    def on_module_enter(self, call: ModuleCall) -> None:
        if self._inside_compressed(call):
            return
        f, name = self.facts, call.name
        f.calls[name] = f.calls.get(name, 0) + 1
        f.seen.add(name)
        if isinstance(call.module, _BN_TYPES):
            args, kwargs = call.args, call.kwargs
            x = args[0] if args else next(iter(kwargs.values()), None)
            single = isinstance(x, torch.Tensor) and len(args) + len(kwargs) == 1
            f.bn_input.setdefault(name, self.producer(self.recorder.source(x)) if single else None)

    def on_module_exit(self, call: ModuleCall) -> None:
        out = call.output
        if (
            call.failed
            or _plain_type(call.module) not in _FUSABLE
            or not isinstance(out, torch.Tensor)
        ):
            return
        if not self._inside_compressed(call):
            self.facts.uses.setdefault(call.name, 0)
            self.facts.out_ndim[call.name] = out.dim()

    def on_op(self, event: OpEvent) -> None:
        f = self.facts
        for use in event.inputs:
            producer = self.producer(use.source)
            if producer is not None and event.outputs:
                f.uses[producer] = f.uses.get(producer, 0) + 1
                label = event.func_name
                f.users.setdefault(producer, []).append(
                    f"{label} in {event.name!r}" if event.name else label
                )
        for _, owner in event.param_reads:
            f.attr_refs.add(owner)

    def count_output(self, out: Any) -> None:
        """The model's output uses the tensors it returns."""
        for t in flat_tensors(out):
            producer = self.producer(self.recorder.source(t))
            if producer is not None:
                self.facts.uses[producer] = self.facts.uses.get(producer, 0) + 1
                self.facts.users.setdefault(producer, []).append("the model's output")


def _traced_facts(model: nn.Module, example_inputs: Any) -> _Facts:
    """Facts from one recorded eval-mode forward on ``example_inputs``."""
    facts = _Facts(method="example_inputs")
    batch = example_batch(model, example_inputs)
    recorder = Recorder(model)
    listener = _FactsListener(recorder, facts)
    recorder.listeners.append(listener)
    with recorder:
        try:
            out = batch(model)
        except TorchCompressError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
            where = recorder.where
            raise ShapeError(
                f"fuse: the forward of {type(model).__name__} on example_inputs "
                f"({describe_inputs(batch.args, batch.kwargs)}) failed"
                f"{f' in module {where!r}' if where else ''}: {e}"
            ) from e
    listener.count_output(out)
    return facts


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


def _shared(model: nn.Module) -> tuple[set[str], set[str]]:
    """Names of modules registered under two names, and of modules whose tensors are tied."""
    names_by_id: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names_by_id.setdefault(id(m), []).append(name)
    shared_modules = {n for names in names_by_id.values() if len(names) > 1 for n in names}
    owners: dict[int, set[str]] = {}
    for name, m in model.named_modules():
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            owners.setdefault(id(t), set()).add(name)
    tied = {n for names in owners.values() if len(names) > 1 for n in names}
    return shared_modules, tied


def _verdict(
    model: nn.Module,
    facts: _Facts | None,
    layer_name: str,
    bn_name: str,
    shared: tuple[set[str], set[str]],
) -> str | None:
    """Why the pair cannot be folded (``None``: it can)."""
    layer, bn = get_module(model, layer_name), get_module(model, bn_name)
    reason = _check_pair_types(layer, bn, layer_name, bn_name)
    if reason is not None:
        return reason
    shared_modules, tied = shared
    for n in (layer_name, bn_name):
        if n in shared_modules:
            return f"{n!r} is registered under more than one name (a shared module)"
        if n in tied:
            return f"{n!r} shares a parameter or buffer with another module"
    if facts is None or not (facts.covers(layer_name) and facts.covers(bn_name)):
        return None  # explicit pair the analysis could not see: trusted
    for n in (layer_name, bn_name):
        calls = facts.calls.get(n, 0)
        if calls > 1:
            return f"{n!r} is called {calls} times in one forward"
    if facts.calls.get(bn_name, 0) == 0:
        return f"{bn_name!r} is not called"
    if facts.bn_input.get(bn_name) != layer_name:
        producer = facts.bn_input.get(bn_name)
        what = f"the output of {producer!r}" if producer else "not a module's output"
        return f"the input of {bn_name!r} is {what}, not the output of {layer_name!r} alone"
    uses = facts.uses.get(layer_name, 0)
    if uses != 1:
        others = [u for u in facts.users.get(layer_name, []) if u != repr(bn_name)]
        used_by = f" (also by {', '.join(sorted(set(others)))})" if others else ""
        return (
            f"the output of {layer_name!r} is used {uses} times{used_by}, not only by "
            f"{bn_name!r}; folding would change the other uses"
        )
    for n in (layer_name, bn_name):
        if n in facts.attr_refs:
            return f"the parameters or statistics of {n!r} are read outside its own forward"
    if isinstance(layer, nn.Linear) and facts.out_ndim.get(layer_name, 2) != 2:
        return (
            f"{layer_name!r} produces a {facts.out_ndim[layer_name]}-D output, so {bn_name!r} "
            "normalises another dimension than its features"
        )
    return None


def _auto_pairs(facts: _Facts) -> list[tuple[str, str]]:
    pairs = []
    for bn_name, producer in facts.bn_input.items():
        if producer is not None and facts.calls.get(bn_name, 0) >= 1:
            pairs.append((producer, bn_name))
    return pairs


def _analyse(model: nn.Module, example_inputs: Any) -> tuple[_Facts | None, list[str]]:
    """Facts by fx, or by a recorded forward where fx cannot see every BatchNorm."""
    errors: list[str] = []
    try:
        facts: _Facts | None = _fx_facts(model)
    except Exception as e:  # fx itself broke on this model
        log.debug("torch.fx analysis failed: %s", e)
        errors.append(f"torch.fx failed: {e}")
        facts = None
    if facts is not None and not facts.unseen:
        return facts, errors
    if facts is not None:
        for why in facts.unseen.values():
            if why not in errors:
                errors.append(why)
    if example_inputs is not None:
        return _traced_facts(model, example_inputs), errors
    return facts, errors
