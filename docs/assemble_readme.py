"""Paste the family tour sections of ``docs/tour/`` into README.md between its tour markers.

Usage::

    python docs/assemble_readme.py          # rewrite README.md
    python docs/assemble_readme.py --check  # exit 1 if README.md is out of date
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
    "sparsity",
    "lowrank",
    "distill",
    "recipes",
]
START, END = "<!-- tour:start -->", "<!-- tour:end -->"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = ap.parse_args()
    path = ROOT / "README.md"
    old = path.read_text()
    new = assemble(old)
    if args.check:
        sys.exit(0 if new == old else 1)
    path.write_text(new)


if __name__ == "__main__":
    main()
