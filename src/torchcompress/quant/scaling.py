"""Per-input-channel scales for AWQ and SmoothQuant: fold them where an op can absorb them, or keep
an explicit scale module where none can.

Both methods rewrite a group of layers reading one tensor ``x`` (attention's query/key/value, an
MLP's first layer) as ``(x / s) (W s)^T``: the float outputs do not change, while the quantizer sees
``W s`` (AWQ, Lin et al. 2024: salient input channels scaled up lose less to rounding) or ``x / s``
(SmoothQuant, Xiao et al. 2023: activation outliers migrated into the weights). ``x / s`` costs
nothing when the op that produced ``x`` can absorb ``1 / s`` and nothing else reads ``x``:

- ``"norm"``: a LayerNorm / RMSNorm with a per-channel weight (and bias);
- ``"linear"``: a Linear (or Hugging Face ``Conv1D``) returning ``x``: its output rows (OPT's
  ``fc1`` through a ReLU, which commutes with positive scales);
- ``"product"``: an element-wise product one of whose factors a Linear returns (LLaMA's
  ``act(gate(x)) * up(x)``: ``up``'s rows);
- ``"value"``: attention's output (``softmax(Q K^T) V``, heads merged back), where a Linear returns
  ``V`` (or a slice of it, GPT-2's packed ``c_attn``): the value projection's rows absorb the scale
  of the output projection.

These absorbers are registered in :data:`ABSORBERS` (add one for another producer). The dataflow
comes from :func:`torchcompress.calibration.dataflow.analyze` (the op recorder), so a fold happens
only where nothing else reads ``x``: in a post-LayerNorm BERT the LayerNorm's output also feeds the
residual, and the input of the second FFN layer comes out of a GELU, so there the scale stays an
explicit :class:`InputScaled` module around each layer (``layer(x * inv_scale)``: one element-wise
multiply). :func:`scale_inputs` checks every change on the block's outputs and falls back from a fold
to the explicit scale (or undoes it) if the outputs moved.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.batches import Batch
    >>> from torchcompress.calibration.dataflow import analyze
    >>> from torchcompress.quant.scaling import scale_inputs
    >>> block = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
    >>> x = torch.randn(2, 4)
    >>> before = block(x)
    >>> flow = analyze(block, Batch(args=(x,)))
    >>> scale_inputs(block, flow, flow.groups[0], torch.rand(4) + 0.5)  # folds into the LayerNorm
    ('norm', '0', {})
    >>> scale_inputs(block, flow, flow.groups[1], torch.rand(8) + 0.5)  # after GELU: explicit
    ('explicit', None, {'3': '3.layer'})
    >>> type(block[3]).__name__, torch.allclose(block(x), before, atol=1e-6)
    ('InputScaled', True)
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import io
from ..calibration.dataflow import Dataflow, InputGroup
from ..errors import ConfigError
from ..layers import layer_kind, stored_weight
from ..registry import Registry
from ..select import set_module
from ..tracing import ATTENTION, IDENTITY, MATMUL, OPS, RELU, RESHAPE, SPLIT

__all__ = [
    "ABSORBERS",
    "PRODUCT",
    "Absorber",
    "Fold",
    "InputScaled",
    "InputScaledCodec",
    "find_fold",
    "linear_like",
    "scale_inputs",
    "swapped",
]

log = logging.getLogger(__name__)

#: Op category of element-wise products of two tensors (registered in :data:`torchcompress.tracing.OPS`).
PRODUCT = "product"
OPS.register(PRODUCT, torch.mul, operator.mul, "mul", "__mul__", "__rmul__")
if hasattr(torch, "multiply"):
    OPS.register(PRODUCT, torch.multiply)


class InputScaled(nn.Module):
    """An explicit per-input-channel scale in front of a layer: ``layer(x * inv_scale)``.

    What AWQ and SmoothQuant leave where no op can absorb their scale. The layer stays a child
    (``.layer``), so :func:`torchcompress.quantize` and :func:`torchcompress.convert` treat it like
    any other; the scale is a buffer (saved, and rebuilt by :func:`torchcompress.load`).

    Args:
        layer: the layer (its input's last dimension has ``inv_scale.numel()`` channels).
        inv_scale: ``1 / s`` per input channel.

    Example:
        >>> import torch
        >>> from torchcompress.quant.scaling import InputScaled
        >>> m = InputScaled(torch.nn.Linear(3, 2), torch.tensor([1.0, 0.5, 2.0]))
        >>> m
        InputScaled(
          features=3
          (layer): Linear(in_features=3, out_features=2, bias=True)
        )
    """

    inv_scale: Tensor

    def __init__(self, layer: nn.Module, inv_scale: Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("inv_scale", inv_scale.detach().clone())

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.layer(x * self.inv_scale.to(x.dtype), *args, **kwargs)

    def extra_repr(self) -> str:
        return f"features={self.inv_scale.numel()}"


class InputScaledCodec(io.ModuleCodec):
    """Save/load of :class:`InputScaled` (the fresh model's layer becomes its child)."""

    name = "torchcompress.quant.input_scaled"

    def matches(self, module: nn.Module) -> bool:
        return type(module) is InputScaled

    def encode(self, module: nn.Module) -> dict[str, Any]:
        return {"features": int(module.inv_scale.numel())}

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        t = stored_weight(current) if layer_kind(current) is not None else None
        ones = torch.ones(int(spec["features"]))
        if t is not None:
            ones = ones.to(device=t.device, dtype=t.dtype)
        return InputScaled(current, ones)


io.register_codec(InputScaledCodec())


def linear_like(module: nn.Module) -> bool:
    """Whether ``module`` is a weight layer mapping the last dimension (Linear, HF ``Conv1D``)."""
    kind = layer_kind(module)
    return kind is not None and kind.geometry(module).kernel_size == ()


def _scale_rows(module: nn.Module, factor: Tensor) -> None:
    """Multiply a Linear-like layer's output channels (weight rows, bias) by ``factor``."""
    kind = layer_kind(module)
    w = kind.to_canonical(module, stored_weight(module))  # type: ignore[union-attr]
    w.mul_(factor.to(w).reshape(-1, 1))
    bias = getattr(module, "bias", None)
    if isinstance(bias, Tensor):
        stored_weight(module, "bias").mul_(factor.to(bias))


def _scale_columns(module: nn.Module, factor: Tensor) -> None:
    """Multiply a Linear-like layer's input columns by ``factor``."""
    kind = layer_kind(module)
    w = kind.to_canonical(module, stored_weight(module))  # type: ignore[union-attr]
    w.mul_(factor.to(w).reshape(1, -1))


@dataclass
class Fold:
    """Where a scale folds: the module that absorbs ``1 / s`` on its output channels.

    Attributes:
        how: the absorber's name.
        name: the module's name (relative to the analysed block).
        module: the module.
        apply: ``apply(inv_scale)`` changes the module's parameters in place.
    """

    how: str
    name: str
    module: nn.Module
    apply: Callable[[Tensor], None]

    def tensors(self) -> list[Tensor]:
        """The tensors :attr:`apply` changes (to undo it)."""
        return [
            stored_weight(self.module, n) for n, _ in self.module.named_parameters(recurse=False)
        ]


class Absorber:
    """Finds, for a tensor nothing but the scaled layers reads, the module that can absorb a scale.

    Subclass it, implement :meth:`find`, and add an instance to :data:`ABSORBERS`.
    """

    def find(self, flow: Dataflow, tensor: Tensor) -> Fold | None:
        """The :class:`Fold` for ``tensor`` (the layers' input), or ``None``."""
        raise NotImplementedError


def _returned_by(flow: Dataflow, tensor: Tensor) -> tuple[str, nn.Module] | None:
    """The innermost module whose whole output is ``tensor``."""
    src = flow.source(tensor)
    if src is None or not src.calls:
        return None
    call = src.calls[0]
    return (call.name, call.module) if call.output is tensor else None


def _norm_like(module: nn.Module, channels: int) -> bool:
    named = type(module).__name__
    if not (
        isinstance(module, nn.LayerNorm | getattr(nn, "RMSNorm", nn.LayerNorm))
        or named.endswith(("LayerNorm", "RMSNorm"))
    ):
        return False
    params = dict(module.named_parameters(recurse=True))
    w = params.get("weight")
    if (
        not isinstance(w, Tensor)
        or tuple(w.shape) != (channels,)
        or set(params) - {"weight", "bias"}
    ):
        return False
    b = params.get("bias")
    return b is None or tuple(b.shape) == (channels,)


class NormAbsorber(Absorber):
    """A LayerNorm / RMSNorm whose per-channel weight (and bias) takes ``1 / s``."""

    def find(self, flow: Dataflow, tensor: Tensor) -> Fold | None:
        found = _returned_by(flow, tensor)
        if found is None or not _norm_like(found[1], tensor.shape[-1]):
            return None
        name, module = found

        def apply(inv: Tensor) -> None:
            for p in module.parameters():
                p.data.mul_(inv.to(p))

        return Fold("norm", name, module, apply)


class LinearAbsorber(Absorber):
    """A Linear-like layer returning the tensor: its output rows take ``1 / s``."""

    def find(self, flow: Dataflow, tensor: Tensor) -> Fold | None:
        found = _returned_by(flow, tensor)
        if found is None or not linear_like(found[1]):
            return None
        name, module = found
        return Fold("linear", name, module, lambda inv: _scale_rows(module, inv))


class ProductAbsorber(Absorber):
    """``a * b`` where a Linear-like layer returns ``b`` (read by nothing else): ``b``'s rows."""

    def find(self, flow: Dataflow, tensor: Tensor) -> Fold | None:
        src = flow.source(tensor)
        op = None if src is None else src.op
        if op is None or PRODUCT not in op.categories or len(op.inputs) != 2:
            return None
        for use in reversed(op.inputs):
            t = use.tensor
            if tuple(t.shape) != tuple(tensor.shape) or flow.is_output(t):
                continue
            if flow.consumers(t) != [op]:
                continue
            found = _returned_by(flow, t)
            if found is not None and linear_like(found[1]):
                name, module = found
                return Fold("product", name, module, lambda inv, m=module: _scale_rows(m, inv))
        return None


def _back_through_views(flow: Dataflow, tensor: Tensor) -> Tensor:
    """Step back through reshapes, transposes and copies that nothing else reads."""
    while True:
        src = flow.source(tensor)
        op = None if src is None else src.op
        if op is None or not (op.categories & {RESHAPE, IDENTITY}) or len(op.inputs) != 1:
            return tensor
        inner = op.inputs[0].tensor
        if flow.is_output(inner) or flow.consumers(inner) != [op]:
            return tensor
        tensor = inner


class ValueAbsorber(Absorber):
    """Attention's merged heads: the value projection's rows take ``1 / s``.

    The tensor comes (through reshapes) from ``P @ V`` or a fused attention over ``V``, and ``V``
    (through reshapes, possibly a slice of a split) from a Linear-like layer read by nothing else.
    That the heads map back to the same channels is checked on the block's outputs.
    """

    def find(self, flow: Dataflow, tensor: Tensor) -> Fold | None:
        channels = int(tensor.shape[-1])
        src = flow.source(_back_through_views(flow, tensor))
        op = None if src is None else src.op
        if op is None:
            return None
        where = (1,) if MATMUL in op.categories else None  # P @ V: V is the second
        if ATTENTION in op.categories:
            where = (2,) if any(u.where == (2,) for u in op.inputs) else ("value",)
        use = next((u for u in op.inputs if u.where == where), None) if where else None
        if use is None or flow.consumers(use.tensor) != [op] or flow.is_output(use.tensor):
            return None
        value = _back_through_views(flow, use.tensor)
        rows = slice(0, channels)
        vsrc = flow.source(value)
        if vsrc is not None and vsrc.op is not None and SPLIT in vsrc.op.categories:
            split = vsrc.op
            pos = next((i for i, t in enumerate(split.outputs) if t is value), None)
            parent = split.inputs[0].tensor if split.inputs else None
            if pos is None or parent is None or flow.consumers(parent) != [split]:
                return None
            if any(t.shape[:-1] != parent.shape[:-1] for t in split.outputs):
                return None  # not a split along the last dimension
            start = sum(int(t.shape[-1]) for t in split.outputs[:pos])
            rows = slice(start, start + int(value.shape[-1]))
            value = parent
        found = _returned_by(flow, value)
        if found is None or not linear_like(found[1]) or rows.stop - rows.start != channels:
            return None
        name, module = found
        if rows.stop > layer_kind(module).geometry(module).out_features:  # type: ignore[union-attr]
            return None

        def apply(inv: Tensor) -> None:
            factor = torch.ones(layer_kind(module).geometry(module).out_features)  # type: ignore[union-attr]
            factor[rows] = inv.detach().float().cpu()
            _scale_rows(module, factor)

        return Fold("value", name, module, apply)


#: name -> :class:`Absorber`; tried in registration order.
ABSORBERS: Registry[Absorber] = Registry("scale absorber")
ABSORBERS.add("norm", NormAbsorber())
ABSORBERS.add("linear", LinearAbsorber())
ABSORBERS.add("product", ProductAbsorber())
ABSORBERS.add("value", ValueAbsorber())


def _through_relu(flow: Dataflow, tensor: Tensor) -> Tensor:
    """Step back through ReLUs (``relu(x / s) = relu(x) / s`` for ``s > 0``) read by nothing else."""
    while True:
        src = flow.source(tensor)
        op = None if src is None else src.op
        if op is None or RELU not in op.categories or not op.inputs:
            return tensor
        inner = op.inputs[0].tensor
        if inner is tensor or flow.is_output(inner) or flow.consumers(inner) != [op]:
            return tensor
        tensor = inner


def find_fold(flow: Dataflow, group: InputGroup) -> Fold | None:
    """The fold of a scale on ``group``'s input, or ``None`` (something else reads it, or no
    registered absorber takes its producer)."""
    if not group.exclusive:
        return None
    tensor = _through_relu(flow, group.tensor)
    for name in ABSORBERS:
        fold = ABSORBERS.get(name).find(flow, tensor)
        if fold is not None:
            return fold
    return None


@contextmanager
def swapped(module: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[None]:
    """Temporarily put ``replacements`` (name -> module) into ``module``."""
    old = {name: set_module(module, name, new) for name, new in replacements.items()}
    try:
        yield
    finally:
        for name, m in old.items():
            set_module(module, name, m)


def scale_inputs(
    block: nn.Module,
    flow: Dataflow,
    group: InputGroup,
    scale: Tensor,
    *,
    verify: Callable[[], bool] | None = None,
    fold: bool = True,
) -> tuple[str, str | None, dict[str, str]]:
    """Rewrite ``group``'s layers as ``(x / s)(W s)^T``: the float outputs do not change.

    The layers' input columns are multiplied by ``scale``; ``1 / scale`` is folded into the
    producer of their input where :func:`find_fold` finds one (and ``fold`` is true), else each
    layer is wrapped in :class:`InputScaled`.

    Args:
        block: the module holding the layers (the analysed one).
        flow: its :class:`~torchcompress.calibration.dataflow.Dataflow`.
        group: the layers reading one tensor (Linear-like, that tensor's last dimension).
        scale: ``s``, positive, one per channel.
        verify: called after the change; ``False`` means the block's outputs moved: a fold is then
            undone and the explicit scale tried, and if that moves them too everything is undone.
        fold: allow folding (``False``: always an explicit scale).

    Returns:
        ``(how, producer, renamed)``: ``how`` is the absorber's name, ``"explicit"`` or
        ``"unchanged"``; ``producer`` the module that absorbed the scale; ``renamed`` maps each
        wrapped layer's name to its new name (``name.layer``).

    Raises:
        ConfigError: a layer is not Linear-like, or ``scale`` has the wrong size or is not positive.
    """
    layers = {n: block.get_submodule(n) for n in group.layers}
    channels = int(group.tensor.shape[-1])
    for n, m in layers.items():
        if not linear_like(m) or layer_kind(m).geometry(m).in_features != channels:  # type: ignore[union-attr]
            raise ConfigError(
                f"{n!r} ({type(m).__name__}) cannot take a per-input-channel scale of {channels} "
                "channels (only Linear-like layers reading the tensor's last dimension can)."
            )
    scale = scale.detach().reshape(-1)
    if (
        scale.numel() != channels
        or not bool((scale > 0).all())
        or not bool(torch.isfinite(scale).all())
    ):
        raise ConfigError(
            f"The scale of {list(layers)} must hold {channels} positive finite values."
        )
    saved = {id(t): (t, t.detach().clone()) for m in layers.values() for t in _weights(m)}
    with torch.no_grad():
        for m in layers.values():
            _scale_columns(m, scale)
    inv = 1.0 / scale
    found = find_fold(flow, group) if fold else None
    if found is not None:
        kept = [(t, t.detach().clone()) for t in found.tensors()]
        with torch.no_grad():
            found.apply(inv)
        if verify is None or verify():
            return found.how, found.name, {}
        log.info("scaling: folding into %s moved the outputs; using an explicit scale", found.name)
        with torch.no_grad():
            for t, v in kept:
                t.copy_(v)
    renamed = {}
    for n, m in layers.items():
        wrapped = InputScaled(m, inv.to(stored_weight(m)))
        set_module(block, n, wrapped)
        renamed[n] = f"{n}.layer"
    if verify is None or verify():
        return "explicit", None, renamed
    log.warning("scaling: the scale of %s moved the outputs; left unscaled", list(layers))
    for n, m in layers.items():
        set_module(block, n, m)
    with torch.no_grad():
        for t, v in saved.values():
            t.copy_(v)
    return "unchanged", None, {}


def _weights(module: nn.Module) -> list[Tensor]:
    """The module's weight and bias as stored (a masked weight's original)."""
    return [
        stored_weight(module, n)
        for n in ("weight", "bias")
        if isinstance(getattr(module, n, None), Tensor)
    ]
