"""Writing a report atomically: each file beside its final name, then moved into place.

Plots first, then ``report.md``, then ``report.json`` (the commit: a reader that trusts
``report.json`` never sees a half-written report). Plots of the previous report that the new one
does not have are removed. An interrupted run never reaches this point, so the previous report
stays intact.

Example:
    >>> import json, tempfile, pathlib
    >>> from torchcompress.report import write_report
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> files = write_report({"rows": [], "branches": []}, out, plots=False)
    >>> files, json.loads((out / "report.json").read_text())["files"]
    (['report.md', 'report.json'], ['report.md', 'report.json'])
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .markdown import render_markdown
from .plots import make_plots

__all__ = ["write_report", "write_text_files"]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def write_report(
    data: dict[str, Any], out: str | os.PathLike[str], *, plots: bool = True
) -> list[str]:
    """Write ``report.md``, ``report.json`` and the plots of ``data`` into ``out``, atomically.

    Args:
        data: the report dict (:meth:`torchcompress.recipe.RunResult.to_dict`).
        out: the output folder (created if missing).
        plots: draw the plots (needs matplotlib; without it the report notes their absence).

    Returns:
        The names of the files written, relative to ``out``.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=folder))
    try:
        notes = list(data.get("notes", []))
        drawn: list[tuple[str, str]] = []
        if plots:
            drawn, plot_notes = make_plots(data, stage)
            notes += plot_notes
        files = [f for f, _ in drawn] + ["report.md", "report.json"]
        (stage / "report.md").write_text(render_markdown(data, drawn, notes))
        full = _json_safe({**data, "notes": notes, "files": files})
        (stage / "report.json").write_text(json.dumps(full, indent=2, allow_nan=False) + "\n")
        old_files: list[str] = []
        old = folder / "report.json"
        if old.is_file():
            try:
                old_files = list(json.loads(old.read_text()).get("files", []))
            except (ValueError, AttributeError):
                old_files = []
        for name in files:  # report.json last
            os.replace(stage / name, folder / name)
        for name in old_files:
            if name not in files and "/" not in name and name.endswith(".png"):
                (folder / name).unlink(missing_ok=True)
        return files
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text_files(out: str | os.PathLike[str], files: dict[str, str]) -> list[str]:
    """Write ``{name: text}`` into ``out``, each file atomically (written beside it, then moved).

    Returns:
        The names written.
    """
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            f"output folder {str(folder)!r} cannot be written: {e.strerror or e}."
        ) from None
    for name, text in files.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return list(files)
