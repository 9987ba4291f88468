"""tc.profile: MACs of every layer kind against hand-computed values, bytes, state, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.batches import Batch
from torchcompress.costs import LayerCost, register_cost
from torchcompress.errors import ConfigError, SelectionError, ShapeError
from torchcompress.profiling import (
    OpCost,
    Profile,
    einsum_macs,
    format_bytes,
    format_count,
    register_op_cost,
)


class Fn(nn.Module):
    """A module running an arbitrary functional expression (no parameters)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def macs_of(fn, *inputs) -> int:
    return tc.profile(Fn(fn), tuple(inputs)).total_macs


# --- convolutions ----------------------------------------------------------------------------


def test_conv2d_groups_stride_dilation_padding() -> None:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=4, bias=True)
    x = torch.randn(2, 8, 15, 15)
    # H_out = floor((15 + 2*2 - 2*(3-1) - 1) / 2) + 1 = 8
    assert conv(x).shape == (2, 16, 8, 8)
    expected = 2 * 16 * 8 * 8 * (8 // 4) * 3 * 3  # 36,864
    p = tc.profile(conv, x)
    assert p.total_macs == expected == 36864
    assert p.total_flops == 2 * expected
    assert p.total_params == 16 * 2 * 9 + 16


def test_depthwise_and_asymmetric_conv() -> None:
    dw = nn.Conv2d(6, 6, (3, 5), stride=(1, 2), padding=(1, 0), groups=6, bias=False)
    x = torch.randn(1, 6, 10, 11)
    # H: 10 + 2 - 3 + 1 = 10; W: floor((11 - 5) / 2) + 1 = 4
    assert tc.profile(dw, x).total_macs == 6 * 10 * 4 * 1 * 3 * 5


def test_conv1d_and_padding_mode() -> None:
    conv = nn.Conv1d(4, 10, 5, stride=3, padding=2, padding_mode="circular")
    x = torch.randn(3, 4, 20)
    # L_out = floor((20 + 4 - 5) / 3) + 1 = 7
    assert tc.profile(conv, x).total_macs == 3 * 10 * 7 * 4 * 5


def test_conv3d_and_transposed() -> None:
    assert tc.profile(nn.Conv3d(2, 4, 3), torch.randn(1, 2, 5, 5, 5)).total_macs == 4 * 27 * 2 * 27
    ct = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    x = torch.randn(2, 4, 5, 5)
    # every input element meets out/groups * k*k weights
    assert tc.profile(ct, x).total_macs == 2 * 4 * 25 * (6 // 2) * 9


def test_functional_convs_outside_modules() -> None:
    w = torch.randn(8, 3, 3, 3)
    x = torch.randn(1, 3, 10, 10)
    assert macs_of(lambda a: F.conv2d(a, w, padding=1), x) == 8 * 100 * 27
    wt = torch.randn(3, 5, 2, 2)
    assert macs_of(lambda a: F.conv_transpose2d(a, wt, stride=2), x) == 3 * 100 * 5 * 4


# --- linear and matmul family ----------------------------------------------------------------


def test_linear_any_leading_dims() -> None:
    lin = nn.Linear(5, 7)
    assert tc.profile(lin, torch.randn(2, 3, 5)).total_macs == 2 * 3 * 5 * 7
    assert tc.profile(lin, torch.randn(4, 2, 3, 5)).total_macs == 4 * 2 * 3 * 5 * 7
    assert tc.profile(lin, torch.randn(5)).total_macs == 35
    w = torch.randn(7, 5)
    assert macs_of(lambda a: F.linear(a, w), torch.randn(6, 5)) == 6 * 5 * 7


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


# --- attention -------------------------------------------------------------------------------


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


def _mha_expected(n, L, S, E, kdim, vdim, extra=0) -> int:
    return n * (L * E * E + S * kdim * E + S * vdim * E + 2 * L * (S + extra) * E + L * E * E)


@pytest.mark.parametrize("train", [False, True])
def test_multihead_attention_both_paths_kdim_vdim(train) -> None:
    mha = nn.MultiheadAttention(16, 4, kdim=8, vdim=12, batch_first=True).train(train)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 8), torch.randn(2, 7, 12)
    p = tc.profile(mha, (q, k, v))
    assert p.total_macs == _mha_expected(2, 5, 7, 16, 8, 12)
    assert mha.training is train


def test_multihead_attention_fast_path_self_attention() -> None:
    # eval + no_grad + batch_first self-attention: the conditions of torch's fused fast path
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(3, 9, 32)
    with torch.no_grad():
        ref = mha(x, x, x, need_weights=False)[0]
    p = tc.profile(mha, Batch(args=(x, x, x), kwargs={"need_weights": False}))
    assert p.total_macs == _mha_expected(3, 9, 9, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mha(x, x, x, need_weights=False)[0], ref)


def test_multihead_attention_seq_first_bias_kv_zero_attn() -> None:
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True)
    x = torch.randn(6, 3, 8)  # (L, N, E)
    assert tc.profile(mha, (x, x, x)).total_macs == _mha_expected(3, 6, 6, 8, 8, 8, extra=2)
    # unbatched (L, E)
    plain = nn.MultiheadAttention(8, 2)
    assert tc.profile(plain, (x[:, 0], x[:, 0], x[:, 0])).total_macs == _mha_expected(
        1, 6, 6, 8, 8, 8
    )


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


