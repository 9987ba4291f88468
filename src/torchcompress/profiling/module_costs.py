"""Registered costs of the built-in torch layers (see :mod:`torchcompress.costs`), and of every
registered layer kind.

Every weight layer of a kind registered in :mod:`torchcompress.layers` (Linear, Conv1d/2d/3d,
Hugging Face's ``Conv1D``, kinds registered from outside) costs :func:`layer_cost`: the MACs of its
:class:`~torchcompress.layers.Geometry` (:func:`module_cost_fn` gives it to a module of a kind that
has no cost function of its own). Bilinear, transposed convolutions, Embedding, MultiheadAttention
and the recurrent layers have their own formulas. A layer's cost covers the functional ops its
forward runs, so they are counted once. Effective MACs scale the dense MACs by the weight's
fraction of non-zeros.

Example:
    >>> import torch
    >>> from torchcompress.costs import lookup_cost
    >>> lin = torch.nn.Linear(4, 3)
    >>> x = torch.randn(2, 4)
    >>> lookup_cost(lin)(lin, (x,), {}, lin(x)).macs
    24
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..costs import CostFn, LayerCost, lookup_cost, register_cost
from ..layers import geometry, layer_kind
from .op_costs import _arg, _mha_macs, _numel, layer_macs

__all__ = ["layer_cost", "module_cost_fn"]


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any], name: str = "input") -> Any:
    if args:
        return args[0]
    if name in kwargs:
        return kwargs[name]
    return next(iter(kwargs.values()), None)


def _weight_density(w: torch.Tensor | None) -> tuple[int, int]:
    if w is None:
        return 1, 1
    return int(torch.count_nonzero(w.detach())), int(w.numel())


def _sparse_cost(macs: int, weight: torch.Tensor | None) -> LayerCost:
    """Dense MACs, and effective MACs scaled by the weight's fraction of non-zeros.

    Every weight element takes part in the same number of MACs (``macs / numel(weight)``), so the
    scaling is exact.
    """
    nnz, numel = _weight_density(weight)
    if nnz == numel or not numel:
        return LayerCost(macs=macs, effective_macs=macs)
    if macs % numel == 0:
        return LayerCost(macs=macs, effective_macs=macs // numel * nnz)
    return LayerCost(macs=macs, effective_macs=round(macs * nnz / numel))


@register_cost(nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
def layer_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    """The cost of a weight layer of any registered layer kind: its geometry's MACs
    (:meth:`~torchcompress.layers.Geometry.macs` at the output's positions; for a map over the
    last dimension without a tensor output, the input's rows), scaled by the weight's density for
    the effective MACs."""
    geo = geometry(module)
    if isinstance(out, torch.Tensor) and out.numel():
        positions = geo.output_positions(out)
    else:
        x = _first_input(args, kwargs)
        positions = _numel(x) // geo.in_features if not geo.kernel_size else 0
    return _sparse_cost(geo.macs(positions), getattr(module, "weight", None))


def module_cost_fn(module: nn.Module) -> CostFn | None:
    """The cost function of ``module``: its class's registered one (:func:`~torchcompress.costs.
    lookup_cost`), else :func:`layer_cost` for a layer of a registered layer kind, else ``None``."""
    fn = lookup_cost(module)
    if fn is None and layer_kind(module) is not None:
        return layer_cost
    return fn


@register_cost(nn.Bilinear)
def _bilinear_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    macs = _numel(out) * int(module.in1_features) * (int(module.in2_features) + 1)
    return _sparse_cost(macs, module.weight)


@register_cost(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_t_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    w = module.weight
    x = _first_input(args, kwargs)
    return _sparse_cost(layer_macs("conv_transpose", w.shape, x, out), w)


@register_cost(nn.Embedding, nn.EmbeddingBag)
def _embedding_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    return LayerCost(macs=0, note="lookup (no MACs)")


@register_cost(nn.MultiheadAttention)
def _mha_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    names = ("query", "key", "value")
    q, k, _ = (_arg(args, kwargs, i, n) for i, n in enumerate(names))
    batched = q.dim() == 3
    if not batched:
        q_len, batch, s_len = int(q.shape[0]), 1, int(k.shape[0])
    elif module.batch_first:
        batch, q_len, s_len = int(q.shape[0]), int(q.shape[1]), int(k.shape[1])
    else:
        q_len, batch, s_len = int(q.shape[0]), int(q.shape[1]), int(k.shape[0])
    extra = int(module.bias_k is not None) + int(bool(module.add_zero_attn))
    macs = _mha_macs(
        q_len,
        s_len,
        batch,
        int(module.embed_dim),
        int(module.kdim),
        int(module.vdim),
        int(module.out_proj.weight.shape[0]),
        extra,
    )
    # effective: projections scaled by their weights' density
    weights = [
        w
        for w in (
            module.in_proj_weight,
            module.q_proj_weight,
            module.k_proj_weight,
            module.v_proj_weight,
            module.out_proj.weight,
        )
        if w is not None
    ]
    nnz = sum(int(torch.count_nonzero(w.detach())) for w in weights)
    numel = sum(int(w.numel()) for w in weights)
    eff = macs
    if numel and nnz != numel:
        attn = 2 * batch * q_len * (s_len + extra) * int(module.embed_dim)
        eff = attn + round((macs - attn) * nnz / numel)
    return LayerCost(macs=macs, effective_macs=eff, note="projections + QKᵀ + AV")


@register_cost(nn.RNN, nn.LSTM, nn.GRU)
def _rnn_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    x = _first_input(args, kwargs)
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = int(x.data.shape[0])
    elif x.dim() == 2:  # unbatched (T, input)
        steps = int(x.shape[0])
    else:
        steps = int(x.shape[0]) * int(x.shape[1])
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    hidden = int(module.hidden_size)
    proj = int(getattr(module, "proj_size", 0) or 0)
    rec = proj or hidden
    dirs = 2 if module.bidirectional else 1
    per_step = 0
    for layer in range(int(module.num_layers)):
        inp = int(module.input_size) if layer == 0 else rec * dirs
        per_layer = gates * hidden * (inp + rec) + (hidden * proj if proj else 0)
        per_step += dirs * per_layer
    return LayerCost(macs=steps * per_step, note="all gates, layers and directions")
