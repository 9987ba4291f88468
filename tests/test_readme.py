"""The README: its tour is assembled from docs/tour/, its code blocks are valid Python that runs and
prints what its ``# -> ...`` comments claim (in a temporary folder), and the two set-up commands CI
runs are where .ci/run looks for them."""

from __future__ import annotations

import ast
import re
import runpy
from pathlib import Path

import pytest

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


# ---------------------------------------------------------------- the Python blocks run in CI too

CLAIM = "# -> "


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def _claim(block: str, node: ast.stmt) -> str | None:
    """The output a ``print(...)`` statement claims: its last line's ``# -> PATTERN`` comment."""
    if not (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "print"
    ):
        return None
    line = block.splitlines()[node.end_lineno - 1]  # type: ignore[operator]
    return line.split(CLAIM, 1)[1].strip() if CLAIM in line else None


def run_block(block: str, cwd: Path) -> list[tuple[str, str, str]]:
    """Run a README block statement by statement in ``cwd``; return ``(statement, claim, printed)``
    for every ``print`` that claims its output."""
    import contextlib
    import io
    import os

    tree = ast.parse(block)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    checked = []
    old = os.getcwd()
    os.chdir(cwd)
    try:
        for node in tree.body:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile(ast.Module([node], []), "<README>", "exec"), namespace)
            claim = _claim(block, node)
            if claim is not None:
                checked.append((ast.unparse(node), claim, buf.getvalue()))
    finally:
        os.chdir(old)
    return checked


def test_claims_are_checked_as_doctest_patterns() -> None:
    out = run_block("print({'a': 0.987, 'b': 3})  # -> {'a': 0.98..., 'b': 3}\n", Path.cwd())
    assert out == [
        ("print({'a': 0.987, 'b': 3})", "{'a': 0.98..., 'b': 3}", "{'a': 0.987, 'b': 3}\n")
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "index", range(len(_blocks())), ids=lambda i: _blocks()[i].splitlines()[0][:40]
)
def test_every_python_block_runs_and_prints_what_it_claims(index: int, tmp_path: Path) -> None:
    import doctest

    torch_threads = __import__("torch").get_num_threads()
    try:
        checked = run_block(_blocks()[index], tmp_path)  # files it writes land in tmp_path
    finally:
        __import__("torch").set_num_threads(torch_threads)
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for statement, claim, printed in checked:
        assert checker.check_output(claim + "\n", printed, flags), (
            f"README: {statement} printed {printed!r}, the README says {claim!r}"
        )
    assert not list(ROOT.glob("*.safetensors")) and not list(ROOT.glob("*.onnx"))


def test_the_demo_table_and_plot_come_from_a_demo_run() -> None:
    import json

    demo = json.loads((ROOT / "docs" / "demo" / "demo.json").read_text())
    rows = demo["rows"]
    assert rows[0]["variant"].startswith("baseline: resnet20") and rows[0]["latency"] == 1.0
    assert all(r["variant"] in README for r in rows)  # the table is in the README
    assert demo["machine"]["cpu_capability"] and demo["versions"]["torchcompress"]
    png = ROOT / "docs" / "demo" / "frontier_size.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 200_000
    assert "](docs/demo/frontier_size.png)" in README
