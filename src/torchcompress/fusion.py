"""Folding BatchNorm into the preceding Linear / Conv layer: :func:`fuse`.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) * gamma / sqrt(var + eps) +
beta``, so it folds into the layer that produced ``x`` (Ioffe & Szegedy 2015; the inference folding
used by every deployment runtime, e.g. Jacob et al., "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, section 3.2)::

    scale = gamma / sqrt(running_var + eps)
    W'    = W * scale            (per output channel)
    b'    = (b - running_mean) * scale + beta

:func:`fuse` finds the ``Conv/Linear -> BatchNorm`` pairs of a model and folds them in place: the
BatchNorm becomes ``nn.Identity`` and the layer a plain layer of the same kind with the folded
weight and bias. Eval-mode outputs are unchanged up to float rounding. The pairs are found

1. through ``torch.fx`` where the model traces (sub-modules that do not trace, e.g. because of
   data-dependent control flow, are analysed on their own, so one untraceable block does not
   prevent the rest);
2. otherwise through ``example_inputs``: one real forward records which tensor each layer produced
   and how many times every tensor was used by any op;
3. or from explicit ``pairs=[("conv", "bn"), ...]``.

A pair is only folded when that is exact: the layer's output feeds the BatchNorm and nothing else
(a residual taken before the BN keeps the pair apart), neither module is called more than once or
shared under two names, no other code reads their parameters or statistics (e.g. a functional
``F.batch_norm`` using the BN's buffers), and the BatchNorm has running statistics. Only plain
``nn.Linear``/``nn.Conv1d/2d/3d`` followed by ``nn.BatchNorm1d/2d/3d`` (or ``nn.SyncBatchNorm``)
are fused; layers already wrapped by a compression family, parametrized or hooked layers and
subclasses are skipped (named in an error when asked for explicitly).

:func:`fold_bn_weights` and :func:`bn_scale_shift` expose the pure (differentiable) maths.

Example:
    >>> import torch, torchcompress as tc
    >>> model = tc.models.create("resnet20").eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> ref = model(x)
    >>> model = tc.fuse(model)
    >>> any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    False
    >>> torch.allclose(model(x), ref, atol=1e-4)
    True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import io
from .costs import registered_cost_types
from .errors import (
    ConfigError,
    SelectionError,
    ShapeError,
    TorchCompressError,
    UnsupportedModuleError,
    did_you_mean,
)
from .select import get_module, matches, replace_modules, select_modules

__all__ = ["bn_scale_shift", "fold_bn_weights", "fuse", "fuse_conv_bn", "fusion_pairs"]

log = logging.getLogger(__name__)

#: layer type -> BatchNorm types it can be folded with (SyncBatchNorm goes with any of them)
_FUSABLE: dict[type[nn.Module], tuple[type[nn.Module], ...]] = {
    nn.Linear: (nn.BatchNorm1d, nn.SyncBatchNorm),
    nn.Conv1d: (nn.BatchNorm1d, nn.SyncBatchNorm),
    nn.Conv2d: (nn.BatchNorm2d, nn.SyncBatchNorm),
    nn.Conv3d: (nn.BatchNorm3d, nn.SyncBatchNorm),
}
_BN_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
)
_PAIR_TYPES = tuple(_FUSABLE) + _BN_TYPES


# --------------------------------------------------------------------------------------------
# Pure maths
# --------------------------------------------------------------------------------------------


def bn_scale_shift(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel affine map of an eval-mode BatchNorm: ``y = x * scale + shift``.

    ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale``, with ``gamma = 1`` and
    ``beta = 0`` for a BatchNorm without affine parameters. Computed in at least float32 and
    differentiable (usable with batch statistics in quantization-aware training).

    Args:
        running_mean: the BN's mean per channel (running or batch statistics).
        running_var: the BN's variance per channel.
        eps: the BN's epsilon.
        weight: gamma, or ``None`` (no affine).
        bias: beta, or ``None`` (no affine).

    Returns:
        ``(scale, shift)``, each of shape ``(channels,)``.

    Example:
        >>> import torch
        >>> s, t = bn_scale_shift(torch.tensor([1.0]), torch.tensor([4.0]), 0.0)
        >>> s.item(), t.item()
        (0.5, -0.5)
    """
    dtype = torch.promote_types(running_var.dtype, torch.float32)
    var = running_var.to(dtype)
    mean = running_mean.to(dtype)
    inv_std = torch.rsqrt(var + eps)
    scale = inv_std if weight is None else weight.to(dtype) * inv_std
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.to(dtype)
    return scale, shift


