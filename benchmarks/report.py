"""Assemble ``BENCHMARKS.md`` from the result files under ``benchmarks/results/``.

Usage: ``python -m benchmarks.report``
"""

from __future__ import annotations

from pathlib import Path

from .harness import RESULTS

ROOT = Path(__file__).resolve().parent.parent

PREAMBLE = """# Benchmarks

Every figure here comes from a script in `benchmarks/` that anyone can rerun (the command is given
with each section, with the machine and the date it ran on). Variants are timed side by side in one
process, interleaved round by round; we quote medians and the median of per-round ratios, since
these machines are shared and noisy. Ratios below 1.00x are faster (or smaller) than the baseline.
"""


def main() -> None:
    parts = [PREAMBLE]
    for path in sorted(RESULTS.glob("*.md")):
        parts.append(path.read_text().rstrip() + "\n")
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(parts) - 1} result files")


if __name__ == "__main__":
    main()
