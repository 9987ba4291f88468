"""profiling.report: rows, depth, rendering, units."""

from __future__ import annotations

import pytest
import torch

import torchcompress as tc
from torchcompress.errors import SelectionError
from torchcompress.profiling import (
    Profile,
    format_bytes,
    format_count,
)


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