def fold_bn_weights(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
    bn_weight: torch.Tensor | None = None,
    bn_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BatchNorm into the weight and bias of the layer before it.

    ``W' = W * scale`` along the output channels (dim 0, as in Linear and Conv weights, grouped and
    depthwise convolutions included) and ``b' = (b - mean) * scale + beta``, with ``scale = gamma /
    sqrt(var + eps)``. Computed in at least float32, returned in ``weight``'s dtype; differentiable,
    so quantization-aware training can fold before fake-quantizing (Jacob et al. 2018, section 3.2).

    Args:
        weight: the layer's weight, output channels first: ``(out, ...)``.
        bias: the layer's bias ``(out,)`` or ``None`` (treated as zero).
        running_mean: the BN's mean ``(out,)``.
        running_var: the BN's variance ``(out,)``.
        eps: the BN's epsilon.
        bn_weight: the BN's gamma, or ``None`` for a BN without affine parameters.
        bn_bias: the BN's beta, or ``None``.

    Returns:
        ``(folded_weight, folded_bias)``.

    Raises:
        ShapeError: the BN's channel count differs from the weight's output channels.

    Example:
        >>> import torch
        >>> w, b = fold_bn_weights(torch.ones(2, 3), None, torch.zeros(2), torch.ones(2), 0.0,
        ...                        torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.0]))
        >>> w[:, 0].tolist(), b.tolist()
        ([2.0, 3.0], [1.0, 0.0])
    """
    out = weight.shape[0]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t.shape != (out,):
            raise ShapeError(
                f"fold_bn_weights: {name} has shape {tuple(t.shape)} but the weight has {out} "
                f"output channels (weight shape {tuple(weight.shape)})."
            )
    scale, shift = bn_scale_shift(running_mean, running_var, eps, bn_weight, bn_bias)
    w = weight.to(scale.dtype) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    b = shift if bias is None else bias.to(scale.dtype) * scale + shift
    return w.to(weight.dtype), b.to(weight.dtype)


def _check_pair_types(layer: nn.Module, bn: nn.Module, layer_name: str, bn_name: str) -> str | None:
    """Why ``(layer, bn)`` cannot be folded, judged from the modules alone (``None``: it can)."""
    if type(layer) not in _FUSABLE:
        if isinstance(layer, tuple(_FUSABLE)):
            return (
                f"{layer_name!r} is a {type(layer).__name__}, not a plain Linear/Conv1d/2d/3d "
                "(layers wrapped or subclassed by a compression technique are not fused)"
            )
        return f"{layer_name!r} is a {type(layer).__name__}, not a Linear/Conv1d/Conv2d/Conv3d"
    if type(bn) not in _BN_TYPES:
        return f"{bn_name!r} is a {type(bn).__name__}, not a BatchNorm1d/2d/3d"
    if type(bn) not in _FUSABLE[type(layer)]:
        return (
            f"{bn_name!r} is a {type(bn).__name__}, which does not normalise the output of a "
            f"{type(layer).__name__}"
        )
    if _is_parametrized(layer) or _is_parametrized(bn):
        return "the layer or the BN is parametrized (torch.nn.utils.parametrize)"
    if _has_hooks(layer) or _has_hooks(bn):
        return "the layer or the BN has forward hooks (e.g. a torch.nn.utils.prune mask)"
    if not layer.weight.is_floating_point():
        return f"{layer_name!r} has a non-floating weight ({layer.weight.dtype})"
    if bn.running_mean is None or bn.running_var is None:
        return f"{bn_name!r} keeps no running statistics (track_running_stats=False)"
    out = layer.weight.shape[0]
    if bn.num_features != out:
        return f"{bn_name!r} has {bn.num_features} channels but {layer_name!r} produces {out}"
    return None


def _is_parametrized(m: nn.Module) -> bool:
    return bool(getattr(m, "parametrizations", None))


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def fuse_conv_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new plain layer computing ``bn(layer(x))`` in eval mode (BatchNorm folded in).

    Args:
        layer: a plain ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` (any groups,
            stride, dilation, padding mode; with or without bias).
        bn: the BatchNorm after it, with running statistics (affine or not).

    Returns:
        A layer of the same class, with a bias, on the same device and dtype, in ``layer``'s
        train/eval mode. ``layer`` and ``bn`` are not modified.

    Raises:
        UnsupportedModuleError: the pair cannot be folded (the message says why).

    Example:
        >>> import torch
        >>> conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4).eval()
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(fuse_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-6)
        True
    """
    reason = _check_pair_types(layer, bn, type(layer).__name__, type(bn).__name__)
    if reason is not None:
        raise UnsupportedModuleError(f"Cannot fold the BatchNorm: {reason}.")
    w, b = fold_bn_weights(
        layer.weight.detach(),
        None if layer.bias is None else layer.bias.detach(),
        bn.running_mean,
        bn.running_var,
        bn.eps,
        None if bn.weight is None else bn.weight.detach(),
        None if bn.bias is None else bn.bias.detach(),
    )
    factory = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    new: nn.Module
    if isinstance(layer, nn.Linear):
        new = nn.Linear(layer.in_features, layer.out_features, bias=True, **factory)
    else:
        new = type(layer)(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=True,
            padding_mode=layer.padding_mode,
            **factory,
        )
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.bias.requires_grad_(layer.weight.requires_grad)
    new.train(layer.training)
    return new


