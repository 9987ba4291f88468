"""The summary table (terminal and Markdown) and ``report.md``.

The first row is the baseline, in absolute figures; every other row gives its params, MACs and
stored bytes as ratios to the baseline, its accuracy as measured, and its latency as the median
ratio to the baseline over interleaved rounds, with the spread (half the interquartile range).

Example:
    >>> from torchcompress.report.markdown import fmt_bytes, fmt_count
    >>> fmt_count(269_722), fmt_bytes(1_090_000)
    ('269.7K', '1.04 MiB')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .machine import machine_line

__all__ = ["fmt_bytes", "fmt_count", "legend", "markdown_table", "render_markdown", "text_table"]


def fmt_count(n: float) -> str:
    """``950``, ``269.7K``, ``40.6M``, ``1.2G``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(n: float) -> str:
    """``512 B``, ``3.9 KiB``, ``1.04 MiB``."""
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if abs(n) >= 2**20:
        return f"{n / 2**20:.2f} MiB"
    if abs(n) >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{n:.0f} B"


def _ratio(v: Any, base: Any) -> str:
    if v is None or not base:
        return "-"
    return f"{v / base:.2f}x"


def _columns(rows: Sequence[dict[str, Any]], *, cosine: bool) -> list[tuple[str, str]]:
    cols = [("variant", "variant")]
    if any(r.get("accuracy") is not None for r in rows):
        cols.append(("accuracy", "accuracy"))
    if any(r.get("params") is not None for r in rows):
        cols.append(("params", "params"))
    if any(r.get("macs") is not None for r in rows):
        cols.append(("macs", "MACs"))
        if any((r.get("effective_macs") or 0) < (r.get("macs") or 0) for r in rows):
            cols.append(("effective_macs", "eff. MACs"))
    if any(r.get("bytes") is not None for r in rows):
        cols.append(("bytes", "stored"))
    if any(r.get("latency") is not None for r in rows):
        cols.append(("latency", "latency"))
    if cosine and any(r.get("output_cosine") is not None for r in rows):
        cols.append(("output_cosine", "output cos"))
    return cols


def _cell(key: str, row: dict[str, Any], base: dict[str, Any], first: bool, ms: bool) -> str:
    v = row.get(key)
    if key == "variant":
        return str(v)
    if v is None:
        return "-"
    if key == "accuracy":
        return f"{100 * v:.1f}%"
    if key == "output_cosine":
        return f"{v:.4f}"
    if key == "latency":
        if first:
            return (
                f"1.00x ({row['latency_ms']:.2f} ms)" if ms and row.get("latency_ms") else "1.00x"
            )
        spread = row.get("latency_spread")
        return f"{v:.2f}x ±{100 * spread:.0f}%" if spread is not None else f"{v:.2f}x"
    if first:
        return fmt_bytes(v) if key == "bytes" else fmt_count(v)
    return _ratio(v, base.get(key))


def _grid(
    rows: Sequence[dict[str, Any]], *, cosine: bool, ms: bool
) -> tuple[list[str], list[list[str]]]:
    cols = _columns(rows, cosine=cosine)
    base = rows[0] if rows else {}
    body = [[_cell(k, r, base, i == 0, ms) for k, _ in cols] for i, r in enumerate(rows)]
    return [h for _, h in cols], body


def text_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary table for a terminal (fixed-width columns)."""
    if not rows:
        return "(no models measured)"
    header, body = _grid(
        rows, cosine=not any(r.get("accuracy") is not None for r in rows), ms=False
    )
    widths = [max(len(c) for c in col) for col in zip(header, *body)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), *(line(r) for r in body)])


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary table in Markdown."""
    if not rows:
        return "(no models measured)"
    header, body = _grid(rows, cosine=True, ms=True)
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *body]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in lines)


def legend(rows: Sequence[dict[str, Any]]) -> str:
    """The sentences under the summary table that say what its columns mean."""
    parts = [
        "The first row is the baseline; the others are relative to it (params, MACs, stored bytes)."
    ]
    cols = {k for k, _ in _columns(rows, cosine=True)}
    if "effective_macs" in cols:
        parts.append(
            "eff. MACs are those a sparsity-aware kernel would run; dense kernels run all the MACs."
        )
    if "latency" in cols:
        parts.append(
            "Latency is the median ratio to the baseline over interleaved timing rounds, ± half the "
            "interquartile range of the per-round ratios."
        )
    if "output_cosine" in cols:
        parts.append("output cos is the mean cosine of each model's outputs to the baseline's.")
    return " ".join(parts)


def _figures_text(figures: dict[str, Any]) -> str:
    shown = []
    for k, v in figures.items():
        if k in ("rows", "layers"):
            continue
        if isinstance(v, float):
            shown.append(f"{k} {v:.4g}")
        elif isinstance(v, dict):
            shown.append(f"{k} {json.dumps(v)}")
        else:
            shown.append(f"{k} {v}")
    return ", ".join(shown)


def render_markdown(
    data: dict[str, Any], plots: Sequence[tuple[str, str]], notes: Sequence[str]
) -> str:
    """``report.md`` from the report dict, the plot files (``(file, caption)``) and notes."""
    recipe = data.get("recipe", {})
    title = recipe.get("name") or recipe.get("file") or "recipe"
    lines = [f"# torchcompress report: {title}", ""]
    if recipe.get("description"):
        lines += [recipe["description"].strip(), ""]
    v = data.get("versions", {})
    lines += [
        f"Ran {('`' + recipe['file'] + '`') if recipe.get('file') else 'a recipe'} on "
        f"{data.get('started', '?')} in {data.get('duration_s', 0):.0f} s, seed {data.get('seed')}, "
        f"device {data.get('device')}; torchcompress {v.get('torchcompress', '?')}.",
        "",
        f"Machine: {machine_line(data)}." if "machine" in data else "",
        "",
        "## Summary",
        "",
        markdown_table(data.get("rows", [])),
        "",
        legend(data.get("rows", [])),
        "",
    ]
    for file, caption in plots:
        lines += [f"![{caption}]({file})", ""]
    lines += ["## What ran", ""]
    for b in data.get("branches", []):
        head = f"### {b['label']}"
        if b.get("from"):
            head += f" (from {b['from']})"
        lines += [head, ""]
        if b.get("skipped"):
            lines += [f"Skipped: {b['skipped']}.", ""]
            continue
        for i, s in enumerate(b.get("steps", []), 1):
            timing = "cached" if s.get("cached") else f"{s['duration_s']:.1f} s"
            lines.append(f"{i}. **{s['kind']}**: {s['description']} ({timing})")
            cfg = {k: v for k, v in s.get("config", {}).items() if v not in (None, {}, [], ())}
            if cfg:
                lines.append(f"   - config: `{json.dumps(cfg, default=str)}`")
            figs = _figures_text(s.get("figures", {}))
            if figs:
                lines.append(f"   - figures: {figs}")
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines).replace("\n\n\n", "\n\n")
