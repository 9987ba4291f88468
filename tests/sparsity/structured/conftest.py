"""Helpers of the channel-pruning tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import example_batch
from torchcompress.sparsity.structured import analyse
from torchcompress.sparsity.structured.importance import member_tensor
from torchcompress.testing import MixedConvNet

from .models import MHANet, NormNet, TinyTransformer

#: a CIFAR-sized example batch
X = torch.randn(2, 3, 8, 8)


def zero_units(model: nn.Module, example: Any, every: int = 2) -> dict[str, list[int]]:
    """Zero every slice of every ``every``-th unit (1, 3, ...) of each prunable group.

    Returns group name -> the zeroed unit indices. The zeroed channels then contribute nothing, so
    removing them must leave the outputs unchanged.
    """
    a = analyse(model, example_batch(model, example))
    zeroed = {}
    with torch.no_grad():
        for g in a.groups:
            units = list(range(1, len(g.units), every))
            for m in g.members:
                t = member_tensor(model, m)
                if t is None:
                    continue
                idx = torch.tensor(g.positions(m, units), dtype=torch.long)
                t.index_fill_(m.dim, idx, 0.0)
            zeroed[g.name] = units
    return zeroed


def run(model: nn.Module, example: Any) -> Any:
    with torch.no_grad():
        if isinstance(example, dict):
            return model(**example)
        return model(example)


@pytest.fixture
def seeded() -> None:
    torch.manual_seed(0)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def pruned(model: nn.Module, x, **kw) -> nn.Module:
    torch.manual_seed(0)
    model.eval()
    kw.setdefault("ratio", 0.5)
    return tc.prune_channels(model, x, **kw)


#: models of every handler kind, for save/load round trips
CASES = {
    "resnet20_option_a": (lambda: tc.models.create("resnet20"), lambda: torch.randn(2, 3, 32, 32)),
    "mixed_convs": (MixedConvNet, lambda: torch.randn(2, 3, 16, 16)),
    "norms_and_gate": (NormNet, lambda: torch.randn(2, 3, 8, 8)),
    "own_attention": (TinyTransformer, lambda: torch.randint(0, 20, (2, 5))),
    "multihead_attention": (MHANet, lambda: torch.randn(2, 5, 6)),
}
