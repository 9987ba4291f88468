"""The report: tables, Markdown, plots (and their absence without matplotlib), atomic writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchcompress.report import markdown_table, render_markdown, text_table, write_report
from torchcompress.report import plots as plots_mod
from torchcompress.report.plots import MISSING_NOTE, frontier
from torchcompress.report.writer import write_text_files

LAYERS = [
    {
        "name": "conv",
        "type": "Conv2d",
        "params": 100,
        "nonzero_params": 100,
        "macs": 1000,
        "bytes": 400,
    },
    {"name": "fc", "type": "Linear", "params": 50, "nonzero_params": 50, "macs": 50, "bytes": 200},
]
SMALL = [
    {
        "name": "conv",
        "type": "IntConv2d",
        "params": 100,
        "nonzero_params": 40,
        "macs": 1000,
        "bytes": 110,
    },
    {
        "name": "fc.first",
        "type": "Linear",
        "params": 10,
        "nonzero_params": 10,
        "macs": 10,
        "bytes": 40,
    },
    {
        "name": "fc.second",
        "type": "Linear",
        "params": 10,
        "nonzero_params": 10,
        "macs": 10,
        "bytes": 40,
    },
]


def _data() -> dict:
    rows = [
        {
            "variant": "baseline",
            "accuracy": 0.9,
            "params": 150,
            "nonzero_params": 150,
            "macs": 1050,
            "effective_macs": 1050,
            "bytes": 600,
            "latency": 1.0,
            "latency_spread": 0.0,
            "latency_ms": 2.0,
            "output_cosine": 1.0,
        },
        {
            "variant": "small | fast",
            "accuracy": 0.88,
            "params": 120,
            "nonzero_params": 60,
            "macs": 1020,
            "effective_macs": 500,
            "bytes": 190,
            "latency": 0.5,
            "latency_spread": 0.031,
            "latency_ms": 1.0,
            "output_cosine": 0.99,
        },
    ]
    branches = [
        {
            "label": "baseline",
            "role": "baseline",
            "from": None,
            "skipped": None,
            "folder": None,
            "steps": [
                {
                    "kind": "model",
                    "label": "m",
                    "description": "m",
                    "config": {"name": "m"},
                    "duration_s": 0.1,
                    "figures": {"params": 150},
                    "cached": False,
                }
            ],
            "figures": {"layers": LAYERS},
        },
        {
            "label": "small | fast",
            "role": "variant",
            "from": None,
            "skipped": None,
            "folder": "small",
            "steps": [
                {
                    "kind": "prune",
                    "label": "p",
                    "description": "pruned",
                    "config": {"config": {"sparsity": 0.6}},
                    "duration_s": 1.25,
                    "figures": {"sparsity": 0.6},
                    "cached": False,
                }
            ],
            "figures": {"layers": SMALL},
        },
        {
            "label": "later",
            "role": "variant",
            "from": None,
            "skipped": "needs tc.distill",
            "folder": None,
            "steps": [],
            "figures": {},
        },
    ]
    return {
        "recipe": {"name": "t", "file": "t.yaml", "description": "d"},
        "seed": 3,
        "device": "cpu",
        "started": "2026-12-06T10:00:00+00:00",
        "duration_s": 12.0,
        "versions": {"torchcompress": "0", "torch": "2", "python": "3"},
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "torch_threads": 2,
            "cpu_capability": "AVX2",
            "cuda": None,
        },
        "rows": rows,
        "branches": branches,
        "notes": ["a note"],
    }


def test_tables_give_the_baseline_in_figures_and_the_rest_as_ratios() -> None:
    rows = _data()["rows"]
    text = text_table(rows).splitlines()
    assert text[0].split() == [
        "variant",
        "accuracy",
        "params",
        "MACs",
        "eff.",
        "MACs",
        "stored",
        "latency",
    ]
    assert text[1].split() == ["baseline", "90.0%", "150", "1.1K", "1.1K", "600", "B", "1.00x"]
    assert text[2].split() == [
        "small",
        "|",
        "fast",
        "88.0%",
        "0.80x",
        "0.97x",
        "0.48x",
        "0.32x",
        "0.50x",
        "±3%",
    ]
    md = markdown_table(rows).splitlines()
    assert (
        md[0]
        == "| variant | accuracy | params | MACs | eff. MACs | stored | latency | output cos |"
    )
    assert md[2].endswith("| 1.00x (2.00 ms) | 1.0000 |") and "small \\| fast" in md[3]


def test_markdown_report_lists_what_ran() -> None:
    text = render_markdown(_data(), [("frontier_size.png", "caption")], ["a note"])
    assert text.startswith("# torchcompress report: t\n\nd\n")
    assert "seed 3, device cpu" in text and "AVX2" in text
    assert "![caption](frontier_size.png)" in text
    assert (
        '1. **prune**: pruned (1.2 s)\n   - config: `{"config": {"sparsity": 0.6}}`\n   - figures: sparsity 0.6'
        in text
    )
    assert "Skipped: needs tc.distill." in text and "- a note" in text


def test_frontier_keeps_the_undominated_points() -> None:
    assert frontier([(1.0, 0.9), (0.3, 0.89), (0.5, 0.8), (0.3, 0.7)]) == [1, 0]
    assert frontier([(1.0, 0.5)]) == [0]


@pytest.mark.skipif(not plots_mod.have_matplotlib(), reason="needs matplotlib")
def test_report_with_plots(tmp_path: Path) -> None:
    files = write_report(_data(), tmp_path)
    assert files == [
        "frontier_size.png",
        "frontier_latency.png",
        "layers.png",
        "report.md",
        "report.json",
    ]
    for f in files:
        assert (tmp_path / f).stat().st_size > 0
    assert (tmp_path / "frontier_size.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["files"] == files and report["seed"] == 3
    # per layer: children of a replaced layer count for it (fc.first + fc.second = fc)
    names, series = plots_mod._layer_ratios(
        [dict(r, layers=L) for r, L in zip(_data()["rows"], (LAYERS, SMALL))]
    )
    assert (
        names == ["conv", "fc"]
        and series[0][1] == [110 / 400, 80 / 200]
        and series[0][2] == [0.4, 0.4]
    )


def test_without_matplotlib_the_report_says_so(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "layers.png").write_bytes(b"old")
    (tmp_path / "report.json").write_text(
        json.dumps({"files": ["layers.png", "report.md", "report.json"]})
    )
    monkeypatch.setattr(plots_mod, "have_matplotlib", lambda: False)
    files = write_report(_data(), tmp_path)
    assert files == ["report.md", "report.json"]
    assert MISSING_NOTE in (tmp_path / "report.md").read_text()
    assert MISSING_NOTE in json.loads((tmp_path / "report.json").read_text())["notes"]
    assert not (tmp_path / "layers.png").exists()  # the old report's plot is gone with it


def test_json_has_no_nan_and_text_files_are_written_whole(tmp_path: Path) -> None:
    data = _data()
    data["rows"][1]["latency_spread"] = float("nan")
    write_report(data, tmp_path, plots=False)
    assert json.loads((tmp_path / "report.json").read_text())["rows"][1]["latency_spread"] is None
    assert write_text_files(tmp_path / "sub", {"a.txt": "x"}) == ["a.txt"]
    assert (tmp_path / "sub" / "a.txt").read_text() == "x"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.txt"]
    blocker = tmp_path / "f"
    blocker.write_text("")
    from torchcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot be written"):
        write_text_files(blocker / "x", {"a": "b"})


def test_a_run_reports_the_library_s_own_measurements(tmp_path: Path) -> None:
    """The figures in report.json are exactly what tc.evaluate and tc.profile say of each model,
    the per-layer figures add up to the totals, and report.md shows the same numbers."""
    import torch

    import torchcompress as tc
    from torchcompress.recipe import loads, run

    text = """
