"""Module handlers: how each kind of module takes part in channel pruning (:data:`HANDLERS`).

A :class:`ModuleHandler` says, for the modules it matches:

- in the dependency graph (*leaf* handlers): how the channels of the module's inputs reach its
  outputs and which parameter dimensions they slice (:meth:`ModuleHandler.propagate`), from the
  module call the :class:`~torchcompress.tracing.Recorder` saw; the ops inside a leaf are not
  followed. Modules without a handler are followed op by op (containers, blocks, Hugging Face
  layers);
- after the surgery sliced its parameters: which attributes follow the new shapes
  (:meth:`ModuleHandler.resize`: ``out_features``, ``groups``, a head count), and which of them
  ``tc.save`` records so that ``tc.load`` rebuilds the pruned architecture
  (:attr:`ModuleHandler.attributes`).

Built in: the weight layers of :data:`torchcompress.layers.LAYER_KINDS` (``linear``, ``conv`` with
groups and depthwise, Hugging Face's ``Conv1D``), BatchNorm and InstanceNorm, LayerNorm and RMSNorm,
GroupNorm, Embedding, the option-A shortcut of :mod:`torchcompress.models.resnet`, and in
:mod:`~torchcompress.sparsity.structured.attention` ``nn.MultiheadAttention`` and Hugging Face
BERT-style self-attention. A module that owns parameters pruning would resize and has no handler is
an error saying how to register one: ``HANDLERS.add("name", MyHandler())`` (the latest registered
handler that matches a module wins). :class:`ParameterHandler` covers a module whose parameters
need slicing and nothing else (a position embedding, a class token).

Convolutions with groups: a depthwise convolution (one input channel per group) prunes whole
groups, each input channel with the outputs it feeds (``groups`` shrinks); a grouped convolution
keeps its groups and prunes the same channels in every group (the cardinality stays).

Example:
    >>> from torch import nn
    >>> from torchcompress.sparsity.structured.handlers import handler_for
    >>> type(handler_for(nn.Conv2d(4, 8, 3))).__name__, handler_for(nn.ReLU()) is None
    ('ConvHandler', True)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from ... import layers
from ...models.resnet import PadShortcut
from ...registry import Registry
from ...tracing import ModuleCall
from .context import Context
from .graph import Ids

__all__ = [
    "HANDLERS",
    "BatchNormHandler",
    "ConvHandler",
    "EmbeddingHandler",
    "GroupNormHandler",
    "HFConv1DHandler",
    "Keep",
    "LayerNormHandler",
    "LinearHandler",
    "ModuleHandler",
    "PadShortcutHandler",
    "ParameterHandler",
    "WeightLayerHandler",
    "call_input",
    "handler_for",
]

#: local key (``"weight"``, ``"out_proj.bias"``, ``"#heads"``) -> dimension -> kept indices
Keep = dict[str, dict[int, Tensor]]


def call_input(call: ModuleCall, index: int = 0, name: str = "input") -> Any:
    """Argument ``index`` (or keyword ``name``) of a recorded module call."""
    if len(call.args) > index:
        return call.args[index]
    return call.kwargs.get(name)


def _first_output(call: ModuleCall) -> Tensor | None:
    out = call.output
    if isinstance(out, Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        return out[0]
    return None


class ModuleHandler:
    """How one kind of module takes part in channel pruning (subclass it to add one).

    Attributes:
        types: module classes the handler covers (``isinstance``; or override :meth:`matches`).
        leaf: the module is one node of the graph (:meth:`propagate`); otherwise its forward is
            followed op by op and only :meth:`resize` runs.
        attributes: the module's attributes ``tc.save`` records after pruning (restored by
            :meth:`restore` on ``tc.load``).
        role: ``"weight"`` (a layer whose weight counts for magnitude criteria), ``"norm"`` (a
            normalization with a per-channel scale) or ``"other"``.
    """

    types: ClassVar[tuple[type[nn.Module], ...]] = ()
    leaf: ClassVar[bool] = True
    attributes: ClassVar[tuple[str, ...]] = ()
    role: ClassVar[str] = "other"

    def matches(self, module: nn.Module) -> bool:
        """Whether the handler covers ``module``."""
        return bool(self.types) and isinstance(module, self.types)

    def propagate(self, ctx: Context, name: str, module: nn.Module, call: ModuleCall) -> None:
        """Label the call's outputs and bind the module's parameters (leaf handlers)."""
        raise NotImplementedError

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        """Update the module's attributes after its parameters were sliced.

        Args:
            module: the module.
            keep: what stayed of the parameters it bound (leaf handlers), or of the parameters of
                its submodules (other handlers), by key relative to the module.
            name: its qualified name.
        """

    def saved_attributes(self, module: nn.Module) -> dict[str, Any]:
        """The attributes ``tc.save`` records (JSON values)."""
        out: dict[str, Any] = {}
        for a in self.attributes:
            v = getattr(module, a, None)
            out[a] = list(v) if isinstance(v, tuple) else v
        return out

    def restore(self, module: nn.Module, attributes: dict[str, Any], name: str = "") -> None:
        """Set recorded attributes on a freshly built module (``tc.load``)."""
        for a, v in attributes.items():
            if isinstance(getattr(module, a, None), tuple) and isinstance(v, list):
                v = tuple(v)
            setattr(module, a, v)


HANDLERS: Registry[ModuleHandler] = Registry("structured-pruning module handler")


def handler_for(module: nn.Module) -> ModuleHandler | None:
    """The registered handler of ``module`` (the latest registered that matches), or ``None``."""
    for name in reversed(HANDLERS.names()):
        h = HANDLERS.get(name)
        if h.matches(module):
            return h
    return None


def _kept(keep: Keep, key: str, dim: int = 0) -> int | None:
    idx = keep.get(key, {}).get(dim)
    return None if idx is None else int(idx.numel())


# --- weight layers -------------------------------------------------------------------------------


class WeightLayerHandler(ModuleHandler):
    """A weight layer of :data:`torchcompress.layers.LAYER_KINDS` (subclasses set :attr:`kind`).

    Channels come from the layer's :class:`~torchcompress.layers.Geometry`: Linear-like maps work
    on the last dimension, convolutions on the channel dimension before the spatial ones; the
    stored weight's output and input axes are the kind's ``weight_axes``.
    """

    kind: ClassVar[str] = ""
    role = "weight"

    def matches(self, module: nn.Module) -> bool:
        k = layers.layer_kind(module)
        return k is not None and k.name == self.kind

    def propagate(self, ctx: Context, name: str, module: nn.Module, call: ModuleCall) -> None:
        kind = layers.layer_kind(module)
        geo = layers.geometry(module, name)
        x, y = call_input(call), _first_output(call)
        if not isinstance(x, Tensor) or y is None:
            ctx.graph.fix(ctx.labeled([x]), ctx.reason(f"{name}: an input that is not a tensor"))
            return
        o_ax, i_ax = kind.weight_axes  # type: ignore[union-attr]
        key = ctx.key(module, name, "weight")
        sd = geo.spatial_dims
        x_dim = -1 if sd == 0 else x.dim() - sd - 1
        y_dim = -1 if sd == 0 else y.dim() - sd - 1
        xin = ctx.label(x, x_dim)
        out = ctx.graph.produce(key, o_ax, geo.out_features, origin=name, binder=name)
        g, m, n = geo.groups, geo.m, geo.in_features // geo.groups
        factors: list[Ids] = [out]
        if g == 1:
            if xin is not None:
                ctx.graph.bind(key, i_ax, xin, name)
                factors.append(xin)
        elif n == 1:  # depthwise: group j is input channel j and the m outputs it feeds
            rows = out.reshape(g, m)
            if xin is None:
                ctx.graph.fix(out, ctx.reason(f"{name}: depthwise over channels of fixed size"))
            else:
                ctx.graph.bind(_join(name, "#groups"), 0, xin, name)
                for k in range(m):
                    ctx.graph.union(rows[:, k], xin)
        else:  # grouped: keep the groups, prune the same positions in every group
            rows = out.reshape(g, m)
            for j in range(1, g):
                ctx.graph.union(rows[0], rows[j])
            if xin is not None:
                cols = xin.reshape(g, n)
                for j in range(1, g):
                    ctx.graph.union(cols[0], cols[j])
                ctx.graph.bind(key, i_ax, cols[0], name)
                factors.append(cols[0])
        if isinstance(getattr(module, "bias", None), Tensor):
            ctx.graph.bind(ctx.key(module, name, "bias"), 0, out, name)
        # other labeled dimensions: leading (batch-like) ones map position by position and keep
        # their labels; spatial ones are mixed by the kernel, so their channels stay
        labels: dict[int, Ids] = {}
        for d, ids in ctx.labels(x).items():
            if d == x_dim % x.dim():
                continue
            if d < x_dim % x.dim() and y.dim() == x.dim():
                labels[d] = ids
            else:
                ctx.graph.fix(ids, ctx.reason(f"{name}: channels mixed along a spatial dimension"))
        labels[y_dim % y.dim()] = out
        ctx.set_labels(y, labels)
        ctx.add_cost(geo.macs(geo.output_positions(y)), factors)

    def _canonical_shape(self, module: nn.Module) -> tuple[int, ...]:
        kind = layers.layer_kind(module)
        return tuple(kind.to_canonical(module, module.weight).shape)  # type: ignore[union-attr]


def _join(prefix: str, name: str) -> str:
    if name.startswith("#"):
        return f"{prefix}{name}"
    return f"{prefix}.{name}" if prefix else name


class LinearHandler(WeightLayerHandler):
    """``nn.Linear`` (and any module of the ``linear`` layer kind): ``in_features``/``out_features``."""

    kind = "linear"
    attributes = ("in_features", "out_features")

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        out, inp = self._canonical_shape(module)
        module.out_features, module.in_features = int(out), int(inp)


class HFConv1DHandler(WeightLayerHandler):
    """Hugging Face's ``Conv1D`` (weight stored ``(in, out)``): ``nf`` and ``nx``."""

    kind = "hf_conv1d"
    attributes = ("nf", "nx")

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        out, inp = self._canonical_shape(module)
        module.nf = int(out)
        if hasattr(module, "nx"):
            module.nx = int(inp)


