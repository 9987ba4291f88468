"""Files written by ``tc.save`` before the format recorded codec modules still load.

The fixtures in legacy/ were written by the code of commit 6c0082c (see make_legacy.py); each is
loaded into a fresh model in a fresh interpreter (so that no family is imported beforehand and the
loader has to find the codec providers itself) and must reproduce the outputs recorded at save
time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torchcompress as tc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
try:
    from make_legacy import FIXTURES
finally:
    sys.path.remove(str(HERE))


def _check(name: str) -> None:
    _, fresh, _ = FIXTURES[name]
    expected = load_file(str(HERE / "legacy" / f"{name}.expected.safetensors"))
    model = tc.load(HERE / "legacy" / f"{name}.safetensors", fresh())
    with torch.no_grad():
        out = model(expected["input"])
    # float kernels sum in an order that depends on the CPU and the thread count: the outputs
    # agree to rounding, not bit for bit, across machines
    torch.testing.assert_close(
        out, expected["output"], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}"
    )


def test_legacy_files_have_no_codec_modules() -> None:
    """The fixtures are of the old format (else they would not test the fallback)."""
    for name in FIXTURES:
        desc = tc.io.describe(HERE / "legacy" / f"{name}.safetensors")
        assert desc["modules"] and "codec_modules" not in desc, name


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_legacy_file_loads_and_gives_the_recorded_outputs(name: str) -> None:
    _check(name)


@pytest.mark.slow
def test_legacy_files_load_in_a_fresh_interpreter() -> None:
    """No family imported beforehand: the loader finds every codec without being told."""
    code = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import torchcompress as tc\n"
        "import test_legacy as t\n"
        "fams = [m for m in ('torchcompress.quant', 'torchcompress.sparsity', "
        "'torchcompress.lowrank') if m in sys.modules]\n"
        "assert not fams, fams\n"
        "for name in sorted(t.FIXTURES):\n"
        "    t._check(name)\n"
        "print(json.dumps(sorted(t.FIXTURES)))\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src")}
    import os

    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == sorted(FIXTURES)
