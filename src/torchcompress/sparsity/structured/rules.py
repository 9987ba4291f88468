"""How channels flow through the ops of a recorded forward: one rule per op category (:data:`OP_RULES`).

The categories are those of :data:`torchcompress.tracing.OPS`; a rule reads the labels of the op's
input tensors from the :class:`~torchcompress.sparsity.structured.context.Context` and labels its
outputs:

=================  ==============================================================================
category           rule
=================  ==============================================================================
like               ``zeros_like`` and friends: shaped like the input, labels too
factory            ``x.new_zeros(size)``: a new size, no labels (the input gives only the dtype)
elementwise, ...   broadcasting: channels meeting in one output dimension become one (a residual
                   add); meeting a dimension of fixed size (a constant, an unlabeled tensor) they
                   are kept
concat             the inputs' ids side by side (offsets into the consumer); unlabeled parts kept
stack              a new, unlabeled dimension
split              ``chunk`` into equal pieces: the pieces are pruned alike; explicit split sizes
                   (written in the model's code) keep the channels
index              full slices pass; an int, a partial slice or a tensor index on a channel
                   dimension keeps its channels
reshape            dimension groups of equal size: a merge repeats each channel over its block
                   (flatten into a Linear), a split makes each outer index one block (heads)
permute            labels follow the dimensions
reduce             reduced dimensions drop out; a reduction other than a sum or a norm (``mean``,
                   ``amax``, ``var``, ...) over a channel dimension keeps its channels (removing
                   one, even of zeros, would change the result)
along_dim          softmax, normalize, cumsum: shape kept, labels too; channels along the
                   dimension of a softmax or a cumulative op are kept (they count)
pooling, upsample  the leading (batch, channel) dimensions pass; spatial ones are not channels
pad                padding a channel dimension keeps its channels
matmul             batch dimensions broadcast, the contracted dimensions become one
linear             ``F.linear``: outputs are the weight's rows, inputs its columns
attention          ``F.scaled_dot_product_attention``: heads are batch dimensions
=================  ==============================================================================

An op in no category with a rule keeps every channel it touches. A new rule is one function
``rule(ctx, event)`` registered with ``OP_RULES.add(category, rule)`` (and the op added to that
category of ``OPS``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.tracing import OPS
    >>> sorted(c for c in OPS.of_op(torch.cat) if c in OP_RULES)
    ['concat']
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from ...registry import Registry
from ...tracing import (
    ACTIVATION,
    ALONG_DIM,
    ATTENTION,
    CAST,
    CONCAT,
    DROPOUT,
    ELEMENTWISE,
    FACTORY,
    IDENTITY,
    INDEX,
    LIKE,
    LINEAR,
    MATMUL,
    NON_TENSOR,
    PAD,
    PERMUTE,
    POOLING,
    REDUCE,
    RESHAPE,
    SPLIT,
    STACK,
    UPSAMPLE,
    OpEvent,
)
from .context import Context, Labels
from .graph import Ids

__all__ = [
    "COUNTING_ALONG_DIM",
    "OP_RULES",
    "PRIORITY",
    "ZERO_SAFE_REDUCTIONS",
    "Rule",
    "apply_rule",
    "event_arg",
    "op_reason",
]

Rule = Callable[[Context, OpEvent], None]

#: category -> rule
OP_RULES: Registry[Rule] = Registry("channel op rule")

#: the order categories are tried in (an op in several categories takes the first with a rule);
#: categories registered later come after these
PRIORITY: list[str] = [
    NON_TENSOR,
    FACTORY,
    LIKE,
    ATTENTION,
    LINEAR,
    MATMUL,
    CONCAT,
    STACK,
    SPLIT,
    INDEX,
    PERMUTE,
    RESHAPE,
    REDUCE,
    ALONG_DIM,
    POOLING,
    UPSAMPLE,
    PAD,
    ELEMENTWISE,
    ACTIVATION,
    DROPOUT,
    IDENTITY,
    CAST,
]


def apply_rule(ctx: Context, event: OpEvent) -> bool:
    """Apply the rule of the op's first category that has one; ``False`` when none has."""
    cats = event.categories
    if not cats:
        return False
    order = PRIORITY + [c for c in OP_RULES.names() if c not in PRIORITY]
    for c in order:
        if c in cats and c in OP_RULES:
            OP_RULES.get(c)(ctx, event)
            return True
    return False


# --- helpers ---------------------------------------------------------------------------------------


def event_arg(event: OpEvent, index: int, name: str, default: Any = None) -> Any:
    """The op's argument at ``index`` positionally, or by keyword ``name``; else ``default``."""
    if len(event.args) > index:
        return event.args[index]
    return event.kwargs.get(name, default)


def _fname(event: OpEvent) -> str:
    return event.func_name