seed: 0
latency: false
steps:
  - model: torchcompress.testing:MixedConvNet
  - data: {name: digits, kwargs: {image_size: 8, batch_size: 256}, calib_batches: 2}
  - finetune: {steps: 3, lr: 0.05}
variants:
  - steps: [fuse, {quantize: {config: {observer: minmax}}}, convert]
  - steps: [{prune: {sparsity: 0.5, scope: global}}]
"""
    result = run(loads(text), tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    _train, test = tc.data.digits(image_size=8, batch_size=256)
    x = next(iter(test))[0][:1]  # the example: one test image
    assert [r["variant"] for r in report["rows"]] == [b.label for b in result.branches]
    for row, branch, saved in zip(report["rows"], result.branches, report["branches"]):
        model = branch.model.eval()
        assert row["accuracy"] == tc.evaluate(model, test)["accuracy"]
        prof = tc.profile(model, x)
        assert (row["params"], row["macs"], row["bytes"]) == (
            prof.total_params,
            prof.total_macs,
            prof.total_bytes,
        )
        assert row["effective_macs"] == prof.total_effective_macs
        layers = saved["figures"]["layers"]
        leaves = [
            r for r in layers if not any(o["name"].startswith(r["name"] + ".") for o in layers)
        ]
        for key in ("params", "nonzero_params", "macs", "bytes"):
            assert sum(r[key] for r in leaves) == row[key], (saved["label"], key)
    base, int8, pruned = report["rows"]
    assert base["output_cosine"] == pytest.approx(1.0)
    # int8 weights: about a quarter of the stored bytes; pruning halves the non-zero weights
    assert 0.2 < int8["bytes"] / base["bytes"] < 0.35
    assert pruned["params"] == base["params"]
    assert pruned["nonzero_params"] == pytest.approx(base["nonzero_params"] * 0.5, rel=0.05)
    md = (tmp_path / "report.md").read_text()
    assert f"| {int8['bytes'] / base['bytes']:.2f}x |" in md
    assert f"{100 * base['accuracy']:.1f}%" in md
    with torch.no_grad():
        assert torch.isfinite(result.branches[1].model(x)).all()