# --------------------------------------------------------------------------------------------
# What the model does with its layers: facts from fx or from a recorded forward
# --------------------------------------------------------------------------------------------


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


def _is_compressed(m: nn.Module) -> bool:
    """A layer made by a compression family (or with its own registered cost): left alone."""
    cls = type(m)
    if cls in _PAIR_TYPES:
        return False
    mod = cls.__module__
    if mod.startswith("torchcompress.") and not mod.startswith("torchcompress.models"):
        return True
    if _is_parametrized(m):
        return True
    return cls in registered_cost_types() and not mod.startswith("torch.")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


class _Tracer(torch.fx.Tracer):
    def __init__(self, extra_leaves: set[int]) -> None:
        super().__init__()
        self.extra_leaves = extra_leaves
        self.failed_at: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            id(m) in self.extra_leaves
            or isinstance(m, _PAIR_TYPES)
            or _is_compressed(m)
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.path_of_module(m)
            raise


def _mark_scope_seen(model: nn.Module, root: str, facts: _Facts, opaque: set[str]) -> None:
    """Every module whose parent's forward was traced (so all its calls are visible)."""
    top = get_module(model, root)
    stack = [(root, top)]
    while stack:
        name, mod = stack.pop()
        if name in opaque:
            continue
        for child_name, child in mod.named_children():
            full = _join(name, child_name)
            facts.seen.add(full)
            if isinstance(child, _PAIR_TYPES) or _is_compressed(child):
                continue
            stack.append((full, child))


def _fx_facts(model: nn.Module) -> _Facts:
    """Facts from torch.fx graphs of the model (or of its traceable parts)."""
    facts = _Facts(method="fx")
    queue = [""]
    while queue:
        root_name = queue.pop(0)
        root = get_module(model, root_name)
        leaves: set[int] = set()
        opaque: set[str] = set()
        graph = None
        error: BaseException | None = None
        for _ in range(len(list(root.modules())) + 1):
            tracer = _Tracer(leaves)
            try:
                graph = tracer.trace(root)
                break
            except Exception as e:
                culprit = tracer.failed_at
                if not culprit:
                    error = e
                    break
                sub = root.get_submodule(culprit)
                leaves.add(id(sub))
                opaque.add(_join(root_name, culprit))
        if graph is None:
            # the sub-root's own forward does not trace: its direct children are invisible
            reason = f"torch.fx cannot trace {root_name or type(model).__name__!r}: {error}"
            for child_name, child in root.named_children():
                full = _join(root_name, child_name)
                if isinstance(child, _BN_TYPES):
                    facts.unseen[full] = reason
                elif not isinstance(child, _PAIR_TYPES) and not _is_compressed(child):
                    queue.append(full)
            continue
        _record_graph(graph, root_name, root, facts)
        _mark_scope_seen(model, root_name, facts, opaque)
        queue.extend(sorted(opaque))
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


