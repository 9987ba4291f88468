"""Paste the family tour sections of ``docs/tour/`` into README.md between its tour markers, and the
table of forms (``torchcompress.forms``) into docs/composition.md between its forms markers.

Usage::

    python docs/assemble_readme.py          # rewrite README.md and docs/composition.md
    python docs/assemble_readme.py --check  # exit 1 if either is out of date
"""

from __future__ import annotations

import argparse
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
]
START, END = "<!-- tour:start -->", "<!-- tour:end -->"
FORMS_START, FORMS_END = "<!-- forms:start -->", "<!-- forms:end -->"


def tour_text() -> str:
    """The concatenated tour sections, in reading order."""
    files = {p.stem: p for p in sorted((ROOT / "docs" / "tour").glob("*.md"))}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    return "\n\n".join(files[n].read_text().strip() for n in names)


def assemble(readme: str) -> str:
    """README text with the tour between the markers replaced by :func:`tour_text`."""
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the {START} / {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{tour_text()}\n{END}{tail}"


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
    args = ap.parse_args()
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