def test_transformer_encoder_layer() -> None:
    enc = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    n, L = 2, 5
    p = tc.profile(enc, torch.randn(n, L, 16))
    assert p.total_macs == _mha_expected(n, L, L, 16, 16, 16) + n * L * 2 * 16 * 32
    assert p["self_attn"].macs == _mha_expected(n, L, L, 16, 16, 16)


def test_lstm_and_gru() -> None:
    lstm = nn.LSTM(10, 20, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 7, 10)
    layer0 = 4 * 20 * (10 + 20)
    layer1 = 4 * 20 * (40 + 20)
    assert tc.profile(lstm, x).total_macs == 3 * 7 * 2 * (layer0 + layer1)
    gru = nn.GRU(6, 8)
    assert tc.profile(gru, torch.randn(5, 2, 6)).total_macs == 5 * 2 * 3 * 8 * (6 + 8)


# --- whole models ----------------------------------------------------------------------------


def _resnet20_convs(shortcut_b: bool) -> int:
    conv1 = 3 * 16 * 9 * 32 * 32
    stage1 = 6 * 16 * 16 * 9 * 32 * 32
    stage2 = 16 * 32 * 9 * 16 * 16 + 5 * 32 * 32 * 9 * 16 * 16
    stage3 = 32 * 64 * 9 * 8 * 8 + 5 * 64 * 64 * 9 * 8 * 8
    shortcuts = (16 * 32 * 16 * 16 + 32 * 64 * 8 * 8) if shortcut_b else 0
    return conv1 + stage1 + stage2 + stage3 + shortcuts


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_total_is_analytic(shortcut) -> None:
    model = tc.models.resnet20(shortcut=shortcut)
    p = tc.profile(model, torch.randn(1, 3, 32, 32))
    expected = _resnet20_convs(shortcut == "B") + 64 * 10
    assert p.total_macs == expected
    if shortcut == "A":
        assert expected == 40_551_040  # the familiar 40.55M MACs
    assert p.total_params == sum(t.numel() for t in model.parameters())
    assert p.total_flops == 2 * expected
    assert p.by_type()["Conv2d"]["count"] == (19 if shortcut == "A" else 21)
    # batch size scales the MACs, not the params
    p4 = tc.profile(model, torch.randn(4, 3, 32, 32))
    assert p4.total_macs == 4 * expected and p4.total_params == p.total_params


def test_rows_sum_to_totals_and_depth() -> None:
    model = tc.models.resnet20()
    p = tc.profile(model, torch.randn(1, 3, 32, 32))
    for f in ("params", "macs", "bytes", "flops"):
        assert sum(getattr(r, f) for r in p) == p.totals[f]
    top = tc.profile(model, torch.randn(1, 3, 32, 32), depth=1)
    assert [r.name for r in top] == ["conv1", "bn1", "layer1", "layer2", "layer3", "fc"]
    assert sum(r.macs for r in top) == p.total_macs
    assert top["layer1"].type == "Sequential"
    whole = p.at_depth(0)
    assert len(whole) == 1 and whole.rows[0].macs == p.total_macs
    assert p.table(depth=1) == str(top)


def test_include_exclude_filter_rows_not_totals() -> None:
    model = tc.models.resnet20()
    x = torch.randn(1, 3, 32, 32)
    full = tc.profile(model, x)
    part = tc.profile(model, x, include=["layer1"], exclude=["*.bn*"])
    assert part.rows and all(r.name.startswith("layer1.") and ".bn" not in r.name for r in part)
    assert part.total_macs == full.total_macs
    with pytest.raises(SelectionError, match="layer9"):
        tc.profile(model, x, include=["layer9"])
    with pytest.raises(ConfigError):
        tc.profile(model, x, depth=-1)


def test_shared_module_counts_every_call() -> None:
    lin = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(self.lin(x))

    p = tc.profile(Twice(), torch.randn(3, 4))
    assert p["lin"].macs == 2 * 3 * 16 and p["lin"].calls == 2
    assert p.total_params == 20


