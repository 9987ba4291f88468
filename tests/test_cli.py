"""Smoke tests of the command line: ``torchcompress --help`` and ``profile`` of a tc.models name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "torchcompress", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    proc = _run("--help")  # python -m torchcompress: the package's __main__
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "profile"):
        assert command in proc.stdout
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"torchcompress {tc.__version__}"


def test_the_console_script_runs() -> None:
    script = Path(sys.executable).with_name("torchcompress")
    if not script.exists():
        pytest.skip("the torchcompress console script is not installed in this environment")
    proc = subprocess.run(
        [str(script), "--help"],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "profile" in proc.stdout, proc.stderr


def _macs_by_hand(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and linear layers, counted from the outputs."""
    total = 0

    def count(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total


def test_profile_of_a_model_name_counts_params_and_macs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "resnet20", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = tc.models.resnet20().eval()
    assert report["total"]["params"] == sum(p.numel() for p in model.parameters()) == 269722
    assert report["total"]["macs"] == _macs_by_hand(model, torch.randn(1, 3, 32, 32))
    assert report["total"]["flops"] == 2 * report["total"]["macs"]
    # other input shapes and the table
    assert main(["profile", "resnet20", "--input-shape", "2,3,16,16"]) == 0
    table = capsys.readouterr().out
    assert "conv1" in table and "fc" in table


def test_profile_errors_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "torchcompress: error: Unknown model 'no_such_model'" in err and "resnet20" in err
    with pytest.raises(SystemExit) as e:
        main(["profile", "resnet20", "--input-shape", "1,a"])
    assert e.value.code == 2


# ------------------------------------------------------------------ recipes, errors, global options

TINY = """
latency: false
steps:
  - model: torchcompress.testing:MixedConvNet
  - data: {name: digits, kwargs: {image_size: 8, batch_size: 256}, calib_batches: 1}
  - finetune: {steps: 2}
variants:
  - steps: [{prune: {sparsity: 0.5}}]
"""


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    # progress lines ("[step i/n] ...") may come first; the error is one line, the last
    lines = [
        line for line in captured.err.splitlines() if line.strip() and not line.startswith("[")
    ]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_every_command_has_a_description_an_example_and_the_models(capsys) -> None:
    for command in ("demo", "run", "profile", "evaluate"):
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "example" in text and f"torchcompress {command}" in text
        assert "global options (before or after the command)" in text
        if command != "run":
            assert "resnet20" in text and "mobilenet_v2" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "demo" in top and "evaluate" in top


def test_global_options_before_or_after_the_command(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY)
    for argv in (
        ["-v", "--seed", "1", "--out", str(tmp_path / "a"), "run", str(recipe)],
        ["run", str(recipe), "-v", "--seed", "1", "--out", str(tmp_path / "b")],
    ):
        assert main(argv) == 0
    a = json.loads((tmp_path / "a" / "report.json").read_text())
    b = json.loads((tmp_path / "b" / "report.json").read_text())
    assert a["seed"] == b["seed"] == 1
    assert a["rows"][1]["accuracy"] == b["rows"][1]["accuracy"]  # same seed, same run
    out = capsys.readouterr()
    assert "pruned 50% unstructured (magnitude, layer)" in out.out and "report:" in out.out
    assert "[baseline 3/3] finetune: done in" in out.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "recipe file '{dir}/missing.yaml' does not exist."),
        ("steps: [model: resnet20\n", "r.yaml: line 2, column 1: not valid YAML/JSON"),
        (
            "steps: [{model: resnet20}, {quantise: {}}]\n",
            "unknown step 'quantise' (steps: convert, data, distill, evaluate,",
        ),
        ("steps: [{model: resnet20}, {quantize: {observr: mse}}]\n", "Did you mean 'observer' or"),
        ("steps: [{model: 'nopkg.models:build'}]\n", "module 'nopkg.models' does not import"),
        ("steps: [{model: 'torch.nn:Linear'}]\n", "missing a required argument: 'in_features'"),
        ("steps: [{model: resnet20}, {quantize: {}}, {prune: {}}]\n", "prune before quantize"),
    ],
)
def test_bad_recipes_exit_2_with_one_line(tmp_path: Path, capsys, text, expected) -> None:
    path = tmp_path / ("missing.yaml" if text is None else "r.yaml")
    if text is not None:
        path.write_text(text)
    assert main(["run", str(path), "--check"]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("torchcompress: error: ") and expected.format(dir=tmp_path) in line


def test_other_bad_input_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["profile", "torch.nn:Linear"]) == 2  # a factory that needs arguments
    assert "torch.nn:Linear: missing a required argument: 'in_features'" in _one_line_error(capsys)
    assert main(["profile", "torch.nn:Linear(8, 2)", "--input-shape", "1,3"]) == 2
    assert "which got inputs (1, 3)" in _one_line_error(capsys)
    assert main(["profile", "torch.nn:Linear(8, 2)", "--input-shape", "1,8", "--depth", "0"]) == 0
    capsys.readouterr()
    blocker = tmp_path / "file"
    blocker.write_text("")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY)
    assert main(["run", str(recipe), "--out", str(blocker / "out")]) == 2
    assert "cannot be written" in _one_line_error(capsys)
    assert main(["profile", "resnet20", "--out", str(blocker / "out")]) == 2
    assert capsys.readouterr().out == ""  # nothing printed before the error
    with pytest.raises(SystemExit) as e:
        main(["run"])  # argparse: one line, no usage banner
    assert e.value.code == 2
    assert "the following arguments are required: recipe" in _one_line_error(capsys)
    assert main(["--threads", "0", "run", str(recipe), "--check"]) == 2
    _one_line_error(capsys)


def test_an_internal_failure_exits_1_naming_the_step(tmp_path: Path, capsys, monkeypatch) -> None:
    from torchcompress.recipe import FuseStep

    def broken(self, ctx):
        raise TypeError("a bug")

    monkeypatch.setattr(FuseStep, "run", broken)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY.replace("[{prune: {sparsity: 0.5}}]", "[fuse]"))
    assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 1
    line = _one_line_error(capsys)
    assert (
        "internal error: " in line
        and "variants[0] 'BN folded': steps[0] (fuse): TypeError: a bug" in line
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "o"), "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_progress_lines_when_piped_and_evaluate(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY)
    proc = _run("run", str(recipe), "--out", str(tmp_path / "o"), "--no-latency")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert "[baseline 3/3] finetune: fine-tuned 2 steps, sgd lr 0.01, cosine schedule" in err
    assert any(
        line.startswith("[pruned 50% unstructured (magnitude, layer) 1/1] prune: done in")
        for line in err
    )
    weights = tmp_path / "w.safetensors"
    tc.save(tc.prune(tc.models.resnet20(), tc.PruneConfig(sparsity=0.5)), weights)
    assert (
        main(
            [
                "evaluate",
                "resnet20",
                "--weights",
                str(weights),
                "--data",
                "digits(image_size=8)",
                "--format",
                "json",
            ]
        )
        == 0
    )


def test_check_and_dump_give_back_the_recipe_as_understood(tmp_path: Path, capsys) -> None:
    from torchcompress.recipe import load, loads

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        assert main(["run", str(path), "--check", "--dump"]) == 0
        out = capsys.readouterr().out
        first, dumped = out.split("\n", 1)
        assert first.startswith(f"{path}: valid; baseline: model, data")
        again = loads(dumped, check=False)
        original = load(path, check=False)
        assert again.steps == original.steps, path.name
        assert [v.steps for v in again.variants] == [v.steps for v in original.variants]
