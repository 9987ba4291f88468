"""Side-by-side timing and result files for the benchmarks.

Every benchmark script times its variants *in one process*, interleaved round by round (so a burst
of load on these shared machines hits every variant alike), reports medians and the median of the
per-round ratios against a baseline, records the machine, torch version and date, and writes one
Markdown file under ``benchmarks/results/``. ``python -m benchmarks.report`` assembles those files
into ``BENCHMARKS.md``.

Example:
    >>> from benchmarks.harness import time_variants
    >>> r = time_variants({"a": lambda: sum(range(100)), "b": lambda: sum(range(200))},
    ...                   baseline="a", rounds=3, min_time=0.01)
    >>> sorted(r.median_s)
    ['a', 'b']
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, threads, ISA level, torch and Python versions, and the date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        isa = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa": isa,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.date.today().isoformat(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line describing the machine, for result headers."""
    i = info or machine_info()
    gpu = f", GPU {i['cuda']}" if i.get("cuda") else ""
    return (
        f"{i['cpu']} ({i['cores']} cores, {i['threads']} torch threads, {i['isa']}){gpu}; "
        f"torch {i['torch']}, Python {i['python']}; {i['date']}"
    )


@dataclass
class Timing:
    """Timings of several variants measured side by side."""

    median_s: dict[str, float]
    min_s: dict[str, float]
    ratio: dict[str, float]  # median over rounds of (variant / baseline)
    ratio_range: dict[str, tuple[float, float]]
    baseline: str
    rounds: int
    per_round: dict[str, list[float]] = field(default_factory=dict)

    def row(self, name: str) -> dict[str, str]:
        lo, hi = self.ratio_range[name]
        return {
            "variant": name,
            "median ms": f"{1000 * self.median_s[name]:.2f}",
            f"ratio to {self.baseline}": f"{self.ratio[name]:.2f}x",
            "ratio range": f"{lo:.2f}–{hi:.2f}x",
        }


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _blocked(fn: Callable[[], Any], min_time: float) -> float:
    """Mean seconds per call over a block of calls lasting at least ``min_time``."""
    n = 0
    _sync()
    t0 = time.perf_counter()
    while True:
        fn()
        n += 1
        _sync()
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def time_variants(
    variants: dict[str, Callable[[], Any]],
    *,
    baseline: str | None = None,
    rounds: int = 7,
    min_time: float = 0.3,
    warmup: int = 2,
    seed: int = 0,
) -> Timing:
    """Time each variant in interleaved rounds (shuffled order each round) and compare.

    Args:
        variants: name -> zero-argument callable doing one unit of work.
        baseline: the variant ratios are taken against (default: the first).
        rounds: interleaved rounds; medians are over rounds.
        min_time: seconds each variant runs per round (a block of repeated calls).
        warmup: untimed calls of each variant before the first round.
        seed: for the round order.
    """
    names = list(variants)
    base = baseline or names[0]
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                variants[n]()
        rng = random.Random(seed)
        per: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(rounds):
            order = names[:]
            rng.shuffle(order)
            for n in order:
                per[n].append(_blocked(variants[n], min_time))
    ratios = {n: [a / b for a, b in zip(per[n], per[base])] for n in names}
    return Timing(
        median_s={n: statistics.median(v) for n, v in per.items()},
        min_s={n: min(v) for n, v in per.items()},
        ratio={n: statistics.median(r) for n, r in ratios.items()},
        ratio_range={n: (min(r), max(r)) for n, r in ratios.items()},
        baseline=base,
        rounds=rounds,
        per_round=per,
    )


def md_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table from a list of dicts (columns default to the first row's keys)."""
    if not rows:
        return "(no rows)\n"
    cols = list(columns or rows[0].keys())
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out) + "\n"


class Report:
    """A benchmark's result file: a title, the command that reproduces it, the machine, sections.

    Args:
        name: file stem under ``benchmarks/results/`` (also the sort key in BENCHMARKS.md).
        title: the section heading in BENCHMARKS.md.
        command: the shell command that reproduces the figures.
    """

    def __init__(self, name: str, title: str, command: str) -> None:
        self.name = name
        self.title = title
        self.command = command
        self.info = machine_info()
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        """Append Markdown text (a paragraph, a table)."""
        self.parts.append(text.rstrip() + "\n")

    def table(
        self,
        rows: Sequence[dict[str, Any]],
        columns: Sequence[str] | None = None,
        caption: str = "",
    ) -> None:
        """Append a table, with an optional caption line above it."""
        if caption:
            self.add(caption)
        self.add(md_table(rows, columns))

    def render(self) -> str:
        head = (
            f"## {self.title}\n\nCommand: `{self.command}`  \nMachine: {machine_line(self.info)}\n"
        )
        return head + "\n" + "\n".join(self.parts)

    def write(self, out_dir: Path | None = None) -> Path:
        """Write ``results/<name>.md`` and return its path."""
        d = out_dir or RESULTS
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{self.name}.md"
        path.write_text(self.render())
        return path
