"""Building the channel dependency graph from one recorded forward: :func:`analyse`.

The model runs once on the example inputs under the shared
:class:`~torchcompress.tracing.Recorder` (eval mode, no gradients, torch's fused attention fast
path off so that every module call is seen). A listener feeds the
:class:`~torchcompress.sparsity.structured.context.Context`:

- a module with a *leaf* handler (layers, norms, attention) is one node: its ops are skipped and
  the handler labels its outputs when it returns; a protected module (``ignore=``) keeps its outputs
  and the units it creates;
- a protected module without a handler (a block, a layer torchcompress does not know) is kept whole:
  the channels entering it and everything inside stay;
- every other op goes to its rule (:data:`~torchcompress.sparsity.structured.rules.OP_RULES`); an op
  without one keeps the channels it touches, and one that computes with a module's own parameters
  marks that module as unknown (an error unless protected);
- the model's outputs keep their channels.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.batches import example_batch
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> a = analyse(model, example_batch(model, torch.randn(3, 4)))
    >>> [(len(g.units), [str(m) for m in g.members]) for g in a.groups]
    [(8, ['0.weight[0]', '2.weight[1]', '0.bias[0]'])]
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ...batches import Batch, describe_inputs
from ...errors import CompressionStateError, ShapeError, TorchCompressError, UnsupportedModuleError
from ...select import matches
from ...tracing import Listener, ModuleCall, OpEvent, Recorder, flat_tensors, is_registered_leaf
from . import layout as _layout  # noqa: F401  (registers the index, reshape and permute rules)
from .context import Context
from .graph import ChannelGraph, Group, Ids, owner_of
from .handlers import ModuleHandler, handler_for
from .rules import apply_rule

__all__ = ["Analysis", "analyse", "check_plain", "output_shapes"]

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """The dependency graph of a model on its example inputs.

    Attributes:
        graph: the channel graph.
        groups: the prunable groups.
        fixed: class representative -> why its channels stay.
        costs: ``(MACs, factors)`` of the counted ops: each scales with its factors' kept fraction.
        outputs: shapes of the model's output tensors.
        unknown: modules that compute with their own parameters in ops no rule covers -> the op.
    """

    graph: ChannelGraph
    groups: list[Group]
    fixed: dict[int, str]
    costs: list[tuple[int, list[Ids]]]
    outputs: list[tuple[int, ...]]
    unknown: dict[str, str] = field(default_factory=dict)


def output_shapes(output: object) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a model output (nested tuples, lists, dicts, ModelOutputs)."""
    return [tuple(t.shape) for t in flat_tensors(output)]