def _flat_tensors(obj: Any, out: list[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, list | tuple):
        for o in obj:
            _flat_tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flat_tensors(o, out)
    return out


class _Recorder(TorchFunctionMode):
    """One real forward: who produced each tensor, how often it was used, who read which weights."""

    def __init__(self, model: nn.Module, facts: _Facts) -> None:
        super().__init__()
        self.model = model
        self.facts = facts
        self.stack: list[tuple[str, nn.Module]] = []
        self.produced: dict[int, str] = {}
        self.keep: list[torch.Tensor] = []
        self.owner: dict[int, str] = {}
        self.busy = False
        self.handles: list[Any] = []
        for name, m in model.named_modules():
            if isinstance(m, _PAIR_TYPES):
                for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
                    self.owner[id(t)] = name

    def install(self) -> None:
        for name, m in self.model.named_modules():
            if isinstance(m, torch.jit.ScriptModule):
                continue
            self.handles.append(m.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._post(name), with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _inside_compressed(self) -> bool:
        return any(_is_compressed(m) for _, m in self.stack)

    def _pre(self, name: str) -> Any:
        def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.busy = True
            try:
                inside = self._inside_compressed()
                self.stack.append((name, m))
                if inside:
                    return
                f = self.facts
                f.calls[name] = f.calls.get(name, 0) + 1
                f.seen.add(name)
                if isinstance(m, _BN_TYPES):
                    x = args[0] if args else next(iter(kwargs.values()), None)
                    n_inputs = len(args) + len(kwargs)
                    producer = (
                        self.produced.get(id(x))
                        if isinstance(x, torch.Tensor) and n_inputs == 1
                        else None
                    )
                    f.bn_input.setdefault(name, producer)
            finally:
                self.busy = False

        return hook

    def _post(self, name: str) -> Any:
        def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            self.busy = True
            try:
                while self.stack and self.stack[-1][1] is not m:
                    self.stack.pop()
                if self.stack:
                    self.stack.pop()
                if (
                    type(m) in _FUSABLE
                    and isinstance(out, torch.Tensor)
                    and not self._inside_compressed()
                ):
                    self.produced[id(out)] = name
                    self.keep.append(out)
                    self.facts.uses.setdefault(name, 0)
                    self.facts.out_ndim[name] = out.dim()
            finally:
                self.busy = False

        return hook

    def count_output(self, out: Any) -> None:
        for t in _flat_tensors(out, []):
            producer = self.produced.get(id(t))
            if producer is not None:
                self.facts.uses[producer] = self.facts.uses.get(producer, 0) + 1
                self.facts.users.setdefault(producer, []).append("the model's output")

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.busy:
            return out
        self.busy = True
        try:
            inputs = _flat_tensors((args, kwargs), [])
            top = self.stack[-1][0] if self.stack else ""
            returns_tensor = bool(_flat_tensors(out, []))
            for t in inputs:
                producer = self.produced.get(id(t))
                if producer is not None and returns_tensor:
                    self.facts.uses[producer] = self.facts.uses.get(producer, 0) + 1
                    label = getattr(func, "__name__", str(func))
                    self.facts.users.setdefault(producer, []).append(
                        f"{label} in {top!r}" if top else label
                    )
                owner = self.owner.get(id(t))
                if owner is not None and owner != top:
                    self.facts.attr_refs.add(owner)
        finally:
            self.busy = False
        return out


def _traced_facts(model: nn.Module, example_inputs: Any) -> _Facts:
    """Facts from one recorded eval-mode forward on ``example_inputs``."""
    from .profiling import describe_inputs, example_batch

    facts = _Facts(method="example_inputs")
    batch = example_batch(model, example_inputs)
    rec = _Recorder(model, facts)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        rec.install()
        with torch.no_grad(), rec:
            try:
                out = batch(model)
            except TorchCompressError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
                where = rec.stack[-1][0] if rec.stack else ""
                raise ShapeError(
                    f"fuse: the forward of {type(model).__name__} on example_inputs "
                    f"({describe_inputs(batch.args, batch.kwargs)}) failed"
                    f"{f' in module {where!r}' if where else ''}: {e}"
                ) from e
        rec.count_output(out)
    finally:
        rec.remove()
        for m, training in modes.items():
            m.training = training
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


def fusion_pairs(model: nn.Module, *, example_inputs: Any = None) -> list[tuple[str, str]]:
    """The ``(layer, batchnorm)`` pairs :func:`fuse` would fold, without changing the model.

    Args:
        model: the model.
        example_inputs: a batch the model accepts, used where torch.fx cannot trace the model.

    Raises:
        ConfigError: torch.fx cannot see how some BatchNorm is used and no ``example_inputs`` were
            given.

    Example:
        >>> import torchcompress as tc
        >>> fusion_pairs(tc.models.create("resnet20"))[:2]
        [('conv1', 'bn1'), ('layer1.0.conv1', 'layer1.0.bn1')]
    """
    pairs, _, _ = _plan(model, None, example_inputs, [], [])
    return pairs


def _plan(
    model: nn.Module,
    pairs: Sequence[tuple[str, str]] | None,
    example_inputs: Any,
    inc: list[str],
    exc: list[str],
) -> tuple[list[tuple[str, str]], dict[str, str], str]:
    """Pairs to fold, reasons for the ones refused (by module name), and the method used."""
    shared = _shared(model)
    reasons: dict[str, str] = {}
    has_bn = any(isinstance(m, _BN_TYPES) for m in model.modules())
    if pairs is None and not has_bn:
        return [], reasons, "none"

    facts, errors = _analyse(model, example_inputs)
    if pairs is None:
        if facts is None or facts.unseen:
            missing = sorted(facts.unseen) if facts is not None else []
            detail = "; ".join(errors) or "torch.fx cannot trace it"
            raise ConfigError(
                f"fuse cannot see how the BatchNorm layers {missing or '(all)'} of "
                f"{type(model).__name__} are used ({detail}). Pass example_inputs=<a batch the "
                "model accepts> so that fuse follows one real forward, or pairs=[('conv', 'bn'), "
                "...] naming the layer that feeds each BatchNorm."
            )
        candidates = _auto_pairs(facts)
    else:
        candidates = _check_explicit(model, pairs)

    selected = []
    for layer_name, bn_name in candidates:
        if inc and not (matches(layer_name, inc) or matches(bn_name, inc)):
            continue
        if exc and (matches(layer_name, exc) or matches(bn_name, exc)):
            continue
        layer = get_module(model, layer_name)
        if pairs is None and (not isinstance(layer, tuple(_FUSABLE)) or _is_compressed(layer)):
            if _is_compressed(layer) or isinstance(layer, tuple(_FUSABLE)):
                log.debug("fuse: skipping %r: already compressed or not a plain layer", layer_name)
                reasons[layer_name] = reasons[bn_name] = (
                    f"{layer_name!r} ({type(layer).__name__}) is not a plain layer"
                )
            continue
        reason = _verdict(model, facts, layer_name, bn_name, shared)
        if reason is not None:
            if pairs is not None:
                raise UnsupportedModuleError(
                    f"Cannot fuse ({layer_name!r}, {bn_name!r}): {reason}. Remove the pair from "
                    "pairs= (fuse never folds a pair where that would change the outputs)."
                )
            log.debug("fuse: not folding (%s, %s): %s", layer_name, bn_name, reason)
            reasons[layer_name] = reasons[bn_name] = reason
            continue
        selected.append((layer_name, bn_name))
    return selected, reasons, facts.method if facts is not None else "pairs"


def _check_explicit(model: nn.Module, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(pairs, str | bytes) or not isinstance(pairs, Iterable):
        raise ConfigError(f"pairs must be a list of (layer, batchnorm) name pairs, got {pairs!r}.")
    out: list[tuple[str, str]] = []
    names = [n for n, _ in model.named_modules() if n]
    used: set[str] = set()
    for pair in pairs:
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(p, str) for p in pair)
        ):
            raise ConfigError(
                f"Each entry of pairs must be a (layer, batchnorm) name pair, got {pair!r}."
            )
        layer_name, bn_name = pair
        for n in pair:
            if n not in names:
                raise SelectionError(
                    f"pairs names {n!r}, which is not a module of {type(model).__name__}."
                    f"{did_you_mean(n, names)}"
                )
            if n in used:
                raise ConfigError(f"pairs names {n!r} twice; each module can be folded once.")
            used.add(n)
        layer, bn = get_module(model, layer_name), get_module(model, bn_name)
        if isinstance(layer, _BN_TYPES) and isinstance(bn, tuple(_FUSABLE)):
            raise ConfigError(
                f"pairs entry {tuple(pair)!r} is (batchnorm, layer); give (layer, batchnorm): "
                f"({bn_name!r}, {layer_name!r})."
            )
        reason = _check_pair_types(layer, bn, layer_name, bn_name)
        if reason is not None:
            raise UnsupportedModuleError(f"Cannot fuse ({layer_name!r}, {bn_name!r}): {reason}.")
        out.append((layer_name, bn_name))
    return out


def fuse(
    model: nn.Module,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    example_inputs: Any = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> nn.Module:
    """Fold every BatchNorm into the Linear/Conv layer that feeds it, in place.

    Each folded BatchNorm becomes ``nn.Identity`` and its layer a plain layer of the same kind with
    the folded weight and a bias (see the module documentation for the maths and the safety rules).
    The model object is edited in place (it is not turned into a ``GraphModule``) and returned; if
    anything fails it is left as it was. Eval-mode outputs are unchanged up to float rounding; the
    folded layers use the running statistics, so a model still in training mode stops normalising
    with batch statistics there (fuse is for inference).

    Args:
        model: the model to fuse.
        pairs: explicit ``[(layer, batchnorm), ...]`` qualified names to fold, instead of finding
            them. Each pair is still checked against the model's graph where one can be built.
        example_inputs: a batch the model accepts (tensor, tuple, dict of keyword inputs or
            :class:`~torchcompress.batches.Batch`), used to follow one real forward where torch.fx
            cannot trace the model (data-dependent control flow, Hugging Face models).
        include: glob patterns: only pairs whose layer or BatchNorm matches are folded. A module
            named exactly that cannot be folded is an error saying why.
        exclude: glob patterns of layers or BatchNorms not to fold.

    Returns:
        ``model``, fused.

    Raises:
        ConfigError: torch.fx cannot see how some BatchNorm is used and neither ``example_inputs``
            nor ``pairs`` were given (the message names them), or ``pairs`` is malformed.
        SelectionError: a name in ``pairs``, ``include`` or ``exclude`` matches no module.
        UnsupportedModuleError: an explicit pair (or a layer named exactly in ``include``) cannot
            be folded; the message says why.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
        >>> tc.fuse(m)
        Sequential(
          (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
          (1): Identity()
        )
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse() needs an nn.Module, got {type(model).__name__}.")
    if include is not None or exclude is not None:
        select_modules(model, include, exclude, types=None)  # patterns matching nothing raise
    inc = [include] if isinstance(include, str) else list(include or [])
    exc = [exclude] if isinstance(exclude, str) else list(exclude or [])

    chosen, reasons, method = _plan(model, pairs, example_inputs, inc, exc)
    fused_names = {n for pair in chosen for n in pair}
    modules = dict(model.named_modules())
    for pat in inc:
        m = modules.get(pat)
        if m is not None and isinstance(m, _PAIR_TYPES) and pat not in fused_names:
            why = reasons.get(pat, "no Linear/Conv -> BatchNorm pair of it was found")
            raise UnsupportedModuleError(
                f"{pat!r} was asked for in include= but cannot be fused: {why}."
            )

    factories: dict[str, Any] = {}
    training = False
    for layer_name, bn_name in chosen:
        bn = get_module(model, bn_name)
        training = training or bn.training
        factories[layer_name] = lambda old, bn=bn: fuse_conv_bn(old, bn)
        factories[bn_name] = lambda old: nn.Identity()
    if factories:
        replace_modules(model, factories)
        if training:
            log.warning(
                "fuse: %s is in training mode; the folded layers use the BatchNorm running "
                "statistics (eval-mode arithmetic).",
                type(model).__name__,
            )
    log.info("fuse: folded %d BatchNorm layers (%s)", len(chosen), method)
    io.add_history(model, "fuse", {"pairs": [list(p) for p in chosen], "method": method})
    return model
