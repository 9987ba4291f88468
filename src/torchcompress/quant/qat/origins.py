"""Which quantized activations are ReLU outputs (what PACT's learned clipping applies to).

- Graph mode (:func:`point_origins`): each quantizer of the traced graph is followed back through
  ops that keep a ReLU's output a clipped non-negative activation (pooling, reshapes, dropout, ...).
- Layer mode (:func:`layer_origins`): one calibration batch runs under the
  :class:`~torchcompress.quant.tracer.ReluTracker`, and each quantized layer's input is looked up.

An origin is ``"relu"``, ``"input"`` (the model's own data), ``"residual"`` (an operand of a
residual add) or ``"other"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from ...batches import Batch
from ..calib import input_hooks, run_batches
from ..graph import GraphPlan, find_groups, plan_points
from ..tracer import ReluTracker, is_relu_output, keeps_relu

__all__ = ["layer_origins", "point_origins", "value_origin"]


def value_origin(node: Any, modules: dict[str, nn.Module]) -> str:
    """``"relu"``, ``"input"`` (the model's data) or ``"other"`` for the value of ``node``."""
    seen = 0
    while isinstance(node, fx.Node) and seen < 64:
        seen += 1
        if node.op == "placeholder":
            return "input"
        if is_relu_output(node, modules):
            return "relu"
        if keeps_relu(node, modules) and node.args:
            node = node.args[0]
            continue
        return "other"
    return "other"


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


def layer_origins(model: nn.Module, names: list[str], calib_data: Any) -> dict[str, str]:
    """Layer mode: which named layers read a ReLU's output (or the model's input), from one batch."""
    tracker = ReluTracker()
    model_inputs: set[int] = set()
    seen: dict[str, str] = {}

    def record(name: str, x: Any) -> None:
        kind = "input" if id(x) in model_inputs else "other"
        seen.setdefault(name, "relu" if id(x) in tracker.relu else kind)

    @contextlib.contextmanager
    def tracked(batch: Batch) -> Iterator[None]:
        inputs = [*batch.args, *batch.kwargs.values()]
        model_inputs.update(id(t) for t in inputs if isinstance(t, Tensor))
        with tracker:
            yield

    with input_hooks(model, names, record):
        run_batches(model, calib_data, max_batches=1, progress=False, around=tracked)
    return seen
