"""Which quantized activations are ReLU outputs (what PACT's learned clipping applies to).

- Graph mode (:func:`point_origins`): each quantizer of the traced graph is followed back through
  ops that keep a ReLU's output a clipped non-negative activation (pooling, reshapes, dropout, ...;
  :func:`~torchcompress.quant.ops.value_origin`).
- Layer mode (:func:`layer_origins`): one calibration batch runs under a
  :class:`~torchcompress.tracing.Recorder` with the :class:`ReluOrigins` listener, which follows
  ReLU outputs through the same ops and looks up each quantized layer's input.

An origin is ``"relu"``, ``"input"`` (the model's own data), ``"residual"`` (an operand of a
residual add) or ``"other"``.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from ...batches import Batch, run_model
from ...calibration import run_batches
from ...tracing import RANGE_PRESERVING, RELU_LIKE, Listener, ModuleCall, OpEvent, Recorder, Source
from ..graph import GraphPlan, find_groups, plan_points
from ..ops import value_origin

__all__ = ["ReluOrigins", "layer_origins", "point_origins", "value_origin"]


def point_origins(
    plan: GraphPlan, model: nn.Module, fuse_residual: bool
) -> dict[str, tuple[str, str]]:
    """Graph quantizer name -> (origin of its value, a description for errors)."""
    modules = dict(model.named_modules())
    targets = set(plan.visible)
    points = plan_points(plan.graph, modules, targets, fuse_residual)
    groups = find_groups(plan.graph, modules, targets, fuse_residual)
    by_layer = {g.layer: g for g in groups.values()}
    out: dict[str, tuple[str, str]] = {}
    for p in points:
        if p.where == "output":
            g = by_layer.get(p.node) or next((g for g in groups.values() if g.tail is p.node), None)
            act = getattr(g, "act", None) if g is not None else None
            if act is not None:
                out[p.name] = ("relu", f"the output of {p.layer!r}")
            else:
                out[p.name] = (value_origin(p.node, modules), f"the output of {p.layer!r}")
        elif p.where == "input":
            out[p.name] = (value_origin(p.node.args[0], modules), f"the input of {p.layer!r}")
        elif p.where == "accum":
            add = p.node
            layer_name = p.name[len("accum_") :]
            a = add.args[0]
            other = add.args[1] if (isinstance(a, fx.Node) and a.name == layer_name) else a
            o = value_origin(other, modules)
            out[p.name] = ("residual" if o == "other" else o, f"the residual added to {p.layer!r}")
        else:  # addin
            i = int(p.name[len("input") : p.name.index("_")])
            o = value_origin(p.node.args[i], modules)
            out[p.name] = (
                "residual" if o == "other" else o,
                f"an operand of the add after {p.layer!r}",
            )
    return out


class ReluOrigins(Listener):
    """A :class:`~torchcompress.tracing.Recorder` listener: which named layers read a ReLU's output.

    A tensor is a ReLU output when a ReLU-like op (ReLU, ReLU6, ``Hardtanh`` clipping at zero)
    computed it, or an op keeping values within its input's range (pooling, reshapes, dropout,
    ...) computed it from one. Each named layer's first call records the origin of its input:
    ``"relu"``, ``"input"`` (a model input) or ``"other"``.

    Args:
        recorder: the recorder it listens to (tensor sources are looked up there).
        names: qualified names of the layers to look up.

    Attributes:
        origins: layer name -> origin, for the layers that ran.
    """

    def __init__(self, recorder: Recorder, names: list[str]) -> None:
        self.recorder = recorder
        self.names = set(names)
        self.relu_ops: set[int] = set()
        self.origins: dict[str, str] = {}

    def _from_relu(self, src: Source | None) -> bool:
        return src is not None and src.op is not None and src.op.index in self.relu_ops

    def on_op(self, event: OpEvent) -> None:
        if not isinstance(event.output, Tensor):
            return
        cats = event.categories
        first = event.inputs[0] if event.inputs and event.inputs[0].where == (0,) else None
        if RELU_LIKE in cats or (
            RANGE_PRESERVING in cats and first is not None and self._from_relu(first.source)
        ):
            self.relu_ops.add(event.index)

    def on_module_enter(self, call: ModuleCall) -> None:
        if call.name in self.names:
            x = call.args[0] if call.args else None
            src = self.recorder.source(x)
            kind = "input" if src is not None and src.input else "other"
            self.origins.setdefault(call.name, "relu" if self._from_relu(src) else kind)


def layer_origins(model: nn.Module, names: list[str], calib_data: Any) -> dict[str, str]:
    """Layer mode: which named layers read a ReLU's output (or the model's input), from one batch."""
    recorder = Recorder(model)
    listener = ReluOrigins(recorder, names)
    recorder.listeners.append(listener)

    def step(batch: Batch, index: int) -> None:
        with recorder:
            run_model(model, batch, index=index, what="calib_data")

    run_batches(model, calib_data, step=step, max_batches=1, progress=False)
    return listener.origins
