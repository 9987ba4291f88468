"""The report of a channel pruning: ratios, cumulative fractions, the table, plain data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import CompressionStateError
from torchcompress.sparsity.structured import ChannelPruneReport, GroupReport, channel_report


def _report() -> ChannelPruneReport:
    return ChannelPruneReport(
        groups=[
            GroupReport("conv1", ["conv1.weight[0]", "bn1.weight[0]"], 8, 4, removed_units=[0, 2]),
            GroupReport("attn", ["q.weight[0]"], 4, 1, width=16, criterion="l2 (fallback)"),
            GroupReport("fc", ["fc.weight[0]"], 10, 0),
        ],
        criterion="l2",
        ratio=0.5,
        target={"macs": 0.5},
        macs_before=1000,
        macs_after=400,
        params_before=200,
        params_after=150,
        baseline={"macs": 0.5, "params": 0.8},
        kept={"the model's outputs keep their shape": 1},
    )


def test_ratios_and_cumulative_fractions() -> None:
    r = _report()
    assert r.macs_ratio == 0.4 and r.params_ratio == 0.75
    assert r.cumulative == {"macs": 0.2, "params": 0.6000000000000001}
    assert r.channels_removed == 4 + 16
    assert [g.kept for g in r.groups] == [4, 3, 10]
    assert ChannelPruneReport().macs_ratio == 1.0  # nothing measured: no division by zero


def test_summary_table_and_plain_data() -> None:
    r = _report()
    assert r.summary() == (
        "2/3 groups pruned (l2, local, ratio 0.5000); MACs 1,000 -> 400 (0.400x), params 200 -> 150"
        " (0.750x); target macs 0.5x, reached 0.2000x"
    )
    lines = str(r).splitlines()
    assert lines[1].split() == ["group", "units", "kept", "width", "members", "criterion"]
    assert lines[4].split() == ["attn", "4", "3", "16", "1", "l2", "(fallback)"]
    assert lines[-1] == "kept whole: the model's outputs keep their shape (1)"
    d = r.to_dict()
    assert d["groups"][0]["removed_units"] == [0, 2] and d["macs_ratio"] == 0.4
    assert d["cumulative"]["macs"] == 0.2


def test_channel_report_on_the_model() -> None:
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(CompressionStateError, match="carries no channel-pruning report"):
        channel_report(m)
    tc.prune_channels(m, torch.randn(1, 8), 0.25)
    r = channel_report(m)
    assert [(g.units, g.removed) for g in r.groups] == [(16, 4)]
    assert r.params_before == 8 * 16 + 16 + 16 * 2 + 2
    assert r.params_after == 8 * 12 + 12 + 12 * 2 + 2
    assert channel_report(copy.deepcopy(m)).params_after == r.params_after