# --- bytes, params, sparsity -----------------------------------------------------------------


def test_bytes_follow_dtype_and_int8_buffers() -> None:
    m32 = nn.Linear(100, 50)
    p32 = tc.profile(m32, torch.randn(2, 100))
    assert p32.total_bytes == (100 * 50 + 50) * 4
    m16 = nn.Linear(100, 50).half()
    p16 = tc.profile(m16, torch.randn(2, 100))  # input cast to the model's dtype
    assert p16.total_bytes == (100 * 50 + 50) * 2
    assert p16.total_macs == p32.total_macs

    class Int8Store(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("qweight", torch.zeros(50, 100, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(50))
            self.register_buffer("scratch", torch.zeros(1000), persistent=False)

        def forward(self, x):
            return x @ (self.qweight.float() * self.scale[:, None]).t()

    p8 = tc.profile(Int8Store(), torch.randn(2, 100))
    assert p8.total_bytes == 50 * 100 * 1 + 50 * 4  # non-persistent buffers are not stored
    assert p8.total_params == 0
    assert p8.total_macs == 2 * 100 * 50


def test_tied_weights_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 100, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    model = Tied()
    p = tc.profile(model, torch.randint(0, 100, (2, 5)))
    assert p.total_params == 1600
    assert p.total_bytes == 1600 * 4
    assert p.total_macs == 2 * 5 * 16 * 100
    assert len(model.state_dict()) == 2  # (both keys are there; the bytes are counted once)


def test_sparse_weights_are_reported_honestly() -> None:
    lin = nn.Linear(8, 6, bias=False)
    with torch.no_grad():
        lin.weight[:, :4] = 0  # half of the weights
    p = tc.profile(lin, torch.randn(3, 8))
    row = p[""]
    assert row.params == 48 and row.nonzero_params == 24
    assert row.macs == 3 * 48 and row.effective_macs == 3 * 24
    assert "dense kernels still run all MACs" in row.note
    assert "eff. MACs" in str(p)


def test_unknown_layer_with_weights_is_flagged() -> None:
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return torch.cdist(x, self.w)  # no formula for cdist

    p = tc.profile(Opaque(), torch.randn(3, 4))
    assert p.total_macs == 0
    assert "no cost formula" in p[""].note


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
        from torchcompress.profiling import _OPS

        _OPS.pop(torch.cdist, None)


# --- the cost registry -----------------------------------------------------------------------


class FakeQuantLinear(nn.Module):
    """Stands in for a family's compressed layer: int8 weights in a buffer, a dense inner matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("qweight", torch.ones(6, 4, dtype=torch.int8))
        self.inner = nn.Linear(4, 6)

    def forward(self, x):
        return self.inner(x) + F.linear(x, self.qweight.float())


@register_cost(FakeQuantLinear)
def _fake_cost(module, args, kwargs, out) -> LayerCost:
    return LayerCost(macs=args[0].numel() * 6, params=24, note="int8 kernel")


def test_registered_cost_counts_children_once() -> None:
    model = nn.Sequential(FakeQuantLinear(), nn.ReLU())
    p = tc.profile(model, torch.randn(2, 4))
    assert p.total_macs == 2 * 4 * 6  # not inner Linear + F.linear + own cost
    assert [r.name for r in p] == ["0"]
    row = p["0"]
    assert row.params == 24 and row.note == "int8 kernel"
    assert row.bytes == 24 * 1 + (24 + 6) * 4  # its whole subtree's state


class OwnWorkOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.child = nn.Linear(4, 4)

    def forward(self, x):
        return self.child(x) @ torch.ones(4, 4)


@register_cost(OwnWorkOnly)
def _own_cost(module, args, kwargs, out) -> LayerCost:
    return LayerCost(macs=1000, counts_children=False)


def test_registered_cost_without_children() -> None:
    p = tc.profile(OwnWorkOnly(), torch.randn(2, 4))
    assert p["child"].macs == 2 * 16  # the child is counted on its own
    assert p[""].macs == 1000  # its own matmul is in its cost, not counted again
    assert p.total_macs == 1032


# --- inputs, state, errors -------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(5, 2)

    def forward(self, x, y=None):
        return self.a(x) + (self.b(y) if y is not None else 0)


def test_example_input_forms() -> None:
    m = TwoInputs()
    x, y = torch.randn(4, 3), torch.randn(4, 5)
    full = 4 * 3 * 2 + 4 * 5 * 2
    assert tc.profile(m, (x, y)).total_macs == full
    assert tc.profile(m, {"x": x, "y": y}).total_macs == full
    assert tc.profile(m, Batch(args=(x,), kwargs={"y": y})).total_macs == full
    assert tc.profile(m, x).total_macs == 4 * 3 * 2
    assert tc.profile(m, [x, torch.zeros(4)]).total_macs == 4 * 3 * 2  # a DataLoader batch


def _state(model: nn.Module):
    return {
        name: (
            m.training,
            dict(m._forward_hooks),
            dict(m._forward_pre_hooks),
            sorted(vars(m)),
            {k: v.clone() for k, v in m.state_dict().items()},
        )
        for name, m in model.named_modules()
    }


def test_leaves_no_state() -> None:
    model = tc.models.resnet20()
    model.train()
    model.layer1.eval()  # a mixed-mode model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
    before = _state(model)
    x = torch.randn(2, 3, 32, 32)
    tc.profile(model, x)
    after = _state(model)
    assert before.keys() == after.keys()
    for name in before:
        b, a = before[name], after[name]
        assert b[:4] == a[:4], name
        assert b[4].keys() == a[4].keys()
        for k in b[4]:
            torch.testing.assert_close(a[4][k], b[4][k], rtol=0, atol=0)
    # the forward ran in eval mode: BN running statistics unchanged (checked above), and grads off
    assert all(p.grad is None for p in model.parameters())


def test_wrong_shape_is_shape_error_naming_the_module() -> None:
    model = tc.models.resnet20()
    with pytest.raises(ShapeError) as info:
        tc.profile(model, torch.randn(1, 4, 32, 32))
    msg = str(info.value)
    assert "'conv1'" in msg and "(1, 4, 32, 32)" in msg

    seq = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ShapeError) as info:
        tc.profile(seq, torch.randn(3, 8))
    assert "'2'" in str(info.value) and "(3, 4)" in str(info.value)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in seq.modules())
    assert seq.training


def test_result_rendering_and_dict() -> None:
    p = tc.profile(tc.models.resnet20(), torch.randn(1, 3, 32, 32))
    d = p.to_dict()
    assert d["total"]["macs"] == 40_551_040 and isinstance(d["total"]["bytes"], int)
    assert d["layers"][0]["name"] == "conv1" and d["layers"][0]["macs"] == 3 * 16 * 9 * 1024
    text = str(p)
    assert "40.55M" in text and "MiB" in text and "conv1" in text and "total" in text
    md = p.to_markdown()
    assert md.startswith("| name | type |") and "**40.55M**" in md
    assert "40,551,040" in p.to_markdown(human=False)
    assert isinstance(p, Profile) and "40.55M MACs" in repr(p)
    types = p.by_type()
    assert next(iter(types)) == "Conv2d" and types["Linear"]["macs"] == 640
    with pytest.raises(SelectionError, match="Did you mean"):
        _ = p["conv2"]


def test_units() -> None:
    assert format_count(999) == "999"
    assert format_count(40_551_040) == "40.55M"
    assert format_count(1.2e9) == "1.20G"
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 2**20) == "3.00 MiB"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_follows_the_model_to_cuda() -> None:
    model = tc.models.resnet20().cuda()
    p = tc.profile(model, torch.randn(1, 3, 32, 32))  # a CPU input is moved to the model
    assert p.total_macs == 40_551_040
    q = torch.randn(1, 4, 16, 8, device="cuda", dtype=torch.float16)
    sdpa = tc.profile(Fn(lambda a: F.scaled_dot_product_attention(a, a, a, is_causal=True)), q)
    assert sdpa.total_macs == 4 * 16 * 16 * 16


@pytest.mark.hf
def test_minilm_matches_the_analytic_count() -> None:
    pytest.importorskip("transformers")
    hf = pytest.importorskip("torchcompress.models.hf")
    try:
        model, tok = hf.load_minilm()
    except tc.errors.DependencyError as e:
        pytest.skip(str(e))
    sentences = tc.data.english_sentences(4, seed=0)
    batch = dict(tok(sentences, padding=True, return_tensors="pt"))
    n, L = batch["input_ids"].shape
    d, ff, layers = 384, 1536, 6
    linear = layers * n * L * (4 * d * d + 2 * d * ff) + n * d * d  # + pooler
    attention = layers * 2 * n * L * L * d
    p = tc.profile(model, batch)
    assert p.total_macs == linear + attention
    assert p.total_params == sum(t.numel() for t in model.parameters())


def test_uncalled_layer_is_noted_and_counted_in_params() -> None:
    class Spare(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.spare = nn.Linear(4, 100)

        def forward(self, x):
            return self.used(x)

    p = tc.profile(Spare(), torch.randn(1, 4))
    assert p["spare"].note == "not called" and p["spare"].macs == 0
    assert p.total_params == 20 + 500
