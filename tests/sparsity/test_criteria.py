"""Each criterion against a hand-computed score on a tiny layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from torchcompress.errors import CalibrationError, DataError
from torchcompress.layers import conv_input_sq, layer_kind
from torchcompress.sparsity.calibration import Target, collect_statistics, split_batch
from torchcompress.sparsity.criteria import CRITERIA, LayerStats
from torchcompress.sparsity.masking import apply_mask


def _scores(crit: str, model: nn.Module, data=None, loss_fn=None, name: str = "0") -> torch.Tensor:
    mod = model.get_submodule(name)
    kind = layer_kind(mod)
    apply_mask(mod, "weight", torch.ones_like(mod.weight, dtype=torch.bool))
    c = CRITERIA.get(crit)
    t = Target(name, mod, kind)
    stats = collect_statistics(model, [t], {name: set(c.statistics)}, data, loss_fn)
    w = kind.to_canonical(mod, mod.weight).detach().float()
    return c.scores(w, stats[name], name=name, seed=0)


W = torch.tensor([[1.0, -2.0, 0.5], [-0.25, 3.0, -1.0]])


def _tiny() -> nn.Sequential:
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(W)
    return nn.Sequential(lin)


def test_magnitude_l1_l2_random() -> None:
    c = CRITERIA.get
    assert torch.equal(c("magnitude").scores(W, LayerStats(), name="a", seed=0), W.abs())
    assert torch.equal(c("l1").scores(W, LayerStats(), name="a", seed=0), W.abs())
    assert torch.equal(c("l2").scores(W, LayerStats(), name="a", seed=0), W**2)
    r1 = c("random").scores(W, LayerStats(), name="a", seed=0)
    assert torch.equal(r1, c("random").scores(W, LayerStats(), name="a", seed=0))
    assert not torch.equal(r1, c("random").scores(W, LayerStats(), name="b", seed=0))
    assert not torch.equal(r1, c("random").scores(W, LayerStats(), name="a", seed=1))
    assert r1.shape == W.shape and bool(((r1 >= 0) & (r1 < 1)).all())


def test_wanda_linear_by_hand() -> None:
    x1 = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]])
    x2 = torch.tensor([[[0.0, 2.0, 2.0]]])  # 3-D input: rows are every token
    s = _scores("wanda", _tiny(), [x1, x2])
    rows = 3
    norm = torch.tensor([1 + 9 + 0, 0 + 1 + 4, 4 + 0 + 4]).float().div(rows).sqrt()
    torch.testing.assert_close(s, W.abs() * norm)


def test_taylor_by_hand() -> None:
    torch.manual_seed(0)
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(2)]
    s = _scores("taylor", _tiny(), data)
    expected = torch.zeros(2, 3)
    for x, y in data:
        w = W.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(x @ w.t(), y), w)
        expected += (W * g).abs()
    torch.testing.assert_close(s, expected / 2)


def test_fisher_by_hand_per_sample() -> None:
    torch.manual_seed(0)
    data = [(torch.randn(3, 3), torch.randint(0, 2, (3,))) for _ in range(2)]
    s = _scores("fisher", _tiny(), data)
    fisher = torch.zeros(2, 3)
    n = 0
    for x, y in data:
        for i in range(3):
            w = W.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(x[i : i + 1] @ w.t(), y[i : i + 1]), w)
            fisher += g**2
            n += 1
    torch.testing.assert_close(s, 0.5 * fisher / n * W**2)


def test_custom_loss_and_param_grads_untouched() -> None:
    model = _tiny()
    data = [torch.randn(4, 3)]

    def loss_fn(out, target):
        return out.pow(2).sum()

    s = _scores("taylor", model, data, loss_fn)
    x = data[0]
    g = 2 * (x @ W.t()).t() @ x  # d/dW sum((xW^T)^2)
    torch.testing.assert_close(s, (W * g).abs())
    assert model[0].parametrizations.weight.original.grad is None


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2),
        nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), groups=2),
        nn.Conv2d(4, 4, 3, padding="same", groups=4),
        nn.Conv2d(4, 6, 3, padding="same", dilation=2),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular"),
    ],
)
def test_wanda_conv_matches_unfold(conv: nn.Conv2d) -> None:
    torch.manual_seed(0)
    xs = [torch.randn(2, 4, 7, 9), torch.randn(1, 4, 7, 9)]
    s = _scores("wanda", nn.Sequential(conv), xs)
    # reference: im2col rows of the padded input, exactly as the conv sees it
    sq = torch.zeros(4 * conv.kernel_size[0] * conv.kernel_size[1])
    rows = 0
    for x in xs:
        if conv.padding_mode != "zeros":
            p = conv._reversed_padding_repeated_twice
            xp, pad = F.pad(x, p, mode=conv.padding_mode), 0
        elif isinstance(conv.padding, str):
            p = conv._reversed_padding_repeated_twice
            xp, pad = F.pad(x, p), 0
        else:
            xp, pad = x, conv.padding
        cols = F.unfold(
            xp, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride
        )
        sq += cols.pow(2).sum((0, 2))
        rows += cols.shape[0] * cols.shape[2]
        assert cols.shape[2] == conv(x).shape[2] * conv(x).shape[3]
    norm = (sq / rows).sqrt().reshape(4, *conv.kernel_size)
    w = conv.weight.detach()
    out_per_group, in_per_group = w.shape[0] // conv.groups, 4 // conv.groups
    expected = torch.empty_like(w)
    for o in range(w.shape[0]):
        g = o // out_per_group
        expected[o] = w[o].abs() * norm[g * in_per_group : (g + 1) * in_per_group]
    torch.testing.assert_close(s, expected)


def test_conv1d_and_3d_stats() -> None:
    x = torch.randn(2, 3, 10)
    sq, rows = conv_input_sq(x, (3,), (2,), [(1, 1)], (1,))
    cols = F.unfold(F.pad(x, (1, 1)).unsqueeze(-1), (3, 1), stride=(2, 1))
    torch.testing.assert_close(sq.reshape(-1), cols.pow(2).sum((0, 2)))
    assert rows == cols.shape[0] * cols.shape[2]
    conv3 = nn.Conv3d(2, 4, 2)
    s = _scores("wanda", nn.Sequential(conv3), [torch.randn(1, 2, 3, 3, 3)])
    assert s.shape == conv3.weight.shape


def test_hf_conv1d_is_transposed() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    c = Conv1D(5, 3)  # nf=5 outputs, nx=3 inputs; weight stored (3, 5)
    kind = layer_kind(c)
    assert kind is not None and kind.canonical_shape(c) == (5, 3)
    x = torch.randn(2, 4, 3)
    s = _scores("wanda", nn.Sequential(c), [x])
    norm = x.reshape(-1, 3).pow(2).mean(0).sqrt()
    torch.testing.assert_close(s, c.weight.detach().t().abs() * norm)
    tc.prune(nn.Sequential(c), tc.PruneConfig(pattern="n:m", n=1, m=3))
    assert bool(((c.weight != 0).sum(0) == 1).all())  # along the input dimension (dim 0 stored)


class _Skip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        return self.a(x)


def test_layer_without_statistics_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from torchcompress.sparsity.masking import is_masked

    m = _Skip()
    with caplog.at_level(logging.WARNING, logger="torchcompress.sparsity.pruning"):
        tc.prune(m, tc.PruneConfig(criterion="wanda"), [torch.randn(2, 3)])
    assert "'unused' got no inputs" in caplog.text and "Left unpruned" in caplog.text
    assert is_masked(m.a) and not is_masked(m.unused)
    with pytest.raises(CalibrationError, match=r"'unused'.*overrides="):
        tc.prune(
            _Skip(), tc.PruneConfig(criterion="wanda"), [torch.randn(2, 3)], include=["unused"]
        )
    with pytest.raises(CalibrationError, match="No targeted layer"):
        tc.prune(_Skip(), tc.PruneConfig(criterion="wanda"), [torch.randn(2, 3)], exclude=["a"])


def test_multihead_attention_out_proj() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    data = [torch.randn(2, 5, 8) for _ in range(2)]
    tc.prune(layer, tc.PruneConfig(criterion="wanda"), data)  # out_proj's input is never seen
    rep = tc.sparsity_report(layer)
    assert rep["self_attn.out_proj"].sparsity == 0 and rep["linear1"].sparsity == 0.5
    data_t = [(x, torch.randn(2, 5, 8)) for x in data]
    tc.prune(
        layer,
        tc.PruneConfig(sparsity=0.6, criterion="taylor"),
        data_t,
        loss_fn=lambda out, y: (out - y).pow(2).mean(),
    )
    assert tc.sparsity_report(layer)["self_attn.out_proj"].sparsity == pytest.approx(0.6, abs=0.01)
    layer.eval()
    with torch.no_grad():  # the fast path reads the masked weight too
        out = layer(data[0])
    assert torch.isfinite(out).all()


def test_taylor_needs_targets() -> None:
    with pytest.raises(DataError, match="no targets"):
        tc.prune(_tiny(), tc.PruneConfig(criterion="taylor"), [torch.randn(2, 3)])


def test_split_batch() -> None:
    from torchcompress.batches import Batch

    b = Batch(
        args=(torch.randn(3, 2),),
        kwargs={"mask": torch.ones(3, 4), "flag": 1},
        target=torch.arange(3),
    )
    parts = split_batch(b)
    assert len(parts) == 3 and parts[1].target.tolist() == [1]
    assert parts[2].kwargs["mask"].shape == (1, 4) and parts[2].kwargs["flag"] == 1


@pytest.mark.parametrize(("crit", "pruned_row"), [("l1", 0), ("l2", 1), ("magnitude", 0)])
def test_group_norms_by_hand(crit: str, pruned_row: int) -> None:
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():  # row 0: L1 3, L2 3; row 1: L1 4, L2 2
        lin.weight.copy_(torch.tensor([[3.0, 0.0, 0.0, 0.0], [1.0, -1.0, 1.0, -1.0]]))
    tc.prune(nn.Sequential(lin), tc.PruneConfig(sparsity=0.5, pattern="channel", criterion=crit))
    assert (lin.weight == 0).all(1).tolist() == [pruned_row == 0, pruned_row == 1]


def test_taylor_channel_groups_sum_element_scores() -> None:
    from torchcompress.sparsity.patterns import ChannelPattern

    s = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    c = ChannelPattern().candidates(
        s, torch.ones(2, 3, dtype=torch.bool), CRITERIA.get("taylor").reduce
    )
    torch.testing.assert_close(c.scores, torch.tensor([0.6, 0.5]))
