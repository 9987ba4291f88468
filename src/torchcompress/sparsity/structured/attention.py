"""Attention heads: ``nn.MultiheadAttention`` and Hugging Face BERT-style self-attention.

- :class:`MultiheadAttentionHandler`: ``nn.MultiheadAttention`` is one node of the graph (its
  fused forward reads every weight itself). Whole heads go: the rows of the query, key and value
  projections of a head and the out projection's columns. In torch's module the query's width *is*
  ``embed_dim`` (``num_heads * head_dim``), so a head also takes its block of ``head_dim`` channels
  of the query input: heads are pruned only where the model's channels around the attention may
  shrink with them (not when they are the model's output). Separate key/value inputs (``kdim``,
  ``vdim``) prune their channels freely.
- :class:`HFSelfAttentionHandler`: Hugging Face BERT-style self-attention (``query``/``key``/
  ``value`` layers, ``num_attention_heads``, ``attention_head_size``, ``all_head_size``; BERT,
  RoBERTa, ELECTRA, MiniLM). Its forward is followed op by op (the view into heads makes each head
  one unit); afterwards the head count follows the layers, the kept heads are remembered (original
  indices) and the model's ``config.pruned_heads`` records the pruned ones per layer, as Hugging
  Face's own ``prune_heads`` does.

Example:
    >>> from torch import nn
    >>> from torchcompress.sparsity.structured.handlers import handler_for
    >>> type(handler_for(nn.MultiheadAttention(8, 2))).__name__
    'MultiheadAttentionHandler'
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from torch import Tensor, nn

from ... import layers
from ...errors import UnsupportedModuleError
from ...tracing import ModuleCall
from .context import Context
from .handlers import HANDLERS, Keep, ModuleHandler, call_input

__all__ = ["HFSelfAttentionHandler", "MultiheadAttentionHandler"]


def _j(name: str, attr: str) -> str:
    if attr.startswith("#"):
        return f"{name}{attr}"
    return f"{name}.{attr}" if name else attr


class MultiheadAttentionHandler(ModuleHandler):
    """``nn.MultiheadAttention``: whole heads (see the module docstring)."""

    types = (nn.MultiheadAttention,)
    attributes = ("embed_dim", "num_heads", "head_dim", "kdim", "vdim")
    role = "weight"

    def propagate(self, ctx: Context, name: str, module: nn.Module, call: ModuleCall) -> None:
        mha: nn.MultiheadAttention = module  # type: ignore[assignment]
        q, k, v = (
            call_input(call, 0, "query"),
            call_input(call, 1, "key"),
            call_input(call, 2, "value"),
        )
        out = call.output[0] if isinstance(call.output, tuple | list) else call.output
        if not all(isinstance(t, Tensor) for t in (q, k, v)) or not isinstance(out, Tensor):
            return
        g = ctx.graph
        heads = g.produce(_j(name, "#heads"), 0, mha.num_heads, origin=name, binder=name)
        per = np.repeat(heads, mha.head_dim)
        lq, lk, lv = ctx.label(q, -1), ctx.label(k, -1), ctx.label(v, -1)
        why = ctx.reason(f"{name}: the query's width is embed_dim, fixed here")
        g.tie(lq, per, why)
        if mha._qkv_same_embed_dim:
            g.bind(ctx.key(mha, name, "in_proj_weight"), 0, np.concatenate([per, per, per]), name)
            g.bind(ctx.key(mha, name, "in_proj_weight"), 1, per, name)
            g.tie(lk, per, why)
            g.tie(lv, per, why)
        else:
            g.bind(ctx.key(mha, name, "q_proj_weight"), 0, per, name)
            g.bind(ctx.key(mha, name, "q_proj_weight"), 1, per, name)
            for attr, lab in (("k_proj_weight", lk), ("v_proj_weight", lv)):
                g.bind(ctx.key(mha, name, attr), 0, per, name)
                if lab is not None:
                    g.bind(ctx.key(mha, name, attr), 1, lab, name)
        if isinstance(mha.in_proj_bias, Tensor):
            g.bind(ctx.key(mha, name, "in_proj_bias"), 0, np.concatenate([per, per, per]), name)
        for attr in ("bias_k", "bias_v"):
            if isinstance(getattr(mha, attr, None), Tensor):
                g.bind(ctx.key(mha, name, attr), 2, per, name)
        g.bind(ctx.key(mha.out_proj, _j(name, "out_proj"), "weight"), 1, per, name)
        rows = g.produce(
            ctx.key(mha.out_proj, _j(name, "out_proj"), "weight"),
            0,
            mha.out_proj.out_features,
            origin=name,
            binder=name,
        )
        if isinstance(mha.out_proj.bias, Tensor):
            g.bind(ctx.key(mha.out_proj, _j(name, "out_proj"), "bias"), 0, rows, name)
        ctx.set_label(out, -1, rows)
        self._costs(ctx, mha, q, k, heads, rows, lq, lk, lv)

    @staticmethod
    def _costs(
        ctx: Context,
        mha: nn.MultiheadAttention,
        q: Tensor,
        k: Tensor,
        heads: Any,
        rows: Any,
        lq: Any,
        lk: Any,
        lv: Any,
    ) -> None:
        e = mha.embed_dim
        batched = q.dim() == 3
        if batched and mha.batch_first:
            b, lq_len, s = int(q.shape[0]), int(q.shape[1]), int(k.shape[1])
        elif batched:
            b, lq_len, s = int(q.shape[1]), int(q.shape[0]), int(k.shape[0])
        else:
            b, lq_len, s = 1, int(q.shape[0]), int(k.shape[0])
        kdim = mha.kdim if not mha._qkv_same_embed_dim else e
        vdim = mha.vdim if not mha._qkv_same_embed_dim else e
        extra = int(mha.bias_k is not None) + int(bool(mha.add_zero_attn))
        ctx.add_cost(b * lq_len * e * e, [lq, heads])
        ctx.add_cost(b * s * kdim * e, [lk, heads])
        ctx.add_cost(b * s * vdim * e, [lv, heads])
        ctx.add_cost(2 * b * lq_len * (s + extra) * e, [heads])
        ctx.add_cost(b * lq_len * e * mha.out_proj.out_features, [heads, rows])

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        mha: nn.MultiheadAttention = module  # type: ignore[assignment]
        heads = keep.get("#heads", {}).get(0)
        if heads is not None:
            mha.num_heads = int(heads.numel())
            mha.embed_dim = mha.num_heads * mha.head_dim
        if mha._qkv_same_embed_dim:
            mha.kdim = mha.vdim = mha.embed_dim
        else:
            mha.kdim = int(mha.k_proj_weight.shape[1])
            mha.vdim = int(mha.v_proj_weight.shape[1])
        mha.out_proj.in_features = int(mha.out_proj.weight.shape[1])
        mha.out_proj.out_features = int(mha.out_proj.weight.shape[0])


def _layer_index(module: nn.Module, name: str) -> int | None:
    idx = getattr(module, "layer_idx", None)
    if isinstance(idx, int):
        return idx
    found = re.findall(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)", name)
    return int(found[-1]) if found else None


class HFSelfAttentionHandler(ModuleHandler):
    """Hugging Face BERT-style self-attention: the head count follows its layers (see above)."""

    leaf = False
    attributes = (
        "num_attention_heads",
        "all_head_size",
        "_torchcompress_heads",
        "_torchcompress_layer",
    )

    def matches(self, module: nn.Module) -> bool:
        needed = ("num_attention_heads", "attention_head_size", "all_head_size")
        return all(hasattr(module, a) for a in needed) and all(
            isinstance(getattr(module, c, None), nn.Module)
            and layers.layer_kind(getattr(module, c)) is not None
            for c in ("query", "key", "value")
        )

    def resize(self, module: nn.Module, keep: Keep, name: str = "") -> None:
        size = int(module.attention_head_size)
        rows = keep.get("query.weight", {}).get(0)
        before = list(
            getattr(module, "_torchcompress_heads", range(int(module.num_attention_heads)))
        )
        width = int(layers.geometry(module.query).out_features)
        for c in ("key", "value"):
            if int(layers.geometry(getattr(module, c)).out_features) % size:
                width = -1
        if width % size or width < 0:
            raise UnsupportedModuleError(
                f"{type(module).__name__}: its query/key/value widths are no longer whole heads "
                f"of {size} channels after pruning; the attention must lose whole heads (protect "
                "it with ignore=[...] or register a handler for it)."
            )
        heads = before
        if rows is not None:
            kept = sorted({int(r) // size for r in rows.tolist()})
            heads = [before[i] for i in kept]
        module.num_attention_heads = width // size
        module.all_head_size = width
        module._torchcompress_heads = heads
        module._torchcompress_layer = _layer_index(module, name)
        self._config(module, heads, name)

    def restore(self, module: nn.Module, attributes: dict[str, Any], name: str = "") -> None:
        super().restore(module, attributes, name)
        heads = attributes.get("_torchcompress_heads")
        if heads is not None:
            self._config(module, list(heads), name)

    @staticmethod
    def _config(module: nn.Module, heads: list[int], name: str) -> None:
        config = getattr(module, "config", None)
        total = getattr(config, "num_attention_heads", None)
        layer = getattr(module, "_torchcompress_layer", None)
        layer = layer if isinstance(layer, int) else _layer_index(module, name)
        if config is None or not isinstance(total, int) or layer is None:
            return
        pruned = sorted(set(range(total)) - set(heads))
        record = {int(k): list(v) for k, v in (getattr(config, "pruned_heads", None) or {}).items()}
        if pruned:
            record[layer] = pruned
        else:
            record.pop(layer, None)
        config.pruned_heads = record


HANDLERS.add("multihead_attention", MultiheadAttentionHandler())
HANDLERS.add("hf_self_attention", HFSelfAttentionHandler())
