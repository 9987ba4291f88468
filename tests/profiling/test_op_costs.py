"""profiling.op_costs: MACs of functional ops (matmul family, einsum, attention, convs) against
hand-computed values; registering a formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError
from torchcompress.profiling import OpCost, einsum_macs, layer_macs, register_op_cost

from .conftest import Fn, _mha_expected, macs_of


def test_functional_convs_outside_modules() -> None:
    w = torch.randn(8, 3, 3, 3)
    x = torch.randn(1, 3, 10, 10)
    assert macs_of(lambda a: F.conv2d(a, w, padding=1), x) == 8 * 100 * 27
    wt = torch.randn(3, 5, 2, 2)
    assert macs_of(lambda a: F.conv_transpose2d(a, wt, stride=2), x) == 3 * 100 * 5 * 4


@pytest.mark.parametrize(
    ("fn", "shapes", "expected"),
    [
        (torch.matmul, [(3, 4), (4, 5)], 3 * 4 * 5),
        (lambda a, b: a @ b, [(2, 1, 3, 4), (6, 4, 5)], 2 * 6 * 3 * 4 * 5),  # broadcast batch
        (lambda a, b: a.matmul(b), [(4,), (4,)], 4),
        (lambda a, b: a @ b, [(7, 4), (4,)], 28),
        (lambda a, b: a @ b, [(4,), (2, 4, 3)], 24),
        (torch.bmm, [(3, 2, 4), (3, 4, 6)], 3 * 2 * 4 * 6),
        (lambda a, b: a.bmm(b), [(3, 2, 4), (3, 4, 6)], 3 * 2 * 4 * 6),
        (torch.mm, [(2, 9), (9, 3)], 54),
        (torch.mv, [(5, 6), (6,)], 30),
        (torch.dot, [(8,), (8,)], 8),
        (lambda a, b: torch.addmm(torch.zeros(3, 5), a, b), [(3, 4), (4, 5)], 60),
        (lambda a, b: torch.baddbmm(torch.zeros(2, 3, 5), a, b), [(2, 3, 4), (2, 4, 5)], 120),
        (lambda a, b: torch.addbmm(torch.zeros(3, 5), a, b), [(2, 3, 4), (2, 4, 5)], 120),
        (lambda a, b: torch.tensordot(a, b, dims=2), [(3, 4, 5), (4, 5, 6)], 3 * 6 * 20),
        (lambda a, b: torch.tensordot(a, b, dims=([0], [1])), [(4, 3), (2, 4)], 3 * 2 * 4),
        (torch.outer, [(3,), (4,)], 12),
        (lambda a, b: a.__rmatmul__(b), [(4, 5), (3, 4)], 3 * 4 * 5),
    ],
)
def test_matmul_family(fn, shapes, expected) -> None:
    inputs = [torch.randn(*s) for s in shapes]
    assert macs_of(fn, *inputs) == expected


def test_multi_dot_uses_optimal_order() -> None:
    a, b, c = torch.randn(10, 100), torch.randn(100, 5), torch.randn(5, 50)
    # (ab)c = 10*100*5 + 10*5*50 = 7,500 < a(bc) = 100*5*50 + 10*100*50 = 75,000
    assert macs_of(lambda *t: torch.linalg.multi_dot(list(t)), a, b, c) == 7500


@pytest.mark.parametrize(
    ("equation", "shapes", "expected"),
    [
        ("bhqd,bhkd->bhqk", [(2, 4, 10, 8), (2, 4, 12, 8)], 2 * 4 * 10 * 12 * 8),
        ("bhqk,bhkd->bhqd", [(2, 4, 10, 12), (2, 4, 12, 8)], 2 * 4 * 10 * 12 * 8),
        ("ij,jk", [(3, 4), (4, 5)], 60),  # implicit output
        ("...ij,...jk->...ik", [(2, 3, 3, 4), (3, 4, 5)], 2 * 3 * 3 * 4 * 5),
        ("ij,jk->k", [(3, 4), (4, 5)], 4 * 5),  # i is summed out first
        ("ij,ij->ij", [(3, 4), (3, 4)], 12),  # element-wise product: one multiply each
        ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)], 2 * 3 * 4 + 2 * 4 * 5),
        ("ii->i", [(4, 4)], 0),
        ("b i d, b j d -> b i j", [(2, 3, 4), (2, 5, 4)], 2 * 3 * 5 * 4),
    ],
)
def test_einsum_any_equation(equation, shapes, expected) -> None:
    ops = [torch.randn(*s) for s in shapes]
    assert einsum_macs(equation, *ops) == expected
    assert macs_of(lambda *t: torch.einsum(equation, *t), *ops) == expected
    torch.einsum(equation, *ops)  # the equation is valid


def test_einsum_sublist_and_list_forms() -> None:
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    assert macs_of(lambda x, y: torch.einsum(x, [0, 1], y, [1, 2], [0, 2]), a, b) == 60
    assert macs_of(lambda x, y: torch.einsum("ij,jk->ik", [x, y]), a, b) == 60


def test_sdpa_plain_gqa_and_causal() -> None:
    q = torch.randn(2, 8, 10, 16)
    kv = torch.randn(2, 8, 12, 16)
    v = torch.randn(2, 8, 12, 24)
    assert macs_of(F.scaled_dot_product_attention, q, kv, v) == 2 * 8 * 10 * 12 * (16 + 24)

    k2, v2 = torch.randn(2, 2, 12, 16), torch.randn(2, 2, 12, 16)  # 2 kv heads for 8 q heads
    gqa = tc.profile(
        Fn(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, enable_gqa=True)), (q, k2, v2)
    )
    assert gqa.total_macs == 2 * 8 * 10 * 12 * 32

    qc = torch.randn(1, 2, 6, 4)
    causal = tc.profile(
        Fn(lambda a: F.scaled_dot_product_attention(a, a, a, is_causal=True)), (qc,)
    )
    assert causal.total_macs == 1 * 2 * 6 * 6 * 8  # counted as the full matrix
    assert causal.total_effective_macs == 1 * 2 * (6 * 7 // 2) * 8  # the unmasked triangle
    assert "causal" in causal[""].note


def test_functional_multi_head_attention_forward() -> None:
    mha = nn.MultiheadAttention(8, 2)

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = mha

        def forward(self, x):
            m = self.m
            return F.multi_head_attention_forward(
                x, x, x, 8, 2, m.in_proj_weight, m.in_proj_bias, None, None, False, 0.0,
                m.out_proj.weight, m.out_proj.bias, training=False,
            )[0]  # fmt: skip

    x = torch.randn(5, 2, 8)
    # the functional call inside the model's own forward is counted, the unused module is not
    p = tc.profile(Functional(), x)
    assert p.total_macs == _mha_expected(2, 5, 5, 8, 8, 8)


class CustomAttention(nn.Module):
    """Attention written with torch.matmul, as in many research models."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d // self.h)
        y = torch.matmul(att.softmax(-1), v)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def test_custom_attention_with_matmul() -> None:
    b, n, d = 2, 10, 32
    p = tc.profile(CustomAttention(d, 4), torch.randn(b, n, d))
    qkv, out = b * n * d * 3 * d, b * n * d * d
    attention = 2 * b * n * n * d  # QKᵀ and AV over all heads
    assert p["qkv"].macs == qkv and p["out"].macs == out
    assert p[""].macs == attention  # the matmuls are attributed to the module that ran them
    assert p.total_macs == qkv + out + attention