def check_plain(model: nn.Module) -> None:
    """Raise when the model holds modules of other compression steps (prune channels first).

    Raises:
        CompressionStateError: a masked (parametrized) or compressed module.
        UnsupportedModuleError: a TorchScript model.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModuleError(
            "prune_channels cannot record a TorchScript model's forward; prune the Python model "
            "and script it afterwards."
        )
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m) or is_registered_leaf(m):
            raise CompressionStateError(
                f"Module {name or '(model)'!r} ({type(m).__name__}) is already compressed (masked, "
                "quantized or factorized). tc.prune_channels works on plain layers: prune channels "
                "first, then apply tc.prune / tc.quantize / tc.factorize (or tc.finalize masks "
                "before pruning channels)."
            )


class _Builder(Listener):
    def __init__(self, ctx: Context, ignore: Sequence[str]) -> None:
        self.ctx = ctx
        self.ignore = list(ignore)
        self.current: ModuleCall | None = None
        self.handler: ModuleHandler | None = None
        self.unknown: dict[str, str] = {}
        self.outputs: list[tuple[int, ...]] = []

    def _ignored(self, name: str) -> bool:
        return bool(name) and matches(name, self.ignore)

    def on_module_enter(self, call: ModuleCall) -> None:
        if self.current is not None:
            return
        h = handler_for(call.module)
        if h is not None and h.leaf:
            self.current, self.handler = call, h
            self.ctx.start_call()
        elif h is None and self._ignored(call.name):
            self.current, self.handler = call, None

    def on_module_exit(self, call: ModuleCall) -> None:
        ctx = self.ctx
        if self.current is call:
            self.current = None
            ctx.where = call.name
            outputs = flat_tensors(call.output)
            if call.failed:
                pass
            elif self.handler is not None:
                self.handler.propagate(ctx, call.name, call.module, call)
                if self._ignored(call.name):
                    why = f"{call.name} is protected (ignore=)"
                    ctx.graph.fix(ctx.produced(), why)
                    for ids in ctx.labeled(outputs):
                        ctx.graph.fix(ids, why)
            else:  # a protected module without a handler: kept whole
                why = f"{call.name} ({type(call.module).__name__}) is protected (ignore=)"
                for ids in ctx.labeled(flat_tensors((call.args, call.kwargs))):
                    ctx.graph.fix(ids, why)
                for t in outputs:
                    ctx.set_labels(t, {})
        if call.parent is None and not call.failed:
            outputs = flat_tensors(call.output)
            self.outputs = [tuple(t.shape) for t in outputs]
            for ids in ctx.labeled(outputs):
                ctx.graph.fix(ids, "the model's outputs keep their shape")

    def on_op(self, event: OpEvent) -> None:
        if self.current is not None:
            return
        ctx = self.ctx
        ctx.where = event.name
        if apply_rule(ctx, event):
            return
        tensors = [u.tensor for u in event.inputs]
        labeled = ctx.labeled(tensors)
        for ids in labeled:
            ctx.graph.fix(ids, ctx.reason(f"op `{event.func_name}` is not understood"))
        own = [
            ctx.param_name(t)
            for t in tensors
            if isinstance(t, nn.Parameter) and t.is_floating_point() and ctx.param_name(t)
        ]
        if own:
            owner = owner_of(own[0])  # type: ignore[arg-type]
            self.unknown.setdefault(owner, f"`{event.func_name}` on {own[0]!r}")


@contextlib.contextmanager
def _no_fastpath() -> Iterator[None]:
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def analyse(model: nn.Module, batch: Batch, *, ignore: Sequence[str] = ()) -> Analysis:
    """Record ``model`` on ``batch`` and build its channel dependency graph.

    Args:
        model: the model (not changed).
        batch: the example inputs, normalised (:func:`torchcompress.batches.example_batch`).
        ignore: glob patterns of protected modules.

    Raises:
        ShapeError: the forward failed on the example inputs (the module where it failed is named).
    """
    ctx = Context(model)
    builder = _Builder(ctx, ignore)
    recorder = Recorder(model, [builder], sources=False)
    with _no_fastpath(), recorder:
        try:
            batch(model)
        except TorchCompressError:
            raise
        except Exception as e:
            call = recorder.stack[-1] if recorder.stack else None
            where = (
                "in the model's own forward"
                if call is None or call.name == ""
                else f"in module {call.name!r} ({type(call.module).__name__})"
            )
            raise ShapeError(
                f"prune_channels: the forward of {type(model).__name__} on the example inputs "
                f"({describe_inputs(batch.args, batch.kwargs)}) failed {where}: {e}. Pass "
                "example_inputs the model accepts."
            ) from e
    groups = ctx.graph.groups()
    fixed = ctx.graph.reasons()
    log.debug("channel graph: %d ids, %d groups", len(ctx.graph), len(groups))
    return Analysis(ctx.graph, groups, fixed, ctx.costs, builder.outputs, builder.unknown)


def check_handlers(model: nn.Module, analysis: Analysis, ignore: Sequence[str]) -> None:
    """Raise for modules pruning would change that no handler covers (see :data:`HANDLERS`).

    Raises:
        UnsupportedModuleError: naming every such module, with how to register a handler or
            protect it.
    """
    bad: dict[str, str] = {}
    for name, what in analysis.unknown.items():
        if not matches(name, list(ignore)):
            bad[name] = f"computes {what}, an op the dependency graph does not know"
    for g in analysis.groups:
        for m in g.members:
            if m.binder is not None:
                continue
            owner = owner_of(m.key)
            module = model.get_submodule(owner)
            if handler_for(module) is None:
                bad.setdefault(owner, f"owns {m.key!r}, which pruning would resize")
    if not bad:
        return
    lines = [
        f"  {n or '(model)'!r} ({type(model.get_submodule(n)).__name__}): {why}"
        for n, why in sorted(bad.items())
    ]
    raise UnsupportedModuleError(
        "prune_channels does not know how to handle these modules:\n"
        + "\n".join(lines)
        + "\nRegister a handler for their class (torchcompress.sparsity.structured.HANDLERS.add("
        "'name', MyHandler()), a ModuleHandler subclass; ParameterHandler(MyClass) when only its "
        "parameters need slicing), or keep them unchanged with ignore=['<module name>']."
    )


def shapes_of(tensors: Sequence[Tensor]) -> list[tuple[int, ...]]:
    """Shapes of ``tensors``."""
    return [tuple(t.shape) for t in tensors]
