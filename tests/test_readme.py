"""The README: its tour is assembled from docs/tour/, its code blocks are valid Python, and the two
set-up commands CI runs are where .ci/run looks for them."""

from __future__ import annotations

import ast
import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_tour_is_assembled_from_docs_tour() -> None:
    mod = runpy.run_path(str(ROOT / "docs" / "assemble_readme.py"))
    assert mod["assemble"](README) == README, "run `python docs/assemble_readme.py`"


def test_every_python_block_parses_and_imports_what_it_uses() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 5
    for block in blocks:
        tree = ast.parse(block)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        if "tc" in names:
            assert "torchcompress as tc" in block, block.splitlines()[0]


def test_setup_commands_are_marked_for_ci() -> None:
    for marker in ("<!-- command:demo -->", "<!-- command:test -->"):
        after = README.split(marker, 1)[1].lstrip()
        assert after.startswith("```bash\n"), marker
        command = after.split("\n", 2)[1]
        assert "pip install -c constraints-cpu.txt" in command
    assert "torchcompress demo" in README.split("<!-- command:demo -->", 1)[1].split("```", 3)[1]
