"""The demo behind ``torchcompress demo``, at its smallest size (one epoch of 8x8 digits)."""

from __future__ import annotations

import io

import pytest
import torch

from torchcompress.demo import DEMO_STEPS, run_demo


@pytest.mark.slow
def test_demo_runs_every_family_and_reports_what_each_bought():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = io.StringIO()
        rows = run_demo(epochs=1, quick=True, image_size=8, out=out)
    finally:
        torch.set_num_threads(n)
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["fp32", *(label for label, _, _ in DEMO_STEPS)]
    fp32 = by["fp32"]
    fused, int8, pruned, lowrank = (by[label] for label, _, _ in DEMO_STEPS)
    assert 0.5 < fp32["accuracy"] <= 1.0  # one epoch on digits; chance is 0.1
    # folding BN is exact up to rounding: the same predictions on 450 images (one may flip)
    assert abs(fused["accuracy"] - fp32["accuracy"]) <= 1 / 450 + 1e-9
    assert fused["macs"] == fp32["macs"] and fused["bytes"] < fp32["bytes"]
    # int8 stores about a quarter of the bytes; pruning keeps MACs but not effective MACs
    assert int8["bytes"] < 0.3 * fp32["bytes"]
    assert pruned["macs"] == fp32["macs"] and pruned["effective_macs"] < 0.6 * fp32["macs"]
    assert lowrank["macs"] < fp32["macs"] and lowrank["bytes"] < fp32["bytes"]
    assert all(r["latency"] > 0 for r in rows) and fp32["latency"] == 1.0
    text = out.getvalue()
    assert "trained fp32 for 1 epochs" in text
    for r in rows:
        assert r["variant"] in text
