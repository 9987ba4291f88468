"""Every dependency case: the pruned model runs, has the expected shapes, and removing channels whose
weights are zero leaves the outputs unchanged (up to float rounding)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.sparsity import channel_report
from torchcompress.testing import MixedConvNet, TinyCNN

from .conftest import run, zero_units
from .models import (
    Attention,
    ChunkNet,
    ConcatNet,
    FlattenNet,
    MHANet,
    NormNet,
    ResidualNet,
    TinyTransformer,
)


def prune_zeroed(model: nn.Module, x, **kw):
    """Zero half the units of each group, prune them away (L1 ranks zeros first), compare."""
    model.eval()
    zeroed = zero_units(model, x)
    ref = run(model, x)
    tc.prune_channels(model, x, 0.5, criterion="l1", **kw)
    got = run(model, x)
    report = channel_report(model)
    for g in report.groups:
        assert g.removed_units == zeroed[g.name], g.name
    return ref, got


def assert_same(ref, got) -> None:
    assert ref.shape == got.shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_residual_adds_share_channels(seeded) -> None:
    m = ResidualNet()
    x = torch.randn(2, 3, 8, 8)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    # the stem's channels are the first stage's residual stream: stem, bn, a2 out, a1/b1/proj in
    assert m.stem.out_channels == m.bn.num_features == m.a2.out_channels == 4
    assert m.a1.in_channels == m.b1.in_channels == m.proj.in_channels == 4
    assert m.a1.out_channels == 6 and m.a2.in_channels == 6
    # the second stage: proj and b2 add up, then the classifier reads them
    assert m.proj.out_channels == m.b2.out_channels == m.fc.in_features == 8
    assert m.fc.out_features == 5  # the model's outputs keep their shape


def test_concat_offsets(seeded) -> None:
    m = ConcatNet()
    x = torch.randn(2, 3, 8, 8)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    assert (m.c1.out_channels, m.c2.out_channels) == (3, 5)
    assert m.c2.in_channels == 3 and m.c3.in_channels == 8  # 3 + 5 at their offsets
    assert m.c3.out_channels == m.fc.in_features == 4


def test_chunk_prunes_pieces_alike(seeded) -> None:
    m = ChunkNet()
    x = torch.randn(2, 3, 8, 8)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    assert m.c1.out_channels == 6 and m.left.in_channels == m.right.in_channels == 3
    # unit i of c1 holds channel i and channel i + 6 (one per piece)
    g = tc.sparsity.structured.analyse(ChunkNet(), tc.batches.example_batch(ChunkNet(), x)).groups
    c1 = next(gr for gr in g if gr.name == "c1")
    assert c1.units[0].slices[("c1.weight", 0)] == [0, 6]


def test_explicit_split_sizes_keep_channels(seeded) -> None:
    m = ChunkNet(explicit=True).eval()
    x = torch.randn(2, 3, 8, 8)
    tc.prune_channels(m, x, 0.5)
    assert m.c1.out_channels == 12  # torch.split(h, [6, 6]) is written in the code
    assert m.left.out_channels == 2
    kept = channel_report(m).kept
    assert any("split at sizes written in the model's code" in why for why in kept)


def test_flatten_into_linear(seeded) -> None:
    m = FlattenNet()
    x = torch.randn(2, 3, 8, 8)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    assert m.conv.out_channels == m.bn.num_features == 4
    assert m.fc1.in_features == 4 * 16  # each channel is a block of 4x4 features
    assert m.fc1.out_features == m.fc2.in_features == 16


def test_depthwise_and_grouped(seeded) -> None:
    m = MixedConvNet()
    x = torch.randn(2, 3, 16, 16)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    assert m.conv3.groups == 2  # grouped: the groups stay, channels go in both alike
    assert m.conv3.in_channels == 16 and m.conv3.out_channels == 16
    assert m.dw.groups == m.dw.in_channels == m.dw.out_channels == 16  # depthwise: groups shrink
    assert m.fc.in_features == 16


def test_depthwise_with_multiplier(seeded) -> None:
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, groups=8),  # two outputs per input channel
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )
    x = torch.randn(2, 3, 8, 8)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    assert (m[2].groups, m[2].in_channels, m[2].out_channels) == (4, 4, 8)


def test_batchnorm_groupnorm_layernorm_and_gates(seeded) -> None:
    m = NormNet().eval()
    x = torch.randn(2, 3, 8, 8)
    tc.prune_channels(m, x, 0.5)
    assert m.conv.out_channels == m.gn.num_channels == m.se2.out_features == 6
    assert m.gn.num_groups == 3  # the same channels went in every group
    assert m.gn.weight.shape == (6,) and m.se1.in_features == m.fc1.in_features == 6
    assert m.fc1.out_features == m.ln.normalized_shape[0] == m.ln.weight.shape[0] == 8
    assert m(x).shape == (2, 3)


def test_batchnorm_exact(seeded) -> None:
    m = TinyCNN()
    x = torch.randn(2, 3, 8, 8)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    assert m.bn1.running_mean.shape == (4,) and m.fc.in_features == 8


def test_own_attention_heads_and_ffn_units(seeded) -> None:
    m = TinyTransformer()
    x = torch.randint(0, 20, (2, 5))
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    attn = m.blocks[0]["attn"]
    assert attn.qkv.out_features == 3 * 2 * attn.head_dim  # two of four heads left
    assert attn.out.in_features == 2 * attn.head_dim
    assert m.blocks[0]["fc1"].out_features == 16  # FFN units
    assert m.emb.embedding_dim == 8  # its residual stream is not an output: it shrinks too


def test_attention_units_are_whole_heads() -> None:
    m = TinyTransformer()
    a = tc.sparsity.structured.analyse(m, tc.batches.example_batch(m, torch.randint(0, 20, (1, 4))))
    heads = next(g for g in a.groups if g.name == "blocks.0.attn.qkv")
    assert len(heads.units) == 4 and heads.width == 4
    rows = heads.units[1].slices[("blocks.0.attn.qkv.weight", 0)]
    assert rows == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]  # head 1 of q, k and v
    assert isinstance(m.blocks[0]["attn"], Attention)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention(seeded, batch_first: bool) -> None:
    m = MHANet(batch_first=batch_first)
    x = torch.randn(2, 5, 6) if batch_first else torch.randn(5, 2, 6)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    mha = m.mha
    assert (mha.num_heads, mha.embed_dim, mha.head_dim) == (2, 8, 4)
    assert mha.in_proj_weight.shape == (24, 8) and mha.out_proj.weight.shape == (8, 8)
    assert mha.out_proj.in_features == mha.out_proj.out_features == 8
    assert m.inp.out_features == 8 and m.ff1.out_features == 12


def test_multihead_attention_on_fixed_channels_keeps_heads(seeded) -> None:
    class Encoder(nn.Module):  # its hidden states are the output: the heads cannot shrink
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
            self.ff = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

        def forward(self, x):
            x = x + self.mha(x, x, x)[0]
            return x + self.ff(x)

    m = Encoder().eval()
    x = torch.randn(2, 3, 8)
    tc.prune_channels(m, x, 0.5)
    assert m.mha.num_heads == 2 and m.ff[0].out_features == 8


def test_multihead_attention_separate_kv_dims(seeded) -> None:
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(4, 8)
            self.kv = nn.Linear(4, 6)
            self.mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=6, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            k = self.kv(x)
            return self.head(self.mha(self.q(x), k, k)[0].mean(1))

    m = Cross()
    x = torch.randn(2, 3, 4)
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    assert m.mha.kdim == m.mha.vdim == m.kv.out_features == 3
    assert m.mha.num_heads == 1 and m.mha.q_proj_weight.shape == (4, 4)


def test_embedding_and_tied_weights(seeded) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.mid = nn.Linear(8, 8)
            self.out = nn.Linear(8, 10, bias=False)
            self.out.weight = self.emb.weight  # tied input and output embeddings

        def forward(self, ids):
            return self.out(torch.relu(self.mid(self.emb(ids))))

    m = Tied()
    x = torch.randint(0, 10, (2, 4))
    ref, got = prune_zeroed(m, x)
    assert_same(ref, got)
    assert m.emb.weight is m.out.weight  # still tied, sliced once
    assert m.emb.weight.shape == (10, 4) and m.emb.embedding_dim == 4  # rows (vocabulary) kept
    assert (m.mid.in_features, m.mid.out_features, m.out.in_features) == (4, 4, 4)


def test_model_outputs_and_unknown_ops_keep_channels(seeded) -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 8)
            self.c = nn.Linear(8, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = torch.flip(self.b(h), dims=[-1])  # an op the graph does not follow
            return self.c(h), h.sum()

    m = Odd().eval()
    x = torch.randn(2, 4)
    tc.prune_channels(m, x, 0.5)
    assert m.a.out_features == 4  # free
    assert m.b.out_features == 8  # flipped: kept
    why = channel_report(m).kept
    assert any("`flip` is not understood" in k for k in why)


def test_input_and_output_shapes_unchanged(seeded) -> None:
    m = tc.models.create("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    tc.prune_channels(m, x, 0.5)
    assert m(x).shape == (2, 10)
    assert m.conv1.in_channels == 3 and m.fc.out_features == 10


def test_option_a_shortcut_resnet(seeded) -> None:
    m = tc.models.create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    zero_units(m, x)
    ref = run(m, x)
    tc.prune_channels(m, x, 0.5, criterion="l1")
    got = run(m, x)
    assert_same(ref, got)
    sc = m.layer2[0].shortcut
    assert sc.in_channels == 8 and sc.out_channels == 24  # 16 zero channels still padded
    assert m.layer2[0].conv2.out_channels == 24