def test_register_op_cost_extends_the_counter() -> None:
    class Dist(nn.Module):
        def forward(self, x, y):
            return torch.cdist(x, y)

    x, y = torch.randn(5, 3), torch.randn(7, 3)
    assert tc.profile(Dist(), (x, y)).total_macs == 0
    register_op_cost(torch.cdist)(lambda a, k, out, d: OpCost(out.numel() * a[0].shape[-1]))
    try:
        assert tc.profile(Dist(), (x, y)).total_macs == 5 * 7 * 3
    finally:
        from torchcompress.profiling.op_costs import _OPS

        _OPS.pop(torch.cdist, None)


def test_layer_macs_is_the_one_dense_formula() -> None:
    x = torch.randn(2, 5, 4)
    lin = nn.Linear(4, 3)
    assert layer_macs("linear", lin.weight.shape, x, lin(x)) == 2 * 5 * 4 * 3
    # Hugging Face Conv1D stores the weight (in, out): the count of the Linear it stands for
    assert layer_macs("hf_conv1d", lin.weight.t().shape, x, None) == 2 * 5 * 4 * 3
    conv = nn.Conv2d(4, 6, 3, groups=2)
    xc = torch.randn(1, 4, 5, 5)
    assert layer_macs("conv", conv.weight.shape, xc, conv(xc)) == 6 * 3 * 3 * (4 // 2) * 9
    ct = nn.ConvTranspose2d(4, 6, 3, groups=2)
    assert layer_macs("conv_transpose", ct.weight.shape, xc, ct(xc)) == 4 * 25 * (6 // 2) * 9
    with pytest.raises(ConfigError, match="unknown layer kind"):
        layer_macs("rnn", lin.weight.shape, x, None)
