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


#: Reading order (foundation first, then each family); result files not listed follow, sorted.
ORDER = [
    "profile_counters",
    "fusion_latency",
    "train_loop",
    "calibration_memory",
    "quant_minilm",
    "quant_cnn",
    "deploy",
    "qat_cnn",
    "ptq_minilm",
    "ptq_gpt",
    "prune_minilm",
    "prune_cnn",
    "lowrank_minilm",
    "lowrank_cnn",
    "distill_digits",
]


def _anchor(title: str) -> str:
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.strip().replace(" ", "-")


def main() -> None:
    files = {p.stem: p for p in RESULTS.glob("*.md")}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    texts = [files[n].read_text().rstrip() + "\n" for n in names]
    toc = []
    for text in texts:
        title = text.splitlines()[0].lstrip("#").strip()
        toc.append(f"- [{title}](#{_anchor(title)})")
    parts = [PREAMBLE, "\n".join(toc) + "\n", *texts]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(texts)} result files")


if __name__ == "__main__":
    main()
