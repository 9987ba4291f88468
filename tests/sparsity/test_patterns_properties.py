"""Properties of the masks (hypothesis): the sparsity asked for is the sparsity obtained, N:M masks
hold at most n non-zeros in every block of m inputs, and re-pruning only removes weights."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchcompress as tc

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def layers(draw: st.DrawFn) -> nn.Module:
    torch.manual_seed(draw(st.integers(0, 2**16)))
    m = 8  # a multiple of every block size below
    if draw(st.booleans()):
        return nn.Linear(m * draw(st.integers(1, 4)), draw(st.integers(1, 12)))
    groups = draw(st.integers(1, 2))
    return nn.Conv2d(
        groups * m * draw(st.integers(1, 2)),
        groups * draw(st.integers(1, 3)),
        draw(st.integers(1, 3)),
        groups=groups,
    )


@SETTINGS
@given(layers(), st.floats(0.0, 0.95), st.sampled_from(["magnitude", "random", "l1"]))
def test_layer_sparsity_is_what_was_asked(
    layer: nn.Module, sparsity: float, criterion: str
) -> None:
    cfg = tc.PruneConfig(sparsity=sparsity, criterion=criterion, pattern="unstructured")
    model = tc.prune(nn.Sequential(layer), cfg)
    w = model[0].weight
    assert int((w == 0).sum()) == round(sparsity * w.numel())
    assert abs(tc.sparsity_report(model).sparsity - round(sparsity * w.numel()) / w.numel()) < 1e-9
    # pruning again at a higher sparsity keeps every pruned weight pruned
    before = w == 0
    tc.prune(model, cfg.replace(sparsity=min(0.99, sparsity + 0.1)))
    assert bool((model[0].weight[before] == 0).all())


@SETTINGS
@given(layers(), st.sampled_from([(1, 4), (2, 4), (3, 4), (2, 8), (4, 8)]))
def test_n_m_masks_hold_at_most_n_in_every_block(layer: nn.Module, nm: tuple[int, int]) -> None:
    n, m = nm
    model = tc.prune(
        nn.Sequential(layer), tc.PruneConfig(pattern="n:m", n=n, m=m, sparsity=1 - n / m)
    )
    w = model[0].weight
    blocks = (w != 0).movedim(1, -1).reshape(-1, m).sum(-1)  # along the input channels
    assert int(blocks.max()) <= n
    # at the pattern's own sparsity every block keeps exactly n (weights are non-zero a.s.)
    assert bool((blocks == n).all())