def op_reason(ctx: Context, event: OpEvent, what: str) -> str:
    """Why channels stay, naming the op and where it ran (for the report)."""
    return ctx.reason(f"{what} `{_fname(event)}`")


def _align(ctx: Context, sides: Sequence[tuple[Any, int]], size: int, why: str) -> Ids | None:
    """Couple the ids of ``(tensor, dim)`` sides of one size; unlabeled sides fix the others."""
    found: list[Ids] = []
    missing = False
    for t, d in sides:
        if not isinstance(t, Tensor) or t.dim() == 0 or d < 0 or int(t.shape[d]) != size:
            continue
        ids = ctx.label(t, d)
        if ids is None:
            missing = True
        else:
            found.append(ids)
    if not found:
        return None
    if missing:
        for f in found:
            ctx.graph.fix(f, why)
        return found[0]
    for f in found[1:]:
        ctx.graph.union(found[0], f)
    return found[0]


def _broadcast(
    ctx: Context, tensors: Sequence[Any], shape: Sequence[int], why: str, skip: int | None = None
) -> Labels:
    nd = len(shape)
    out: Labels = {}
    for j in range(nd):
        if j == skip or int(shape[j]) <= 1:
            continue
        sides = [(t, j - (nd - t.dim())) for t in tensors if isinstance(t, Tensor) and t.dim()]
        ids = _align(ctx, sides, int(shape[j]), why)
        if ids is not None:
            out[j] = ids
    return out


def _set_all(
    ctx: Context, event: OpEvent, labels: Labels, shape: Sequence[int] | None = None
) -> None:
    for o in event.outputs:
        if shape is None or tuple(o.shape) == tuple(shape):
            ctx.set_labels(o, labels)


def _dims(value: Any, nd: int) -> list[int] | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [value % nd]
    if isinstance(value, Sequence):
        return [int(v) % nd for v in value]
    return None


def _fixed_fresh(ctx: Context, n: int, why: str) -> Ids:
    ids = ctx.graph.fresh(n, active=False)
    ctx.graph.fix(ids, why)
    return ids


# --- rules -------------------------------------------------------------------------------------------


def _non_tensor(ctx: Context, event: OpEvent) -> None:
    return None


def _elementwise(ctx: Context, event: OpEvent) -> None:
    if not event.outputs:
        return
    shape = tuple(event.outputs[0].shape)
    tensors = [u.tensor for u in event.inputs]
    labels = _broadcast(
        ctx, tensors, shape, op_reason(ctx, event, "combined with a tensor of fixed size by")
    )
    _set_all(ctx, event, labels, shape)


#: ops along a dimension whose every output depends on how many channels there are along it (a
#: zero channel still adds ``exp(0)`` to a softmax, shifts a cumulative sum's positions): channels
#: along that dimension stay; ``normalize`` is not here (a zero adds nothing to a norm)
COUNTING_ALONG_DIM = frozenset(
    {"softmax", "log_softmax", "softmin", "cumsum", "cumprod", "logcumsumexp"}
)

#: reductions that a removed channel of zeros leaves unchanged; any other reduction (``mean``,
#: ``var``, ``amax``, ``prod``, ``logsumexp``, ...) over a channel dimension keeps its channels
ZERO_SAFE_REDUCTIONS = frozenset({"sum", "nansum", "norm", "vector_norm", "linalg_vector_norm"})


def _along_dim(ctx: Context, event: OpEvent) -> None:
    x = event_arg(event, 0, "input")
    if not isinstance(x, Tensor):
        return
    labels = ctx.labels(x)
    if event.func_name in COUNTING_ALONG_DIM and x.dim():
        dims = _dims(event_arg(event, 1, "dim"), x.dim()) or list(range(x.dim()))
        for d in dims:
            if d in labels:
                ctx.graph.fix(labels[d], op_reason(ctx, event, "channels counted along by"))
    _set_all(ctx, event, labels, tuple(x.shape))


def _concat(ctx: Context, event: OpEvent) -> None:
    tensors = [t for t in (event_arg(event, 0, "tensors") or []) if isinstance(t, Tensor)]
    if not event.outputs or not tensors:
        return
    out = event.outputs[0]
    dim = int(event_arg(event, 1, "dim", 0)) % out.dim()
    tensors = [t for t in tensors if t.dim() == out.dim()]  # cat skips empty 1-D tensors
    why = op_reason(ctx, event, "concatenated with a tensor of fixed size by")
    labels = _broadcast(ctx, tensors, tuple(out.shape), why, skip=dim)
    parts = [ctx.label(t, dim) for t in tensors]
    if any(p is not None for p in parts):
        labels[dim] = np.concatenate(
            [
                p if p is not None else _fixed_fresh(ctx, int(t.shape[dim]), why)
                for p, t in zip(parts, tensors)
            ]
        )
    ctx.set_labels(out, labels)


