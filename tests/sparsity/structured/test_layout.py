"""Index, reshape and permute rules (layout.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import example_batch
from torchcompress.sparsity import channel_report
from torchcompress.sparsity.structured import analyse
from torchcompress.sparsity.structured.context import Context
from torchcompress.sparsity.structured.layout import permutation, reshape_labels
from torchcompress.tracing import Listener, Recorder

from .conftest import run, zero_units


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


class ChannelsLast(nn.Module):
    """Channels moved last and back: permute, movedim, flatten + transpose, ``.mT``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.lin = nn.Linear(8, 6)
        self.mix = nn.Linear(5, 5)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.conv(x).permute(0, 2, 3, 1)  # (B, H, W, 8)
        h = self.lin(h).movedim(-1, 1)  # (B, 6, H, W)
        h = h.flatten(2).transpose(1, 2)  # (B, HW, 6)
        h = self.mix(h[:, :5].mT).mT  # tokens mixed: channels are a batch dimension here
        return self.head(h.mean(1))


def test_permutes_follow_the_channels_exactly(seeded) -> None:
    m = ChannelsLast().eval()
    x = torch.randn(2, 3, 4, 4)
    a = analyse(m, example_batch(m, x))
    assert [(g.name, len(g.units)) for g in a.groups] == [("conv", 8), ("lin", 6)]
    zeroed = zero_units(m, x)
    ref = run(m, x)
    tc.prune_channels(m, x, 0.5, criterion="l1")
    assert [g.removed_units for g in channel_report(m).groups] == [zeroed["conv"], zeroed["lin"]]
    assert (m.conv.out_channels, m.lin.in_features, m.lin.out_features) == (4, 4, 3)
    assert m.head.in_features == 3 and m.mix.in_features == 5  # tokens are not channels
    torch.testing.assert_close(run(m, x), ref, rtol=1e-4, atol=1e-5)


def test_index_full_slices_pass_and_partial_ones_keep() -> None:
    class Picks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(4, 8)
            self.head = nn.Linear(12, 2)

        def forward(self, x):
            full = self.a(x)[..., :]  # every channel: follows
            part = self.b(x)[:, :4]  # the first four, by position: b keeps its channels
            return self.head(torch.cat([full, part], -1))

    m = Picks().eval()
    a = analyse(m, example_batch(m, torch.randn(3, 4)))
    assert [g.name for g in a.groups] == ["a"]
    assert any(why.startswith("channels picked by `__getitem__`") for why in a.fixed.values())


def test_expand_and_unsqueeze_keep_labels(seeded) -> None:
    class Expand(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            h = self.lin(x).unsqueeze(1).expand(-1, 3, -1)  # (B, 3, 6)
            return self.head(h.sum(1))

    m = Expand().eval()
    x = torch.randn(3, 4)
    zero_units(m, x)
    ref = run(m, x)
    tc.prune_channels(m, x, 0.5, criterion="l1")
    assert m.lin.out_features == m.head.in_features == 3
    torch.testing.assert_close(run(m, x), ref, rtol=1e-4, atol=1e-5)


def test_permutation_reads_every_spelling() -> None:
    x = torch.zeros(2, 3, 4)
    events = {}

    class Keep(Listener):
        def on_op(self, event) -> None:
            events.setdefault(event.func_name, event)

    with Recorder(nn.Identity(), [Keep()]):
        x.permute(2, 0, 1)
        x.transpose(0, 2)
        x.movedim(0, -1)
        _ = x.mT
    got = {n: permutation(e, 3) for n, e in events.items() if n != "__get__"}
    assert got == {"permute": [2, 0, 1], "transpose": [2, 1, 0], "movedim": [1, 2, 0]}
    assert permutation(events["__get__"], 3) == [0, 2, 1]