class ConvHandler(WeightLayerHandler):
    """``nn.Conv1d/2d/3d``: channels, and groups for depthwise convolutions."""

    kind = "conv"
    attributes = ("in_channels", "out_channels", "groups")

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        shape = self._canonical_shape(module)
        groups = _kept(keep, "#groups")
        if groups is not None:
            module.groups = groups
        module.out_channels = int(shape[0])
        module.in_channels = int(shape[1]) * int(module.groups)


# --- normalizations, embeddings ------------------------------------------------------------------


def _bind_existing(
    ctx: Context, name: str, module: nn.Module, attrs: tuple[str, ...], dim: int, ids: Ids
) -> None:
    for a in attrs:
        if isinstance(getattr(module, a, None), Tensor) and getattr(module, a).dim() > dim:
            ctx.graph.bind(ctx.key(module, name, a), dim, ids, name)


class BatchNormHandler(ModuleHandler):
    """BatchNorm and InstanceNorm (1d/2d/3d): per-channel parameters and running statistics."""

    types = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
    attributes = ("num_features",)
    role = "norm"

    def propagate(self, ctx: Context, name: str, module: nn.Module, call: ModuleCall) -> None:
        x, y = call_input(call), _first_output(call)
        if not isinstance(x, Tensor) or y is None:
            return
        no_batch = getattr(module, "_get_no_batch_dim", None)  # InstanceNorm takes unbatched input
        cdim = 0 if x.dim() == 1 or (no_batch is not None and x.dim() == no_batch()) else 1
        ids = ctx.label(x, cdim)
        if ids is None:
            return
        _bind_existing(ctx, name, module, ("weight", "bias", "running_mean", "running_var"), 0, ids)
        ctx.graph.bind(_join(name, "#features"), 0, ids, name)
        ctx.set_labels(y, ctx.labels(x))

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        n = _kept(keep, "#features")
        if n is not None:
            module.num_features = n


