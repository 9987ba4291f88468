"""Index, reshape and permute rules (layout.py)."""

from __future__ import annotations

import numpy as np
from torch import nn

from torchcompress.sparsity.structured.context import Context
from torchcompress.sparsity.structured.layout import reshape_labels


def test_reshape_rules() -> None:
    ctx = Context(nn.Linear(1, 1))
    ids = ctx.graph.fresh(4)
    # flatten (C=4, 2, 2) -> 16: each id repeated over its block
    out = reshape_labels(ctx, {1: ids}, (2, 4, 2, 2), (2, 16), "x")
    assert out[1].tolist() == np.repeat(ids, 4).tolist()
    # split 4 -> (2 heads, 2): each head one block, the head dimension labeled
    heads = ctx.graph.fresh(4)
    out = reshape_labels(ctx, {2: heads}, (1, 3, 4), (1, 3, 2, 2), "x")
    assert list(out) == [2] and len(out[2]) == 2
    assert ctx.graph.find(int(heads[0])) == ctx.graph.find(int(heads[1]))
    assert ctx.graph.find(int(heads[1])) != ctx.graph.find(int(heads[2]))
    # two labeled dimensions merged: kept
    c2 = ctx.graph.fresh(2)
    assert reshape_labels(ctx, {0: c2, 1: ids}, (2, 4), (8,), "merged") == {}
    assert ctx.graph.fixed[int(c2[0])] == "merged"
