"""Which weight layers of a block read the same tensor, in which order, and who else reads it.

Post-training methods working block by block need the block's dataflow, not just its modules:
GPTQ and SparseGPT fix the layers in the order the forward calls them, layers sharing one input
(attention's query, key and value) together; AWQ and SmoothQuant scale the channels of a tensor
that several layers read, and may fold the scale into the op that produced the tensor only when
nothing else reads it. :func:`analyze` records one forward of the block on one batch with the
:class:`~torchcompress.tracing.Recorder` (no hooks of its own) and returns a :class:`Dataflow`:

- :attr:`Dataflow.order`: the weight layers in the order of their first call;
- :attr:`Dataflow.groups`: one :class:`InputGroup` per tensor that weight layers read, with the
  layers reading it, where it came from (:class:`~torchcompress.tracing.Source`: the op and the
  modules that returned it) and whether the layers are its only readers (:attr:`InputGroup.exclusive`);
- :meth:`Dataflow.consumers` / :meth:`Dataflow.source` / :meth:`Dataflow.is_output` for any tensor
  of that forward (to follow a tensor back through a ReLU or an element-wise product).

Ops that only look at a tensor (its ``shape``, ``size()``, ``dim()``) or return it unchanged
(dropout in eval mode, ``contiguous``) are not readers.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.batches import Batch
    >>> from torchcompress.calibration.dataflow import analyze
    >>> class Attn(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.norm = nn.LayerNorm(4)
    ...         self.q, self.k, self.v, self.o = (nn.Linear(4, 4) for _ in range(4))
    ...     def forward(self, x):
    ...         h = self.norm(x)
    ...         a = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2), -1) @ self.v(h)
    ...         return x + self.o(a)
    >>> flow = analyze(Attn(), Batch(args=(torch.randn(2, 3, 4),)))
    >>> [(g.layers, g.exclusive, g.source.module) for g in flow.groups]
    [(['q', 'k', 'v'], True, 'norm'), (['o'], True, None)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..batches import Batch, run_model
from ..layers import layer_kind
from ..tracing import ModuleCall, OpEvent, Recorder, Source, flat_tensors

__all__ = ["Dataflow", "InputGroup", "analyze"]


@dataclass(eq=False)
class InputGroup:
    """A tensor that weight layers read, and those layers.

    Attributes:
        layers: the weight layers reading it (names relative to the analysed module), in call order.
        tensor: the tensor (from the analysed batch).
        source: where it came from (``None``: not seen by the recorder).
        exclusive: the layers are its only readers: every op reading it runs inside one of them,
            and it is not an output of the analysed module.
    """

    layers: list[str]
    tensor: Tensor
    source: Source | None
    exclusive: bool


@dataclass(eq=False)
class Dataflow:
    """The dataflow of one recorded forward (see :func:`analyze`).

    Attributes:
        order: weight layers (relative names) in the order of their first call.
        groups: one :class:`InputGroup` per tensor read by weight layers, in call order.
        repeated: weight layers called more than once (each call is then a group of its own,
            never exclusive).
    """

    order: list[str] = field(default_factory=list)
    groups: list[InputGroup] = field(default_factory=list)
    repeated: set[str] = field(default_factory=set)
    _consumers: dict[int, tuple[Tensor, list[OpEvent]]] = field(default_factory=dict, repr=False)
    _outputs: dict[int, Tensor] = field(default_factory=dict, repr=False)
    _recorder: Recorder | None = field(default=None, repr=False)

    def consumers(self, tensor: Tensor) -> list[OpEvent]:
        """The ops that read ``tensor`` (see the module docstring for what does not count)."""
        entry = self._consumers.get(id(tensor))
        return list(entry[1]) if entry is not None and entry[0] is tensor else []

    def source(self, tensor: Tensor) -> Source | None:
        """Where ``tensor`` came from in the recorded forward."""
        return None if self._recorder is None else self._recorder.source(tensor)

    def is_output(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is (part of) what the analysed module returned."""
        return self._outputs.get(id(tensor)) is tensor

    def read_only_by(self, tensor: Tensor, layers: Iterable[str]) -> bool:
        """Whether every reader of ``tensor`` runs inside one of ``layers`` and it is not an output."""
        names = set(layers)
        if self.is_output(tensor):
            return False
        for op in self.consumers(tensor):
            call = op.call
            inside = False
            while call is not None:
                if call.name in names:
                    inside = True
                    break
                call = call.parent
            if not inside:
                return False
        return True

    def group_of(self, layer: str) -> InputGroup | None:
        """The group holding ``layer`` (``None``: it never ran)."""
        return next((g for g in self.groups if layer in g.layers), None)


class _Listener:
    def __init__(self, flow: Dataflow, layers: set[str]) -> None:
        self.flow = flow
        self.layers = layers
        self.calls: list[tuple[str, Tensor]] = []

    def on_module_enter(self, call: ModuleCall) -> None:
        if call.name in self.layers and not any(a.name in self.layers for a in call.ancestors()):
            x = next(iter(flat_tensors((call.args, call.kwargs))), None)
            if x is not None:
                self.calls.append((call.name, x))

    def on_op(self, event: OpEvent) -> None:
        if not event.outputs:
            return  # size(), shape, dim(): looks at the tensor, does not read its values
        outs = {id(t) for t in event.outputs}
        for use in event.inputs:
            t = use.tensor
            if id(t) in outs and any(o is t for o in event.outputs):
                continue  # returned unchanged (dropout in eval, contiguous, a no-op .to())
            entry = self.flow._consumers.setdefault(id(t), (t, []))
            if entry[0] is t and (not entry[1] or entry[1][-1] is not event):
                entry[1].append(event)


def analyze(module: nn.Module, batch: Batch, *, layers: Iterable[str] | None = None) -> Dataflow:
    """Record one forward of ``module`` on ``batch`` and return its :class:`Dataflow`.

    Args:
        module: the module (a transformer block, or a whole model).
        batch: one batch of its inputs.
        layers: the weight layers to follow (relative names; default: every module a registered
            layer kind handles, outermost ones only).

    Raises:
        DataError: the batch does not fit the module.
    """
    if layers is None:
        found = [n for n, m in module.named_modules() if n and layer_kind(m) is not None]
    else:
        found = list(layers)
    flow = Dataflow()
    listener = _Listener(flow, set(found))
    with Recorder(module, [listener]) as rec:
        out: Any = run_model(module, batch, what="the block's inputs")
    flow._recorder = rec
    flow._outputs = {id(t): t for t in flat_tensors(out)}
    seen: dict[str, int] = {}
    for name, _ in listener.calls:
        seen[name] = seen.get(name, 0) + 1
    flow.repeated = {n for n, c in seen.items() if c > 1}
    by_tensor: dict[int, InputGroup] = {}
    for name, x in listener.calls:
        if name not in flow.order:
            flow.order.append(name)
        group = None if name in flow.repeated else by_tensor.get(id(x))
        if group is not None and group.tensor is x:
            if name not in group.layers:
                group.layers.append(name)
            continue
        group = InputGroup([name], x, rec.source(x), False)
        flow.groups.append(group)
        if name not in flow.repeated:
            by_tensor[id(x)] = group
    for g in flow.groups:
        g.exclusive = not any(n in flow.repeated for n in g.layers) and flow.read_only_by(
            g.tensor, g.layers
        )
    return flow