class LayerNormHandler(ModuleHandler):
    """LayerNorm (and RMSNorm): parameters over the last ``len(normalized_shape)`` dimensions."""

    types = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
    attributes = ("normalized_shape",)
    role = "norm"

    def propagate(self, ctx: Context, name: str, module: nn.Module, call: ModuleCall) -> None:
        x, y = call_input(call), _first_output(call)
        if not isinstance(x, Tensor) or y is None:
            return
        k = len(module.normalized_shape)
        for i in range(k):
            ids = ctx.label(x, x.dim() - k + i)
            if ids is not None:
                _bind_existing(ctx, name, module, ("weight", "bias"), i, ids)
                ctx.graph.bind(_join(name, "#shape"), i, ids, name)
        ctx.set_labels(y, ctx.labels(x))

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        shape = list(module.normalized_shape)
        for i in range(len(shape)):
            n = _kept(keep, "#shape", i)
            if n is not None:
                shape[i] = n
        module.normalized_shape = tuple(shape)


class GroupNormHandler(ModuleHandler):
    """GroupNorm: the groups stay; the same channels go in every group."""

    types = (nn.GroupNorm,)
    attributes = ("num_channels",)
    role = "norm"

    def propagate(self, ctx: Context, name: str, module: nn.Module, call: ModuleCall) -> None:
        x, y = call_input(call), _first_output(call)
        if not isinstance(x, Tensor) or y is None:
            return
        ids = ctx.label(x, 1 if x.dim() > 1 else 0)
        if ids is None:
            return
        g = int(module.num_groups)
        cols = ids.reshape(g, -1)
        for j in range(1, g):
            ctx.graph.union(cols[0], cols[j])
        _bind_existing(ctx, name, module, ("weight", "bias"), 0, ids)
        ctx.graph.bind(_join(name, "#channels"), 0, ids, name)
        ctx.set_labels(y, ctx.labels(x))

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        n = _kept(keep, "#channels")
        if n is not None:
            module.num_channels = n


