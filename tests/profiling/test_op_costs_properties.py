"""The profiler's MAC formulas against a brute-force count over random shapes (hypothesis).

Brute force: with every operand all ones, each multiply-add adds exactly 1 to some output, so the
sum of the outputs counts the multiply-adds (the layers' own formulas are checked the same way in
tests/test_layers.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchcompress as tc

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Op(nn.Module):
    def __init__(self, fn, *weights: torch.Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.w = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in weights])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.w)


dims = st.integers(1, 5)


@st.composite
def ops(draw: st.DrawFn) -> tuple[Op, torch.Tensor]:
    kind = draw(st.sampled_from(["matmul", "bmm", "einsum", "linear", "conv_t", "sdpa"]))
    b, n, k, m = draw(dims), draw(dims), draw(dims), draw(dims)
    if kind == "matmul":
        batch = (b,) * draw(st.integers(0, 2))
        return Op(torch.matmul, torch.ones(k, m)), torch.ones(*batch, n, k)
    if kind == "bmm":
        return Op(torch.bmm, torch.ones(b, k, m)), torch.ones(b, n, k)
    if kind == "einsum":
        return Op(lambda x, w: torch.einsum("bnk,km->bnm", x, w), torch.ones(k, m)), torch.ones(
            b, n, k
        )
    if kind == "linear":
        return Op(lambda x, w: F.linear(x, w), torch.ones(m, k)), torch.ones(b, n, k)
    if kind == "conv_t":
        groups = draw(st.integers(1, 2))
        cin, cout, ks, stride = groups * k, groups * m, draw(dims), draw(st.integers(1, 3))
        w = torch.ones(cin, cout // groups, ks, ks)
        fn = lambda x, w: F.conv_transpose2d(x, w, stride=stride, groups=groups)  # noqa: E731
        return Op(fn, w), torch.ones(b, cin, draw(dims), draw(dims))
    heads, s = draw(dims), draw(dims)
    q = torch.ones(b, heads, n, k)
    kv = torch.ones(b, heads, s, k)
    op = Op(lambda x, kk: F.scaled_dot_product_attention(x, kk, kk), kv)
    op.brute = lambda: int(
        (q @ kv.transpose(-1, -2)).sum() + (torch.ones(b, heads, n, s) @ kv).sum()
    )
    return op, q


@SETTINGS
@given(ops())
def test_macs_equal_a_brute_force_count(case) -> None:
    op, x = case
    counted = tc.profile(op, x).total_macs
    # attention: softmax(q k^T) @ v, the two products counted with all-ones operands each
    brute = op.brute() if hasattr(op, "brute") else int(op(x).sum())
    assert counted == brute
