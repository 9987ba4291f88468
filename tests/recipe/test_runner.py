"""Running recipes: one-to-one with the Python calls, variants, cache, reports, errors, slots."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import torchcompress as tc
from torchcompress.errors import ConfigError, SelectionError
from torchcompress.recipe import PLANNED, STEPS, InternalStepError, Step, StepContext, loads, run
from torchcompress.testing import MixedConvNet

from .conftest import HEAD


def test_a_recipe_does_exactly_what_the_python_calls_do() -> None:
    text = (
        HEAD
        + """
  - finetune: {steps: 3, lr: 0.05}
  - prune: {sparsity: 0.5, scope: global}
  - finalize
  - quantize: {config: {observer: percentile}}
  - convert
"""
    )
    result = run(loads(text))
    recipe_model = result.branches[-1].model

    tc.seed_everything(0)
    model = MixedConvNet().eval()
    train, test = tc.data.digits(image_size=8, batch_size=256)
    calib = [b for b, _ in zip(train, range(2))]
    tc.finetune(model, train, steps=3, lr=0.05, progress=False)
    tc.prune(model.eval(), tc.PruneConfig(sparsity=0.5, scope="global"), calib)
    tc.finalize(model)
    tc.quantize(model, tc.QuantConfig(observer="percentile"), calib)
    tc.convert(model)

    x = next(iter(test))[0]
    with torch.no_grad():
        assert torch.equal(recipe_model(x), model(x))
    # the baseline is the model before the first compressing step; the result is compared to it
    rows = result.rows()
    assert [r["variant"] for r in rows] == [
        f"baseline: {HEAD.split('model: ')[1].split()[0]} + fine-tuned 3 steps",
        "pruned 50% unstructured (magnitude, global) + finalized + W8A8 percentile static PTQ + converted",
    ]
    assert rows[1]["bytes"] < 0.35 * rows[0]["bytes"] and rows[1]["latency"] is None
    assert 0.9 < rows[1]["output_cosine"] <= 1.0 + 1e-6 and rows[0][
        "output_cosine"
    ] == pytest.approx(1.0)


def test_variants_report_and_cache(tmp_path: Path, write) -> None:
    text = (
        HEAD.replace(
            "latency: false",
            "latency: {batch_size: 4, min_rounds: 2, max_rounds: 2, round_time: 0.01}",
        )
        + """
  - finetune: {steps: 2, lr: 0.05}
cache: true
variants:
  - id: masked
    steps:
      - prune: {sparsity: 0.6}
  - from: masked
    steps: [fuse, save]
  - steps:
      - factorize: {rank: 0.5}
"""
    )
    path = write(text)
    lines: list[str] = []
    out = tmp_path / "out"
    first = run(path, out, say=lines.append)
    labels = [b.label for b in first.branches]
    assert labels[1:] == [
        "pruned 60% unstructured (magnitude, layer)",
        "pruned 60% unstructured (magnitude, layer) + BN folded",
        "low-rank rank ratio 0.5",
    ]
    # a line when each step starts and one with its duration when it ends
    assert "[baseline 3/3] finetune: fine-tuned 2 steps, sgd lr 0.05, cosine schedule" in lines
    assert any(line.startswith("[baseline 3/3] finetune: done in ") for line in lines)
    assert any(line.startswith("latency: 2 interleaved rounds") for line in lines)
    rows = first.rows()
    assert rows[1]["effective_macs"] < rows[0]["macs"] == rows[1]["macs"]
    assert rows[3]["params"] < rows[0]["params"] and all(r["latency"] > 0 for r in rows)
    # files the steps write land in the variant's own folder
    saved = out / first.branches[2].folder / "model.safetensors"
    assert saved.is_file()
    # the report: versions, seed, machine, every step's config and figures
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 0 and report["versions"]["torch"] == torch.__version__
    assert report["machine"]["cpu_capability"] and report["machine"]["cores"]
    steps = report["branches"][0]["steps"]
    assert [s["kind"] for s in steps] == ["model", "data", "finetune"]
    assert steps[2]["config"]["steps"] == 2 and steps[2]["figures"]["step"] == 2
    assert report["branches"][1]["steps"][0]["config"]["config"]["sparsity"] == 0.6
    assert report["rows"][1]["effective_macs"] == rows[1]["effective_macs"]
    md = (out / "report.md").read_text()
    assert (
        "| variant | accuracy | params | MACs | eff. MACs | stored | latency | output cos |" in md
    )
    for f in report["files"]:
        assert (out / f).is_file()
    # the second run reuses the trained baseline from the cache and gives the same models
    second = run(path, out, say=lines.append)
    assert [s.cached for s in second.branches[0].steps] == [False, False, True]
    assert second.branches[0].steps[2].figures == first.branches[0].steps[2].figures
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for a, b in zip(first.branches, second.branches):
            assert torch.equal(a.model(x), b.model(x)), a.label


def test_a_failing_run_leaves_the_previous_report(tmp_path: Path, write, monkeypatch) -> None:
    out = tmp_path / "out"
    run(write(HEAD + "variants: [{steps: [fuse]}]\n"), out)
    before = (out / "report.json").read_text()
    # a step that fails on bad input: its own error class, with the file and the step
    bad = write(HEAD + "variants: [{steps: [{prune: {include: [no_such_layer]}}]}]\n", "bad.yaml")
    with pytest.raises(
        SelectionError,
        match=r"bad.yaml: variants\[0\] 'pruned unstructured \(magnitude, layer\)': steps\[0\] \(prune\): .*no_such_layer",
    ):
        run(bad, out)
    assert (out / "report.json").read_text() == before
    # interrupted while the report is written: the previous one stays whole
    import torchcompress.report.writer as writer

    def interrupt(*a: Any, **k: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "render_markdown", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(
            write(HEAD + "variants: [{steps: [convert]}]\n".replace("convert", "fuse"), "c.yaml"),
            out,
        )
    assert (out / "report.json").read_text() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".report-")]


def test_unwritable_output_folder_is_an_error_before_anything_runs(tmp_path: Path, write) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"output folder .* cannot be written"):
        run(write(HEAD), blocker / "out")


@dataclass(frozen=True)
class _BrokenStep(Step):
    """A step whose runner has a bug (for the internal-error path)."""

    kind = "_broken_for_tests"

    def run(self, ctx: StepContext) -> dict[str, Any]:
        raise TypeError("a bug")


def test_an_internal_failure_names_the_step(monkeypatch) -> None:
    monkeypatch.setitem(STEPS._entries, "_broken_for_tests", _BrokenStep)
    with pytest.raises(
        InternalStepError, match=r"steps\[2\] \(_broken_for_tests\): TypeError: a bug"
    ):
        run(loads(HEAD + "  - _broken_for_tests\n"))


@pytest.fixture
def planned_heads(monkeypatch):
    """A step of the planned surface whose verb is not in this build (a slot in PLANNED)."""
    monkeypatch.setitem(PLANNED, "prune_heads", "tc.prune_heads (head pruning)")


@pytest.fixture
def fake_heads(monkeypatch):
    """Stand in for the planned step once its verb lands (the slot filled)."""

    @dataclass(frozen=True)
    class HalveFc(Step):
        kind = "prune_heads"
        ratio: float = 0.5

        def run(self, ctx: StepContext) -> dict[str, Any]:
            ctx.model.fc.weight.data[: int(self.ratio * 10)] = 0  # type: ignore[union-attr]
            return {"ratio": self.ratio}

        def label(self) -> str:
            return f"channels x{self.ratio}"

    monkeypatch.setitem(STEPS._entries, "prune_heads", HalveFc)
    monkeypatch.delitem(PLANNED, "prune_heads", raising=False)
    return HalveFc


SLOT = (
    HEAD
    + """