class EmbeddingHandler(ModuleHandler):
    """``nn.Embedding``: its columns are output channels; its rows are looked up by index (kept)."""

    types = (nn.Embedding,)
    attributes = ("embedding_dim",)
    role = "weight"

    def propagate(self, ctx: Context, name: str, module: nn.Module, call: ModuleCall) -> None:
        y = _first_output(call)
        key = ctx.key(module, name, "weight")
        rows = ctx.graph.bound(key, 0)
        if rows is None:
            rows = ctx.graph.bind(
                key, 0, ctx.graph.fresh(module.num_embeddings, active=False), name
            )
        ctx.graph.fix(rows, f"{name}: embedding rows are looked up by index")
        out = ctx.graph.produce(key, 1, module.embedding_dim, origin=name, binder=name)
        if y is not None:
            ctx.set_label(y, -1, out)

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        module.embedding_dim = int(module.weight.shape[1])


class ParameterHandler(ModuleHandler):
    """A module whose own parameters only need slicing (no attribute follows their shapes).

    Its forward is followed op by op; register it for modules that hold, e.g., a position embedding
    or a class token added to channels pruning may remove::

        HANDLERS.add("my_vit", ParameterHandler(MyViT))

    Args:
        types: the module classes.
    """

    leaf = False

    def __init__(self, *types: type[nn.Module]) -> None:
        self.types = tuple(types)  # type: ignore[misc]


class PadShortcutHandler(ModuleHandler):
    """The option-A shortcut of the CIFAR ResNets: the input's channels pass, the padding stays."""

    types = (PadShortcut,)
    attributes = ("in_channels", "out_channels")

    def propagate(self, ctx: Context, name: str, module: nn.Module, call: ModuleCall) -> None:
        x, y = call_input(call), _first_output(call)
        if not isinstance(x, Tensor) or y is None:
            return
        ids = ctx.label(x, 1)
        if ids is None:
            return
        extra = int(y.shape[1]) - int(x.shape[1])
        lo, hi = extra // 2, extra - extra // 2
        pad_lo = ctx.graph.fresh(lo, active=False)
        pad_hi = ctx.graph.fresh(hi, active=False)
        why = f"{name}: zero channels padded by the shortcut"
        ctx.graph.fix(pad_lo, why)
        ctx.graph.fix(pad_hi, why)
        ctx.graph.bind(_join(name, "#in"), 0, ids, name)
        ctx.set_label(y, 1, np.concatenate([pad_lo, ids, pad_hi]))

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        n = _kept(keep, "#in")
        if n is not None:
            extra = int(module.out_channels) - int(module.in_channels)
            module.in_channels, module.out_channels = n, n + extra


HANDLERS.add("linear", LinearHandler())
HANDLERS.add("hf_conv1d", HFConv1DHandler())
HANDLERS.add("conv", ConvHandler())
HANDLERS.add("batch_norm", BatchNormHandler())
HANDLERS.add("layer_norm", LayerNormHandler())
HANDLERS.add("group_norm", GroupNormHandler())
HANDLERS.add("embedding", EmbeddingHandler())
HANDLERS.add("pad_shortcut", PadShortcutHandler())
