"""Helpers of the channel-pruning tests."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from torchcompress.batches import example_batch
from torchcompress.sparsity.structured import analyse
from torchcompress.sparsity.structured.importance import member_tensor


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
