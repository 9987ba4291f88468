"""Rules of the ops that rearrange dimensions: ``index``, ``reshape`` and ``permute``.

They label the outputs of indexing, views and transposes from their input's labels (see
:mod:`~torchcompress.sparsity.structured.rules` for the registry and the other categories):

- ``index``: a full slice passes a channel dimension through; an int, a partial slice or a tensor
  index on it keeps its channels (the model's code picks channels by position);
- ``reshape``: :func:`reshape_labels`: a merge repeats each channel over its block (flatten into a
  Linear); a split makes each outer index one block (heads); ``expand`` broadcasts;
- ``permute``: labels follow the dimensions (``permute``, ``transpose``, ``.T``, ``.mT``,
  ``movedim``); a rearrangement it cannot read keeps the channels.

Importing this module registers the three rules on :data:`~torchcompress.sparsity.structured.rules.
OP_RULES` (the builder does).

Example:
    >>> from torch import nn
    >>> from torchcompress.sparsity.structured.context import Context
    >>> ctx = Context(nn.Identity())
    >>> ids = ctx.graph.fresh(2)
    >>> out = reshape_labels(ctx, {1: ids}, (1, 2, 3), (1, 6), "flatten")
    >>> out[1].tolist()  # each channel repeated over its block of 3
    [0, 0, 0, 1, 1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...tracing import INDEX, OPS, PERMUTE, RESHAPE, OpEvent
from .context import Context, Labels
from .rules import OP_RULES, event_arg, op_reason

__all__ = ["index_rule", "permutation", "permute_rule", "reshape_labels", "reshape_rule"]


def _consumes(item: Any) -> int:
    if isinstance(item, Tensor) and item.dtype == torch.bool:
        return item.dim()
    return 1


def _full(s: slice, size: int) -> bool:
    return range(*s.indices(size)) == range(size)


def index_rule(ctx: Context, event: OpEvent) -> None:
    """``index``: full slices pass a channel dimension; ints, partial slices and tensors keep it."""
    x = event_arg(event, 0, "input")
    if not isinstance(x, Tensor) or not event.outputs:
        return
    out = event.outputs[0]
    name = event.func_name
    labels = ctx.labels(x)
    why = op_reason(ctx, event, "channels picked by")
    if name in ("narrow", "select", "index_select"):
        dim = int(event_arg(event, 1, "dim")) % x.dim()
        ids = labels.get(dim)
        full = name == "narrow" and int(event_arg(event, 3, "length")) == int(x.shape[dim])
        if ids is not None and not full:
            ctx.graph.fix(ids, why)
        res: Labels = {}
        for d, v in labels.items():
            if d == dim and name == "select":
                continue
            if d == dim and not full:
                continue
            res[d if name != "select" or d < dim else d - 1] = v
        ctx.set_labels(out, res)
        return
    idx = event_arg(event, 1, "idx")
    items = list(idx) if isinstance(idx, tuple) else [idx]
    consuming = sum(_consumes(it) for it in items if it is not None and it is not Ellipsis)
    fill = [slice(None)] * max(0, x.dim() - consuming)
    if any(it is Ellipsis for it in items):
        pos = next(i for i, it in enumerate(items) if it is Ellipsis)
        items = items[:pos] + fill + items[pos + 1 :]
    else:
        items = items + fill
    advanced = any(isinstance(it, Tensor | list | tuple) for it in items)
    res = {}
    if not advanced:
        i_d = o_d = 0
        for it in items:
            if it is None:
                o_d += 1
                continue
            ids = labels.get(i_d)
            if isinstance(it, slice):
                if ids is not None:
                    if _full(it, int(x.shape[i_d])):
                        res[o_d] = ids
                    else:
                        ctx.graph.fix(ids, why)
                        res[o_d] = ids[it]
                i_d += 1
                o_d += 1
            else:  # an int
                if ids is not None:
                    ctx.graph.fix(ids, why)
                i_d += 1
    else:
        trailing = 0
        for it in reversed(items):
            if isinstance(it, slice) and it == slice(None):
                trailing += 1
            else:
                break
        for d, v in labels.items():
            k = x.dim() - d
            if k <= trailing and out.dim() - k >= 0:
                res[out.dim() - k] = v
            else:
                ctx.graph.fix(v, why)
    ctx.set_labels(out, res)


def reshape_labels(
    ctx: Context, labels: Labels, src: Sequence[int], dst: Sequence[int], why: str
) -> Labels:
    """Labels of a reshape of a tensor of shape ``src`` labeled ``labels`` into shape ``dst``.

    The shapes are cut into groups of dimensions with equal products; in a group with one labeled
    dimension the ids are laid out over the group and read back in the new shape: a dimension
    along which only they vary takes them (a merge repeats each id over its block); when they vary
    along several (a split), each index of the outermost one becomes one block (its ids one unit).
    A group with two labeled dimensions keeps its channels.
    """
    out: Labels = {}
    i = j = 0
    a, b = list(src), list(dst)
    while i < len(a) or j < len(b):
        if i < len(a) and a[i] == 1:
            i += 1
            continue
        if j < len(b) and b[j] == 1:
            j += 1
            continue
        if i >= len(a) or j >= len(b):
            break
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb *= b[j]
                j += 1
            else:
                return {}
        lab = [d for d in gi if d in labels]
        if not lab:
            continue
        if len(lab) > 1:
            for d in lab:
                ctx.graph.fix(labels[d], why)
            continue
        d = lab[0]
        shape_in = [a[k] for k in gi]
        arr = labels[d].reshape([a[d] if k == d else 1 for k in gi])
        arr = np.broadcast_to(arr, shape_in).reshape([b[k] for k in gj])
        varying = [
            p
            for p in range(arr.ndim)
            if arr.shape[p] > 1 and bool(np.any(arr != arr.take([0], axis=p)))
        ]
        if not varying:
            continue
        p0 = varying[0]
        moved = np.moveaxis(arr, p0, 0).reshape(arr.shape[p0], -1)
        if len(varying) > 1:
            for row in moved:
                ctx.graph.union_all(np.unique(row))
        out[gj[p0]] = moved[:, 0].copy()
    return out


def reshape_rule(ctx: Context, event: OpEvent) -> None:
    """``reshape``: labels through views (:func:`reshape_labels`) and ``expand`` (broadcast)."""
    x = event_arg(event, 0, "input")
    if not isinstance(x, Tensor) or not event.outputs:
        return
    out = event.outputs[0]
    labels = ctx.labels(x)
    if not labels:
        return
    if out.numel() != x.numel():  # expand: broadcasting
        nd = out.dim()
        res = {
            d + nd - x.dim(): v
            for d, v in labels.items()
            if int(x.shape[d]) == int(out.shape[d + nd - x.dim()])
        }
        ctx.set_labels(out, res)
        return
    why = op_reason(ctx, event, "channels mixed by")
    ctx.set_labels(out, reshape_labels(ctx, labels, tuple(x.shape), tuple(out.shape), why))


def permutation(event: OpEvent, nd: int) -> list[int] | None:
    """The permutation of an op on ``nd`` dimensions: output dim ``j`` is input dim ``perm[j]``;
    ``None`` when it is not one this rule reads."""
    name = event.func_name
    if name == "__get__" or event.func is getattr:
        attr = OPS.normalise(event.func, event.args, event.kwargs).arg(1, "name")
        perm = list(range(nd))
        if attr == "T":
            return perm[::-1]
        if attr == "mT" and nd >= 2:
            perm[-1], perm[-2] = perm[-2], perm[-1]
            return perm
        return None
    perm = list(range(nd))
    if name == "permute":
        dims = (
            event.args[1]
            if len(event.args) == 2 and isinstance(event.args[1], Sequence)
            else event.args[1:]
        )
        dims = event.kwargs.get("dims", dims)
        return [int(d) % nd for d in dims]
    if name in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = int(event_arg(event, 1, "dim0")) % nd, int(event_arg(event, 2, "dim1")) % nd
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if name == "t":
        return perm[::-1] if nd == 2 else perm
    if name in ("movedim", "moveaxis"):
        src, dst = event_arg(event, 1, "source"), event_arg(event, 2, "destination")
        src = [int(s) % nd for s in (src if isinstance(src, Sequence) else [src])]
        dst = [int(s) % nd for s in (dst if isinstance(dst, Sequence) else [dst])]
        rest = [d for d in range(nd) if d not in src]
        result: list[int | None] = [None] * nd
        for s, t in zip(src, dst):
            result[t] = s
        it = iter(rest)
        return [r if r is not None else next(it) for r in result]
    return None


def permute_rule(ctx: Context, event: OpEvent) -> None:
    """``permute``: labels follow the dimensions; an unread rearrangement keeps the channels."""
    x = event_arg(event, 0, "input")
    if not isinstance(x, Tensor) or not event.outputs:
        return
    labels = ctx.labels(x)
    perm = permutation(event, x.dim())
    if perm is None:
        for v in labels.values():
            ctx.graph.fix(v, op_reason(ctx, event, "dimensions moved by"))
        return
    ctx.set_labels(event.outputs[0], {j: labels[p] for j, p in enumerate(perm) if p in labels})


OP_RULES.add(INDEX, index_rule)
OP_RULES.add(PERMUTE, permute_rule)
OP_RULES.add(RESHAPE, reshape_rule)
