"""The op rules: how channel labels flow through recorded ops."""

from __future__ import annotations

import torch
from torch import nn

from torchcompress.batches import example_batch
from torchcompress.sparsity.structured import analyse


def test_rules_follow_permute_index_reduce_and_cat() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(3, 4)
            self.c = nn.Linear(8, 2)

        def forward(self, x):  # x: (B, T, 3)
            h = torch.cat([self.a(x), self.b(x)], -1)  # (B, T, 8)
            h = h.permute(0, 2, 1)[:, :, 0]  # (B, 8): the first token
            return self.c(h.unsqueeze(-1).mean(-1))

    m = M()
    a = analyse(m, example_batch(m, torch.randn(2, 5, 3)))
    names = sorted(g.name for g in a.groups)
    assert names == ["a", "b"]
    b = next(g for g in a.groups if g.name == "b")
    assert b.units[0].slices[("c.weight", 1)] == [4]  # b's channels sit at offset 4 in c
