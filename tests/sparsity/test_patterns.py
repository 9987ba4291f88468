"""Patterns: N:M in every group, channels, and layers that cannot take a pattern."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ShapeError
from torchcompress.sparsity.masking import get_mask
from torchcompress.sparsity.patterns import ChannelPattern, NMPattern, UnstructuredPattern


def _nm_ok(w: torch.Tensor, n: int, m: int) -> bool:
    """At most n non-zeros in every m consecutive inputs (dim 1), at every output and tap."""
    blocks = (w != 0).movedim(1, -1).reshape(-1, m)
    return bool((blocks.sum(-1) <= n).all())


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 8), (1, 2)])
def test_nm_every_group_linear(n: int, m: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12 if 12 % m == 0 else 16, 5))
    if 12 % m:
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))
    tc.prune(model, tc.PruneConfig(pattern="n:m", n=n, m=m))
    for lin in (model[0], model[2]):
        w = lin.weight
        blocks = (w != 0).reshape(w.shape[0], -1, m)
        assert bool((blocks.sum(-1) == n).all())  # exactly n kept in every block
    assert tc.sparsity_report(model).sparsity == pytest.approx(1 - n / m)


def test_nm_conv_along_input_channels() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, groups=2)  # 4 inputs per group
    tc.prune(nn.Sequential(conv), tc.PruneConfig(pattern="2:4"))
    w = conv.weight  # (6, 4, 3, 3): blocks run along dim 1 at each (out, kh, kw)
    assert _nm_ok(w, 2, 4)
    assert bool(((w != 0).sum(1) == 2).all())


def test_nm_keeps_largest_in_block() -> None:
    lin = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -5.0, 2.0, 0.5, 3.0, 1.0, -4.0, 2.5]]))
    tc.prune(nn.Sequential(lin), tc.PruneConfig(pattern="2:4"))
    assert (lin.weight != 0).int().tolist() == [[0, 1, 1, 0, 1, 0, 1, 0]]


def test_m_not_dividing_inputs_names_layer() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    with pytest.raises(
        ShapeError, match=r"Layer '0'.*input dimension = 6 is not a multiple of m=4"
    ):
        tc.prune(model, tc.PruneConfig(pattern="2:4"))
    assert get_mask(model[1]) is None  # nothing was touched


def test_depthwise_cannot_take_nm() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 1))
    with pytest.raises(ShapeError, match=r"Layer '0'.*in_channels/groups = 1"):
        tc.prune(model, tc.PruneConfig(pattern="2:4"))
    # the suggested fix works
    tc.prune(model, tc.PruneConfig(pattern="2:4"), overrides={"0": {"pattern": "unstructured"}})
    assert _nm_ok(model[1].weight, 2, 4)


def test_channel_pattern_masks_rows_and_bias() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 10, 3)
    with torch.no_grad():
        scale = torch.arange(1, 11, dtype=torch.float32).reshape(10, 1, 1, 1)
        conv.weight.copy_(torch.randn(10, 4, 3, 3).sign() * scale)
    tc.prune(nn.Sequential(conv), tc.PruneConfig(sparsity=0.3, pattern="channel", criterion="l2"))
    rows_zero = (conv.weight.reshape(10, -1) == 0).all(1)
    assert rows_zero.tolist() == [True] * 3 + [False] * 7
    assert bool((conv.bias[:3] == 0).all()) and bool((conv.bias[3:] != 0).all())
    out = conv(torch.randn(1, 4, 5, 5))
    assert bool((out[:, :3] == 0).all())


def test_candidates_respect_alive() -> None:
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    alive = torch.tensor([[False, True, True, True]])
    c = NMPattern(2, 4).candidates(s, alive, "sum")
    assert c.sizes.tolist() == [1] and c.scores.tolist() == [2.0]
    keep = NMPattern(2, 4).expand(torch.tensor([True]), s, alive)
    assert keep.tolist() == [[False, False, True, True]]
    c = UnstructuredPattern().candidates(s, alive, "sum")
    assert c.forced.tolist() == [True, False, False, False]
    c = ChannelPattern().candidates(
        torch.ones(2, 3), torch.tensor([[1, 0, 1], [0, 0, 0]]).bool(), "l2"
    )
    assert c.sizes.tolist() == [2, 0] and c.forced.tolist() == [False, True]
    assert c.scores[0].item() == pytest.approx(2**0.5)


def test_group_matrix_shapes() -> None:
    w = torch.randn(6, 8, 3, 3)
    assert NMPattern(2, 4).group_matrix(w).shape == (6 * 9 * 2, 4)
    assert ChannelPattern().group_matrix(w).shape == (6, 72)
    assert UnstructuredPattern().group_matrix(w).shape == (w.numel(), 1)


def test_partial_nm_prunes_cheapest_blocks() -> None:
    lin = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 0.2, 5.0, 6.0, 3.0, 4.0, 5.0, 6.0]]))
    tc.prune(nn.Sequential(lin), tc.PruneConfig(pattern="2:4", sparsity=0.25))
    assert (lin.weight != 0).int().tolist() == [[0, 0, 1, 1, 1, 1, 1, 1]]
    tc.prune(nn.Sequential(lin), tc.PruneConfig(pattern="2:4"))  # then all blocks
    assert (lin.weight != 0).int().tolist() == [[0, 0, 1, 1, 0, 0, 1, 1]]