def _stack(ctx: Context, event: OpEvent) -> None:
    tensors = [t for t in (event_arg(event, 0, "tensors") or []) if isinstance(t, Tensor)]
    if not event.outputs or not tensors:
        return
    out = event.outputs[0]
    new = int(event_arg(event, 1, "dim", 0)) % out.dim()
    why = op_reason(ctx, event, "stacked with a tensor of fixed size by")
    labels: Labels = {}
    for j in range(out.dim()):
        if j == new:
            continue
        k = j if j < new else j - 1
        ids = _align(ctx, [(t, k) for t in tensors], int(out.shape[j]), why)
        if ids is not None:
            labels[j] = ids
    ctx.set_labels(out, labels)


def _split(ctx: Context, event: OpEvent) -> None:
    x = event_arg(event, 0, "input")
    if not isinstance(x, Tensor) or not event.outputs:
        return
    name = _fname(event)
    unbind = name == "unbind"
    default_dim_index = 1 if unbind else 2
    dim = int(event_arg(event, default_dim_index, "dim", 0)) % x.dim()
    labels = ctx.labels(x)
    ids = labels.get(dim)
    by_count = name == "chunk" or (
        name == "tensor_split" and isinstance(event_arg(event, 1, "sections"), int)
    )
    outs = event.outputs
    if ids is not None and unbind:
        ctx.graph.fix(ids, op_reason(ctx, event, "channels taken apart one by one by"))
    elif ids is not None:
        sizes = [int(o.shape[dim]) for o in outs]
        pieces = np.split(ids, np.cumsum(sizes)[:-1])
        if by_count and len(set(sizes)) == 1:
            for p in pieces[1:]:
                ctx.graph.union(pieces[0], p)
        else:
            ctx.graph.fix(
                ids, op_reason(ctx, event, "split at sizes written in the model's code by")
            )
    for i, o in enumerate(outs):
        lab: Labels = {}
        for d, v in labels.items():
            if d == dim:
                if not unbind:
                    lab[d] = np.split(v, np.cumsum([int(q.shape[dim]) for q in outs])[:-1])[i]
            elif unbind:
                lab[d if d < dim else d - 1] = v
            else:
                lab[d] = v
        ctx.set_labels(o, lab)


def _reduce(ctx: Context, event: OpEvent) -> None:
    x = event_arg(event, 0, "input")
    if not isinstance(x, Tensor) or not event.outputs or x.dim() == 0:
        return
    labels = ctx.labels(x)
    pos = (
        2 if _fname(event) in ("norm", "vector_norm", "linalg_vector_norm") else 1
    )  # norm(x, p, dim, ...)
    dim = event.kwargs.get("dim", event.args[pos] if len(event.args) > pos else None)
    dims = _dims(dim, x.dim())
    if _fname(event) not in ZERO_SAFE_REDUCTIONS:
        for d in range(x.dim()) if dims is None else dims:
            if d in labels:
                ctx.graph.fix(labels[d], op_reason(ctx, event, "channels reduced together by"))
    if dims is None:
        return
    kept = [d for d in range(x.dim()) if d not in dims]
    for o in event.outputs:
        keepdim = o.dim() == x.dim()
        res = {(d if keepdim else kept.index(d)): v for d, v in labels.items() if d in kept}
        ctx.set_labels(o, res)


def _spatial(ctx: Context, event: OpEvent) -> None:
    x = event_arg(event, 0, "input")
    if not isinstance(x, Tensor) or not event.outputs:
        return
    m = re.search(r"([123])d", _fname(event))
    k = int(m.group(1)) if m else max(0, x.dim() - 2)
    lead = x.dim() - k
    labels = ctx.labels(x)
    res = {}
    for d, v in labels.items():
        if d < lead:
            res[d] = v
        else:
            ctx.graph.fix(v, op_reason(ctx, event, "channels pooled together by"))
    for o in event.outputs:
        if o.dim() == x.dim():
            ctx.set_labels(o, res)


