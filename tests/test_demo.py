"""The demo behind ``torchcompress demo``, at a reduced size (one epoch of 8x8 digits), end to end:
every pipeline that is built runs, the table says what each model bought, the report is written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from torchcompress.demo import demo_recipe, run_demo
from torchcompress.recipe import PLANNED
from torchcompress.report.plots import have_matplotlib


def test_labels_say_exactly_what_ran() -> None:
    r = demo_recipe(quick=True, epochs=1)
    labels = [v.label() for v in r.variants]
    assert (
        "low-rank auto, 50% params budget + fine-tuned 1 ep" in labels
    )  # budget, not a rank ratio
    assert r.steps[2].label() == "fine-tuned 1 ep" and r.steps[1].kwargs["image_size"] == 8
    full = demo_recipe()
    assert full.steps[2].epochs == 6 and full.steps[1].kwargs["image_size"] == 16
    assert [v.steps for v in full.variants][2][1].epochs == 2
    with pytest.raises(Exception, match="Unknown model 'resnet2'"):
        demo_recipe(model_name="resnet2")


@pytest.mark.slow
def test_demo_runs_every_family_and_reports_what_each_bought(tmp_path: Path) -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = io.StringIO()
        rows = run_demo(epochs=1, quick=True, image_size=8, out=out, out_dir=tmp_path)
    finally:
        torch.set_num_threads(n)
    by = {r["variant"]: r for r in rows}
    fp32 = rows[0]
    assert fp32["variant"] == "baseline: resnet20 + fine-tuned 1 ep"
    fused = by["BN folded"]
    int8 = by["BN folded + W8A8 percentile static PTQ + converted"]
    qat = by["W4A4 LSQ QAT + fine-tuned 1 ep + converted"]
    pruned = by["pruned 70% unstructured (magnitude, global) + fine-tuned 1 ep + finalized"]
    lowrank = by["low-rank auto, 50% params budget + fine-tuned 1 ep"]
    combo = by[
        "low-rank auto, 50% params budget + fine-tuned 1 ep + W8A8 percentile static PTQ + converted"
    ]
    built = 7 + sum(k not in PLANNED for k in ("prune_channels", "distill"))
    assert len(rows) == built
    assert 0.5 < fp32["accuracy"] <= 1.0  # one epoch on digits; chance is 0.1
    # folding BN is exact up to rounding: the same predictions on 450 images (one may flip)
    assert abs(fused["accuracy"] - fp32["accuracy"]) <= 1 / 450 + 1e-9
    assert fused["macs"] == fp32["macs"] and fused["bytes"] < fp32["bytes"]
    # int8 stores about a quarter of the bytes, 4-bit about an eighth
    assert int8["bytes"] < 0.3 * fp32["bytes"] and qat["bytes"] < 0.17 * fp32["bytes"]
    assert abs(int8["accuracy"] - fp32["accuracy"]) < 0.05 and qat["accuracy"] > 0.5
    # pruning keeps MACs but not effective MACs
    assert pruned["macs"] == fp32["macs"] and pruned["effective_macs"] < 0.6 * fp32["macs"]
    # the params budget of the factorized convolutions is met (conv1 and fc stay dense)
    assert lowrank["macs"] < fp32["macs"] and lowrank["params"] < 0.55 * fp32["params"]
    # quantize folds the BatchNorms (a few hundred params fewer), then stores int8
    assert 0.99 * lowrank["params"] < combo["params"] <= lowrank["params"]
    assert combo["bytes"] < 0.3 * lowrank["bytes"]
    if "prune_channels" not in PLANNED:  # half of the channels of every group removed for real
        channels = by["channels pruned 50% (l2, local) + fine-tuned 1 ep"]
        assert channels["params"] < 0.5 * fp32["params"] and channels["macs"] < 0.5 * fp32["macs"]
        assert channels["bytes"] < 0.5 * fp32["bytes"] and channels["accuracy"] > 0.3
    assert all(r["latency"] > 0 for r in rows) and fp32["latency"] == 1.0
    assert all(r["latency_spread"] is not None for r in rows[1:])
    text = out.getvalue()
    assert "[baseline 3/3] finetune: done in" in text  # progress lines, printed when piped too
    for r in rows:
        assert r["variant"] in text
    for kind in PLANNED:
        assert f"{kind} (not built)" in text
    # the report files
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["variant"] for r in report["rows"]] == [r["variant"] for r in rows]
    assert report["machine"]["cpu_capability"] and report["versions"]["torchcompress"]
    md = (tmp_path / "report.md").read_text()
    assert "## Summary" in md and "## What ran" in md
    if have_matplotlib():
        for f in ("frontier_size.png", "frontier_latency.png", "layers.png"):
            assert (tmp_path / f).stat().st_size > 1000 and f in md
    assert list((tmp_path / "cache").glob("baseline-*.safetensors"))
