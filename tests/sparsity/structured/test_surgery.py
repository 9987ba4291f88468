"""Surgery: shrinking tensors and modules, and restoring the model on a failure."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import example_batch
from torchcompress.errors import (
    UnsupportedModuleError,
)
from torchcompress.sparsity.structured import analyse
from torchcompress.sparsity.structured.surgery import (
    RESIZED_ATTR,
    apply_pruning,
    keep_indices,
    transaction,
)

from .conftest import states_equal


def test_size_written_in_an_attribute_fails_cleanly_and_restores() -> None:
    class FixedHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = 2
            self.qkv = nn.Linear(8, 24)
            self.out = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).chunk(3, -1)
            q, k, v = (z.reshape(b, t, self.heads, 4).transpose(1, 2) for z in (q, k, v))
            y = (q @ k.transpose(-1, -2)).softmax(-1) @ v
            return self.head(self.out(y.transpose(1, 2).reshape(b, t, 8)).mean(1))

    m = FixedHeads().eval()
    before = copy.deepcopy(m.state_dict())
    x = torch.randn(2, 3, 8)
    with pytest.raises(UnsupportedModuleError, match="After pruning, the forward failed"):
        tc.prune_channels(m, x, 0.5)
    assert states_equal(m.state_dict(), before)
    assert m.qkv.out_features == 24 and m.qkv.weight.shape == (24, 8)
    assert m(x).shape == (2, 2)


def _linear_chain():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    return model, analyse(model, example_batch(model, torch.randn(1, 4)))


def test_keep_indices_lists_what_each_dimension_keeps() -> None:
    _model, a = _linear_chain()
    (g,) = a.groups
    sizes = {(m.key, m.dim): m.size for m in g.members}
    keep = keep_indices(a.groups, [[1, 4]], sizes)
    assert keep[("0.weight", 0)].tolist() == [0, 2, 3, 5]
    assert keep[("0.bias", 0)].tolist() == [0, 2, 3, 5]
    assert keep[("2.weight", 1)].tolist() == [0, 2, 3, 5]
    assert keep_indices(a.groups, [[]], sizes) == {}


def test_apply_pruning_slices_exactly_and_marks_the_changed_modules() -> None:
    model, a = _linear_chain()
    w0, b0, w2 = (t.detach().clone() for t in (model[0].weight, model[0].bias, model[2].weight))
    model[2].weight.requires_grad_(False)
    changed = apply_pruning(model, a.groups, [[1, 4]], a.graph.binders)
    assert changed == ["0", "2"]
    kept = torch.tensor([0, 2, 3, 5])
    assert torch.equal(model[0].weight, w0[kept]) and torch.equal(model[0].bias, b0[kept])
    assert torch.equal(model[2].weight, w2[:, kept])
    assert (model[0].out_features, model[2].in_features) == (4, 4)
    assert model[0].weight.is_contiguous() and model[2].weight.is_contiguous()
    assert model[0].weight.requires_grad and not model[2].weight.requires_grad  # flags kept
    assert all(model[i].__dict__.get(RESIZED_ATTR) for i in (0, 2))
    assert RESIZED_ATTR not in model[1].__dict__
    assert apply_pruning(model, a.groups, [[]]) == []  # nothing removed: nothing changed


def test_pruned_under_inference_mode_stays_trainable() -> None:
    model, a = _linear_chain()
    with torch.inference_mode():
        apply_pruning(model, a.groups, [[0, 1]], a.graph.binders)
    assert not model[0].weight.is_inference() and isinstance(model[0].weight, nn.Parameter)
    model(torch.randn(3, 4)).sum().backward()
    assert model[0].weight.grad.shape == (4, 4)


def test_transaction_restores_parameters_attributes_and_configs() -> None:
    model, a = _linear_chain()
    model.config = SimpleNamespace(hidden=6)
    weight = model[0].weight
    with pytest.raises(RuntimeError, match="boom"), transaction(model):
        apply_pruning(model, a.groups, [[0, 1]], a.graph.binders)
        model.config.hidden = 4
        raise RuntimeError("boom")
    assert model[0].weight is weight and model[0].out_features == 6
    assert model.config.hidden == 6 and RESIZED_ATTR not in model[0].__dict__
