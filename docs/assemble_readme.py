"""Paste the family tour sections of ``docs/tour/`` into README.md between its tour markers, and the
demo's table and plot (kept in ``docs/demo/``, taken from a real ``torchcompress demo`` run) between
its demo markers, and the table of forms (``torchcompress.forms``) into docs/composition.md between
its forms markers.

Usage::

    python docs/assemble_readme.py          # rewrite README.md and docs/composition.md
    python docs/assemble_readme.py --check  # exit 1 if either is out of date
    torchcompress demo --out runs/demo && python docs/assemble_readme.py --demo runs/demo
                                            # take the demo's results into docs/demo/, then rewrite
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The order a newcomer reads the families in; a tour file not listed here is appended at the end.
ORDER = [
    "data-train",
    "profile-fusion",
    "quant",
    "qat",
    "ptq",
    "sparsity",
    "structured",
    "lowrank",
    "composition",
    "distill",
    "recipes",
]
START, END = "<!-- tour:start -->", "<!-- tour:end -->"
DEMO_START, DEMO_END = "<!-- demo:start -->", "<!-- demo:end -->"
FORMS_START, FORMS_END = "<!-- forms:start -->", "<!-- forms:end -->"
#: What the README keeps of a demo run: its summary (``demo.json``) and one plot.
DEMO = ROOT / "docs" / "demo"
DEMO_PLOT = "frontier_size.png"


def tour_text() -> str:
    """The concatenated tour sections, in reading order."""
    files = {p.stem: p for p in sorted((ROOT / "docs" / "tour").glob("*.md"))}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    return "\n\n".join(files[n].read_text().strip() for n in names)


def take_demo(folder: Path) -> None:
    """Keep the summary of the demo run in ``folder`` (its report.json) and its size plot."""
    report = json.loads((folder / "report.json").read_text())
    keep = {k: report[k] for k in ("started", "duration_s", "seed", "versions", "machine", "rows")}
    for row in keep["rows"]:
        row.pop("layers", None)
    DEMO.mkdir(parents=True, exist_ok=True)
    (DEMO / "demo.json").write_text(json.dumps(keep, indent=1) + "\n")
    shutil.copyfile(folder / DEMO_PLOT, DEMO / DEMO_PLOT)


def demo_text() -> str:
    """The demo's table, legend and plot, from ``docs/demo/demo.json``."""
    sys.path.insert(0, str(ROOT / "src"))
    from torchcompress.report import legend, machine_line, markdown_table

    demo = json.loads((DEMO / "demo.json").read_text())
    v = demo["versions"]
    return "\n\n".join(
        [
            f"`torchcompress demo` (the full run; `--quick` is the shortened one CI runs) took "
            f"{demo['duration_s']:.0f} s on {machine_line(demo)}, torchcompress "
            f"{v['torchcompress']}, seed {demo['seed']}. Its table and its plot, pasted by "
            "`docs/assemble_readme.py` from that run:",
            markdown_table(demo["rows"]),
            legend(demo["rows"]) + " Latency on a shared machine is noisy: read the spread.",
            f"![accuracy against stored size, the baseline marked, the frontier drawn]"
            f"(docs/demo/{DEMO_PLOT})",
        ]
    )


def _between(text: str, start: str, end: str, content: str) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"README.md lacks the {start} / {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}\n{end}{tail}"


def assemble(readme: str) -> str:
    """README text with the tour between the tour markers replaced by :func:`tour_text` and, where
    the README has demo markers, the demo's results by :func:`demo_text`."""
    text = _between(readme, START, END, tour_text())
    if DEMO_START in text:
        text = _between(text, DEMO_START, DEMO_END, demo_text())
    return text


def assemble_forms(doc: str) -> str:
    """docs/composition.md text with the table between the forms markers regenerated."""
    sys.path.insert(0, str(ROOT / "src"))
    from torchcompress import forms

    if FORMS_START not in doc or FORMS_END not in doc:
        raise SystemExit(f"docs/composition.md lacks the {FORMS_START} / {FORMS_END} markers")
    head, rest = doc.split(FORMS_START, 1)
    _, tail = rest.split(FORMS_END, 1)
    return f"{head}{FORMS_START}\n{forms.markdown_table()}{FORMS_END}{tail}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    ap.add_argument("--demo", type=Path, help="a demo output folder to take the results from")
    args = ap.parse_args()
    if args.demo is not None:
        take_demo(args.demo)
    stale = False
    for path, build in (
        (ROOT / "README.md", assemble),
        (ROOT / "docs" / "composition.md", assemble_forms),
    ):
        old = path.read_text()
        new = build(old)
        stale |= new != old
        if not args.check:
            path.write_text(new)
    if args.check:
        sys.exit(1 if stale else 0)


if __name__ == "__main__":
    main()
