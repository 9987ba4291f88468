"""Progress bars for long work, shown only when run interactively.

Every verb that does long work (calibration, pruning passes, SVDs, training) takes ``progress=``:
``None`` (the default) shows a bar when standard error is a terminal, ``True`` always, ``False``
never. Nothing is printed otherwise; diagnostic messages go through :mod:`logging`.

Example:
    >>> from torchcompress.progress import progress_bar
    >>> sum(progress_bar(range(3), desc="demo", enabled=False))
    3
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress_bar", "progress_enabled"]

T = TypeVar("T")


def progress_enabled(enabled: bool | None) -> bool:
    """Resolve ``progress=``: ``None`` means "when stderr is a terminal"."""
    if enabled is None:
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False
    return bool(enabled)


def progress_bar(
    iterable: Iterable[T],
    *,
    desc: str = "",
    total: int | None = None,
    enabled: bool | None = None,
    leave: bool = False,
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when enabled, else return it unchanged."""
    if not progress_enabled(enabled):
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)
