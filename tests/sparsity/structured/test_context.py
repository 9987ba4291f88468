"""The labeling context of one recorded forward: keys, labels, protected modules, costs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchcompress.sparsity.structured import Context


def test_keys_of_parameters_tied_tensors_and_pseudo_attributes() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    model[1].weight = model[0].weight  # tied: one tensor, one name
    ctx = Context(model)
    assert ctx.key(model[0], "0", "weight") == "0.weight"
    assert ctx.key(model[1], "1", "weight") == "0.weight"
    assert ctx.key(model[1], "1", "bias") == "1.bias"
    assert ctx.key(model[1], "1", "#features") == "1#features"
    assert ctx.param_name(torch.zeros(1)) is None


def test_labels_of_tensors_and_parameters() -> None:
    lin = nn.Linear(3, 5)
    ctx = Context(lin)
    x = torch.zeros(2, 7, 3)
    ids = ctx.graph.fresh(3)
    ctx.set_labels(x, {-1: ids})
    assert list(ctx.labels(x)) == [2] and ctx.label(x, 2).tolist() == ids.tolist()
    with pytest.raises(ValueError, match="label of 2 ids for dimension 1 of size 7"):
        ctx.set_labels(x, {1: ctx.graph.fresh(2)})
    ctx.set_label(x, 2, None)
    assert ctx.labels(x) == {}
    # a parameter's dimensions get passive ids (bound under its name), never set labels
    w = ctx.labels(lin.weight)
    assert sorted(w) == [0, 1] and ctx.graph.bound("weight", 0) is w[0]
    assert not any(int(i) in ctx.graph.active for i in w[0])
    ctx.set_labels(lin.weight, {0: ctx.graph.fresh(5)})
    assert ctx.labels(lin.weight)[0] is w[0]
    assert [len(v) for v in ctx.labeled([x, lin.weight])] == [5, 3]


def test_produced_ids_and_costs() -> None:
    ctx = Context(nn.Identity())
    ctx.graph.fresh(4)
    ctx.start_call()
    new = ctx.graph.fresh(3)
    assert ctx.produced().tolist() == new.tolist() == [4, 5, 6]
    ctx.add_cost(0, [new])  # nothing to count
    ctx.add_cost(12, [new, None])
    assert len(ctx.costs) == 1 and ctx.costs[0][0] == 12 and len(ctx.costs[0][1]) == 1
    ctx.where = "block.fc"
    assert ctx.reason("kept") == "kept (in 'block.fc')"
    assert isinstance(ctx.produced(), np.ndarray)
