"""Plots of a report (matplotlib, the ``plot`` extra; without it the report has none, and says so).

- ``frontier_size.png``: accuracy (or output cosine, without labels) against stored size;
- ``frontier_latency.png``: the same against latency relative to the baseline;
- ``layers.png``: per layer, stored bytes and non-zero weights relative to the baseline (where
  bit widths, ranks, sparsity and removed channels show).

The baseline is a star; points on the trade-off frontier (nothing both better and smaller/faster)
are joined by a line.

Example:
    >>> from torchcompress.report.plots import frontier
    >>> frontier([(1.0, 0.9), (0.3, 0.89), (0.5, 0.8)])
    [1, 0]
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MISSING_NOTE", "frontier", "have_matplotlib", "make_plots"]

MISSING_NOTE = (
    "no plots: matplotlib is not installed (pip install 'torchcompress[plot]'); the figures are in "
    "the tables"
)

_MARKERS = "o^sDvP<>Xhp*"


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (smaller x, larger y), by x."""
    keep = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def _quality(rows: Sequence[dict[str, Any]]) -> tuple[str, str, float] | None:
    if all(r.get("accuracy") is not None for r in rows):
        return "accuracy", "test accuracy (%)", 100.0
    if all(r.get("output_cosine") is not None for r in rows):
        return "output_cosine", "output cosine to the baseline", 1.0
    return None


def _scatter(
    plt: Any,
    rows: Sequence[dict[str, Any]],
    xkey: str,
    xlabel: str,
    title: str,
    path: Path,
    xscale: float,
) -> bool:
    q = _quality(rows)
    usable = [r for r in rows if r.get(xkey) is not None]
    if q is None or len(usable) < 2:
        return False
    ykey, ylabel, yscale = q
    fig, ax = plt.subplots(figsize=(9, 4.6), dpi=90)
    pts = [(r[xkey] * xscale, r[ykey] * yscale) for r in usable]
    front = frontier(pts)
    if len(front) > 1:
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            "-",
            color="0.7",
            zorder=1,
            label="frontier",
        )
    for i, (r, (x, y)) in enumerate(zip(usable, pts)):
        base = r is rows[0]
        ax.scatter(
            [x],
            [y],
            marker="*" if base else _MARKERS[i % len(_MARKERS)],
            s=220 if base else 70,
            zorder=3,
            label=_short(r["variant"]),
            color="black" if base else None,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _short(label: str, n: int = 60) -> str:
    return label if len(label) <= n else label[: n - 3] + "..."


def _layer_ratios(
    rows: Sequence[dict[str, Any]],
) -> tuple[list[str], list[tuple[str, list[float], list[float]]]]:
    base = rows[0].get("layers") or []
    names = [r["name"] for r in base if r.get("macs") and r.get("params")]
    base_by = {r["name"]: r for r in base}
    series = []
    for row in rows[1:]:
        layers = row.get("layers") or []
        b_ratio, d_ratio = [], []
        for n in names:
            under = [r for r in layers if r["name"] == n or r["name"].startswith(n + ".")]
            total_b = sum(r["bytes"] for r in under)
            total_nz = sum(r["nonzero_params"] for r in under)
            b_ratio.append(total_b / base_by[n]["bytes"] if base_by[n]["bytes"] else float("nan"))
            d_ratio.append(
                total_nz / base_by[n]["params"] if base_by[n]["params"] else float("nan")
            )
        series.append((row["variant"], b_ratio, d_ratio))
    return names, series


def make_plots(data: dict[str, Any], folder: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Write the plots of the report dict ``data`` into ``folder``.

    Returns:
        ``[(file name, caption)]`` of the plots written, and notes (why some are missing).
    """
    if not have_matplotlib():
        return [], [MISSING_NOTE]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [dict(r, layers=_layers_of(data, r["variant"])) for r in data.get("rows", [])]
    written: list[tuple[str, str]] = []
    notes: list[str] = []
    if len(rows) < 2:
        return [], ["no plots: a single model (nothing to compare with the baseline)"]
    if _scatter(
        plt,
        rows,
        "bytes",
        "stored size (KiB)",
        "Accuracy against stored size",
        folder / "frontier_size.png",
        1 / 1024,
    ):
        written.append(("frontier_size.png", "accuracy against stored size (baseline: star)"))
    if _scatter(
        plt,
        rows,
        "latency",
        "latency relative to the baseline",
        "Accuracy against latency",
        folder / "frontier_latency.png",
        1.0,
    ):
        written.append(("frontier_latency.png", "accuracy against latency (baseline: star)"))
    names, series = _layer_ratios(rows)
    if names and series:
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.4), dpi=90, sharex=True)
        xs = list(range(len(names)))
        for i, (label, b_ratio, d_ratio) in enumerate(series):
            m = _MARKERS[i % len(_MARKERS)]
            ax1.plot(xs, b_ratio, marker=m, ms=4, lw=1, label=_short(label))
            ax2.plot(xs, d_ratio, marker=m, ms=4, lw=1)
        ax1.set_ylabel("stored bytes\n(x baseline)")
        ax2.set_ylabel("non-zero weights\n(x baseline)")
        ax1.set_title("Per layer, relative to the baseline")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
            ax.set_ylim(bottom=0)
        if len(names) <= 60:
            ax2.set_xticks(xs)
            ax2.set_xticklabels(names, rotation=90, fontsize=6)
        else:
            ax2.set_xlabel("layer (model order)")
        ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        fig.savefig(folder / "layers.png")
        plt.close(fig)
        written.append(
            ("layers.png", "stored bytes and non-zero weights per layer, relative to the baseline")
        )
    if not written:
        notes.append("no plots: the models have no accuracy or output cosine to plot")
    return written, notes


def _layers_of(data: dict[str, Any], label: str) -> list[dict[str, Any]]:
    for b in data.get("branches", []):
        if b.get("label") == label:
            return b.get("figures", {}).get("layers") or []
    return []
