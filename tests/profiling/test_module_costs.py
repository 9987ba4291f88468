"""profiling.module_costs: MACs of every built-in layer kind against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.batches import Batch

from .conftest import _mha_expected, macs_of


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


def test_linear_any_leading_dims() -> None:
    lin = nn.Linear(5, 7)
    assert tc.profile(lin, torch.randn(2, 3, 5)).total_macs == 2 * 3 * 5 * 7
    assert tc.profile(lin, torch.randn(4, 2, 3, 5)).total_macs == 4 * 2 * 3 * 5 * 7
    assert tc.profile(lin, torch.randn(5)).total_macs == 35
    w = torch.randn(7, 5)
    assert macs_of(lambda a: F.linear(a, w), torch.randn(6, 5)) == 6 * 5 * 7


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
