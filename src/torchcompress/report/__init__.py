"""The compression report every ``torchcompress run`` (and the demo) writes.

To its output folder:

- ``report.md``: what ran (recipe, versions, seed, machine), one summary table of every variant
  against the baseline (accuracy, params, MACs, stored bytes, CPU latency with its spread), the
  plots, and each step with its config, duration and figures;
- ``report.json``: the same, machine-readable;
- plots (with matplotlib, the ``plot`` extra): accuracy against stored size and against latency
  (the trade-off frontier, baseline marked) and stored bytes / non-zero weights per layer
  relative to the baseline (where bit widths, ranks, sparsity and removed channels show).

The files are written atomically: each is written beside its final name and moved into place,
``report.json`` last, so an interrupted run leaves the previous report as it was. Without
matplotlib the report says so and has no plots.

The package reads the plain dict of :meth:`torchcompress.recipe.RunResult.to_dict`, so anything
that produces that dict can be reported.

Example:
    >>> from torchcompress.report import text_table
    >>> rows = [
    ...     {"variant": "baseline", "accuracy": 0.98, "params": 1000, "macs": 5000,
    ...      "effective_macs": 5000, "bytes": 4000, "latency": 1.0, "latency_spread": 0.0},
    ...     {"variant": "int8", "accuracy": 0.97, "params": 1000, "macs": 5000,
    ...      "effective_macs": 5000, "bytes": 1100, "latency": 0.5, "latency_spread": 0.04},
    ... ]
    >>> print(text_table(rows))
    variant   accuracy  params   MACs   stored    latency
    baseline     98.0%    1.0K   5.0K  3.9 KiB      1.00x
    int8         97.0%   1.00x  1.00x    0.28x  0.50x ±4%
"""

from __future__ import annotations

from .machine import environment, machine_line
from .markdown import legend, markdown_table, render_markdown, text_table
from .writer import write_report

__all__ = [
    "environment",
    "legend",
    "machine_line",
    "markdown_table",
    "render_markdown",
    "text_table",
    "write_report",
]
