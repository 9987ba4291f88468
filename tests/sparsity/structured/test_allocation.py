"""Allocation of removed units per group, the cost model and the target search."""

from __future__ import annotations

import torch

import torchcompress as tc
from torchcompress.batches import example_batch
from torchcompress.sparsity.structured import (
    allocate,
    analyse,
)
from torchcompress.testing import TinyCNN


def test_costs_match_the_profile() -> None:
    m = TinyCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    a = analyse(m, example_batch(m, x))
    terms = sum(macs for macs, _ in a.costs)
    assert terms == tc.profile(m, x).total_macs


def test_allocate_local_floor_and_order() -> None:
    m = TinyCNN().eval()
    a = analyse(m, tc.batches.example_batch(m, torch.randn(1, 3, 8, 8)))
    scores = [torch.arange(len(g.units), 0, -1, dtype=torch.float64) for g in a.groups]
    removed = allocate(a.groups, scores, 0.3, scope="local", max_ratio=0.9, round_to=None)
    assert removed == [[7, 6], [15, 14, 13, 12]]  # floor(0.3 n), lowest scores first
