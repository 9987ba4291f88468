"""The op rules: how channel labels flow through recorded ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.batches import example_batch
from torchcompress.sparsity.structured import analyse
from torchcompress.sparsity.structured.context import Context
from torchcompress.sparsity.structured.rules import apply_rule, event_arg
from torchcompress.tracing import Listener, Recorder

from .conftest import run, zero_units


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


class Reduces(nn.Module):
    """Two layers' channels reduced by the op under test; a third path reads them untouched."""

    def __init__(self, op) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)  # (B, 6)
        return self.head(h) + self.op(h).unsqueeze(-1)


@pytest.mark.parametrize(
    ("op", "prunable"),
    [
        (lambda h: h.sum(-1), True),  # a zero channel adds nothing to a sum
        (lambda h: torch.linalg.vector_norm(h, dim=-1), True),
        (lambda h: h.mean(-1), False),  # removing a channel changes the count
        (lambda h: h.amax(-1), False),
        (lambda h: h.var(-1), False),
        (lambda h: h.logsumexp(-1), False),
        (lambda h: h.mean(), False),  # over everything
        (lambda h: h.softmax(-1).sum(-1), False),  # exp(0) still counts
        (lambda h: h.cumsum(-1)[:, -1], False),
        (lambda h: torch.nn.functional.normalize(h, dim=-1).sum(-1), True),
    ],
)
def test_reductions_over_channels(op, prunable: bool, seeded) -> None:
    m = Reduces(op).eval()
    x = torch.randn(3, 4)
    a = analyse(m, example_batch(m, x))
    assert bool(a.groups) == prunable
    if prunable:  # exact on zeroed channels
        zero_units(m, x)
        ref = run(m, x)
        tc.prune_channels(m, x, 0.5, criterion="l1")
        assert m.a.out_features == 3
        torch.testing.assert_close(run(m, x), ref, rtol=1e-4, atol=1e-5)
    else:
        assert any(
            "reduced together by" in why or "counted along by" in why for why in a.fixed.values()
        )


def test_softmax_over_tokens_leaves_channels_prunable() -> None:
    class Pool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):  # (B, T, 4)
            h = self.a(x)
            w = h.sum(-1, keepdim=True).softmax(1)  # attention pooling over the tokens
            return self.head((w * h).sum(1))

    m = Pool().eval()
    a = analyse(m, example_batch(m, torch.randn(2, 5, 4)))
    assert [(g.name, len(g.units)) for g in a.groups] == [("a", 6)]


def test_apply_rule_says_when_no_rule_applies() -> None:
    events = []

    class Keep(Listener):
        def on_op(self, event) -> None:
            events.append(event)

    x = torch.randn(2, 3)
    with Recorder(nn.Identity(), [Keep()]):
        torch.einsum("bi->ib", x)  # in no category
        x + 1
    ctx = Context(nn.Identity())
    by_name = {e.func_name: e for e in events}
    assert apply_rule(ctx, by_name["einsum"]) is False
    assert apply_rule(ctx, by_name["add"]) is True
    assert event_arg(by_name["einsum"], 0, "equation") == "bi->ib"
    assert event_arg(by_name["einsum"], 5, "missing", 7) == 7