variants:
  - id: channels
    optional: true
    steps: [{prune_heads: {ratio: 0.5}}, {finetune: {steps: 1}}]
  - from: channels
    steps: [fuse]
"""
)


def test_the_planned_step_slots_skip_until_the_step_exists(fake_heads) -> None:
    result = run(loads(SLOT))
    assert [b.label for b in result.branches[1:]] == [
        "channels x0.5 + fine-tuned 1 step",
        "channels x0.5 + fine-tuned 1 step + BN folded",
    ]
    assert [b.skipped for b in result.branches] == [None, None, None]
    assert result.branches[1].steps[0].figures["ratio"] == 0.5


def test_without_the_planned_step_the_variant_and_its_children_are_skipped(planned_heads) -> None:
    assert "prune_heads" not in STEPS
    result = run(loads(SLOT))
    skipped = [b.skipped for b in result.branches[1:]]
    assert skipped[0] == "needs tc.prune_heads (head pruning), not in this build"
    assert skipped[1].startswith("starts from 'prune_heads (not built)")
    assert len(result.rows()) == 1


def test_a_list_of_steps_runs_and_copies_nothing_it_should_not(tmp_path: Path) -> None:
    from torchcompress import recipe as rc

    steps = [
        rc.ModelStep(factory="torchcompress.testing:TinyCNN", input_shape=(1, 3, 8, 8)),
        rc.FuseStep(),
        rc.ProfileStep(),
        rc.SaveStep(path="tiny.safetensors"),
    ]
    result = run(steps, tmp_path, latency=False)
    assert (tmp_path / "tiny.safetensors").is_file() and (tmp_path / "report.md").is_file()
    fused, base = result.branches[1].model, result.branches[0].model
    assert fused is not base and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules()
    )
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), copy.deepcopy(base)(x), atol=1e-5, rtol=1e-5)
    assert [s.kind for s in result.branches[0].steps] == ["model"]
    assert [s.kind for s in result.branches[1].steps] == ["fuse", "profile", "save"]
    assert result.branches[1].steps[1].figures["totals"]["params"] == result.rows()[1]["params"]


def test_the_distill_step_is_finetune_with_the_baseline_as_teacher() -> None:
    text = HEAD + "  - prune: {sparsity: 0.5, scope: global}\n  - distill: {steps: 3, lr: 0.05}\n"
    result = run(loads(text))
    recipe_model = result.branches[-1].model

    tc.seed_everything(0)
    model = MixedConvNet().eval()
    train, test = tc.data.digits(image_size=8, batch_size=256)
    calib = [b for b, _ in zip(train, range(2))]
    teacher = copy.deepcopy(model)
    tc.prune(model, tc.PruneConfig(sparsity=0.5, scope="global"), calib)
    tc.finetune(
        model, train, steps=3, lr=0.05, progress=False, teacher=teacher, distill=tc.distill.kd()
    )
    x = next(iter(test))[0]
    with torch.no_grad():
        assert torch.equal(recipe_model.eval()(x), model.eval()(x))
    assert result.branches[-1].steps[-1].figures["epochs"] == 1
    # the teacher was the baseline, left as it was
    with torch.no_grad():
        assert torch.equal(result.branches[0].model(x), teacher.eval()(x))
    assert result.rows()[-1]["variant"].endswith("+ distilled 3 steps (kd, T=4)")


def test_distill_without_a_compressing_step_before_it_says_what_to_add() -> None:
    with pytest.raises(ConfigError, match="put a compressing step"):
        run(loads(HEAD + "  - distill: {steps: 1}\n"))


def test_distill_after_convert_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="distill before convert"):
        loads(HEAD + "  - quantize: {}\n  - convert\n  - distill: {steps: 1}\n")