def _pad(ctx: Context, event: OpEvent) -> None:
    x = event_arg(event, 0, "input")
    if not isinstance(x, Tensor) or not event.outputs:
        return
    pad = list(event_arg(event, 1, "pad") or [])
    labels = ctx.labels(x)
    why = op_reason(ctx, event, "channels padded by")
    res = dict(labels)
    for i in range(len(pad) // 2):
        d = x.dim() - 1 - i
        lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
        if d in res and (lo or hi):
            ctx.graph.fix(res[d], why)
            if lo >= 0 and hi >= 0:
                res[d] = np.concatenate(
                    [_fixed_fresh(ctx, lo, why), res[d], _fixed_fresh(ctx, hi, why)]
                )
            else:
                del res[d]
    ctx.set_labels(event.outputs[0], res)


def _matmul(ctx: Context, event: OpEvent) -> None:
    a, b = event_arg(event, 0, "input"), event_arg(event, 1, "other")
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or not event.outputs:
        return
    out = event.outputs[0]
    if a.dim() < 2 or b.dim() < 2:
        for v in ctx.labeled([a, b]):
            ctx.graph.fix(v, op_reason(ctx, event, "vector product"))
        return
    nb = out.dim() - 2
    why = op_reason(ctx, event, "multiplied with a tensor of fixed size by")
    res: Labels = {}
    for j in range(nb):
        sides = [(a, j - (nb - (a.dim() - 2))), (b, j - (nb - (b.dim() - 2)))]
        ids = _align(ctx, sides, int(out.shape[j]), why)
        if ids is not None:
            res[j] = ids
    contracted_a, contracted_b = ctx.label(a, -1), ctx.label(b, -2)
    ctx.graph.tie(contracted_a, contracted_b, why)
    for d, src in ((nb, ctx.label(a, -2)), (nb + 1, ctx.label(b, -1))):
        if src is not None:
            res[d] = src
    ctx.set_labels(out, res)
    ctx.add_cost(int(out.numel()) * int(a.shape[-1]), [*res.values(), contracted_a])


def _linear(ctx: Context, event: OpEvent) -> None:
    x, w, bias = (
        event_arg(event, 0, "input"),
        event_arg(event, 1, "weight"),
        event_arg(event, 2, "bias"),
    )
    if not (isinstance(x, Tensor) and isinstance(w, Tensor)) or not event.outputs:
        return
    out = event.outputs[0]
    why = op_reason(ctx, event, "multiplied with a weight of fixed size by")
    labels = {d: v for d, v in ctx.labels(x).items() if d < x.dim() - 1}
    inner = ctx.label(x, -1)
    cols = ctx.label(w, 1) if w.dim() == 2 else None
    ctx.graph.tie(inner, cols, why)
    rows = ctx.label(w, 0) if w.dim() == 2 else None
    if isinstance(bias, Tensor) and rows is not None and bias.dim() == 1:
        ctx.graph.tie(rows, ctx.label(bias, 0), why)
    if rows is not None:
        labels[out.dim() - 1] = rows
    ctx.set_labels(out, labels)
    ctx.add_cost(int(out.numel()) * int(w.shape[-1]), [rows, cols])


def _attention(ctx: Context, event: OpEvent) -> None:
    q, k, v = event_arg(event, 0, "query"), event_arg(event, 1, "key"), event_arg(event, 2, "value")
    if not all(isinstance(t, Tensor) for t in (q, k, v)) or not event.outputs:
        return
    out = event.outputs[0]
    nb = out.dim() - 2
    why = op_reason(ctx, event, "attention over a tensor of fixed size in")
    res: Labels = {}
    for j in range(nb):
        sides = [(t, j - (nb - (t.dim() - 2))) for t in (q, k, v)]
        ids = _align(ctx, sides, int(out.shape[j]), why)
        if ids is not None:
            res[j] = ids
    ctx.graph.tie(ctx.label(q, -1), ctx.label(k, -1), why)
    ev = ctx.label(v, -1)
    if ev is not None:
        res[out.dim() - 1] = ev
    mask = event_arg(event, 3, "attn_mask")
    if isinstance(mask, Tensor):
        for m in ctx.labeled([mask]):
            ctx.graph.fix(m, why)
    ctx.set_labels(out, res)
    batch = math.prod(int(s) for s in out.shape[:-2])
    lq, s = int(q.shape[-2]), int(k.shape[-2])
    heads = [res[j] for j in range(nb) if j in res]
    ctx.add_cost(batch * lq * s * int(q.shape[-1]), [*heads, ctx.label(q, -1)])
    ctx.add_cost(batch * lq * s * int(v.shape[-1]), [*heads, ev])


OP_RULES.add(NON_TENSOR, _non_tensor)
OP_RULES.add(FACTORY, _non_tensor)
OP_RULES.add(LIKE, _along_dim)
OP_RULES.add(ATTENTION, _attention)
OP_RULES.add(LINEAR, _linear)
OP_RULES.add(MATMUL, _matmul)
OP_RULES.add(CONCAT, _concat)
OP_RULES.add(STACK, _stack)
OP_RULES.add(SPLIT, _split)
OP_RULES.add(REDUCE, _reduce)
OP_RULES.add(ALONG_DIM, _along_dim)
OP_RULES.add(POOLING, _spatial)
OP_RULES.add(UPSAMPLE, _spatial)
OP_RULES.add(PAD, _pad)
for _c in (ELEMENTWISE, ACTIVATION, DROPOUT, IDENTITY, CAST):
    OP_RULES.add(_c, _elementwise)
