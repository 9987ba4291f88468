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
