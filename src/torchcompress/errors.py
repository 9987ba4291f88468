"""One exception hierarchy for torchcompress.

Every error the library raises on bad input derives from :class:`TorchCompressError`, and also from
the built-in exception a user would naturally catch (``ValueError`` for a bad value, ``TypeError``
for a module or object of the wrong kind, ``FileNotFoundError`` for a missing data set, ...), so both
``except tc.errors.ConfigError`` and ``except ValueError`` work.

Messages name what is wrong (the module, the config field, the batch) and say what to do about it.

Example:
    >>> import torchcompress as tc
    >>> try:
    ...     tc.errors.check_choice("mode", "fast", ("static", "dynamic"))
    ... except ValueError as e:
    ...     message = str(e)
    >>> message
    "mode='fast' is not one of: 'static', 'dynamic'."
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

# (ErrorCollector, a helper for verbs, is importable but not listed: only errors are exported)
__all__ = [
    "CalibrationError",
    "CompressionStateError",
    "ConfigError",
    "DataError",
    "DatasetNotFoundError",
    "DependencyError",
    "NumericalError",
    "PathNotFoundError",
    "SelectionError",
    "ShapeError",
    "TorchCompressError",
    "UnsupportedModuleError",
    "check_choice",
    "check_range",
    "did_you_mean",
]


class TorchCompressError(Exception):
    """Base class of every error raised by torchcompress."""


class ConfigError(TorchCompressError, ValueError):
    """A config field or keyword argument has a value that cannot be used."""


class SelectionError(TorchCompressError, ValueError):
    """An ``include``/``exclude`` pattern or a module name does not match the model."""


class UnsupportedModuleError(TorchCompressError, TypeError):
    """A module that was asked for cannot be handled by the technique."""


class DataError(TorchCompressError, ValueError):
    """Data passed to a verb is empty, malformed, or does not fit the model."""


class CalibrationError(DataError):
    """Calibration produced no (or unusable) statistics for a targeted layer."""


class ShapeError(TorchCompressError, ValueError):
    """Example inputs do not fit the model (raised with the module where the forward failed)."""


class NumericalError(TorchCompressError, ValueError):
    """NaN or Inf in weights or activations, or a numerically impossible request."""


class DatasetNotFoundError(TorchCompressError, FileNotFoundError):
    """A data set folder is missing or does not hold the expected files."""


class PathNotFoundError(TorchCompressError, FileNotFoundError):
    """A file to read, or the folder to write a file into, does not exist (``tc.save``/``tc.load``)."""


class DependencyError(TorchCompressError, ImportError):
    """An optional dependency needed by this feature is not installed."""


class CompressionStateError(TorchCompressError, RuntimeError):
    """The model is not in the state this step needs (e.g. ``convert`` before ``quantize``)."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return a ``" Did you mean ...?"`` suffix listing the closest candidates, or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def check_choice(field: str, value: Any, choices: Sequence[Any], *, owner: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``.

    Args:
        field: the name of the field, used in the message.
        value: the value given.
        choices: the allowed values.
        owner: optional class name, prefixed to the field in the message.
    """
    if value in choices:
        return
    prefix = f"{owner}." if owner else ""
    hint = did_you_mean(str(value), [str(c) for c in choices]) if isinstance(value, str) else ""
    raise ConfigError(
        f"{prefix}{field}={value!r} is not one of: {', '.join(repr(c) for c in choices)}.{hint}"
    )


def check_range(
    field: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    owner: str = "",
) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` (bounds as asked).

    Args:
        field: the name of the field, used in the message.
        value: the number given.
        low: the lower bound, or ``None`` for none.
        high: the upper bound, or ``None`` for none.
        low_inclusive: whether ``value == low`` is allowed.
        high_inclusive: whether ``value == high`` is allowed.
        owner: optional class name, prefixed to the field in the message.
    """
    prefix = f"{owner}." if owner else ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{prefix}{field} must be a number, got {type(value).__name__} {value!r}."
        )
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if value != value:  # NaN
        ok = False
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'[' if low_inclusive and low is not None else '('}{lo}, {hi}{']' if high_inclusive and high is not None else ')'}"
        raise ConfigError(f"{prefix}{field}={value!r} is outside {interval}.")


class ErrorCollector:
    """Gathers the errors of several targets, so that one error names them all.

    A verb checking many layers (a pattern, a group size, a rank that does not fit) runs each
    check under :meth:`catch` and calls :meth:`raise_if_any` once: the user fixes every layer in
    one run instead of one per run. Only torchcompress errors are gathered; the error
    raised has the class of the first one (or their common base) and lists every message.

    Example:
        >>> collector = ErrorCollector("2 layers cannot take the 2:4 pattern")
        >>> for name in ("fc1", "fc2"):
        ...     with collector.catch():
        ...         raise ConfigError(f"layer {name!r} has 6 inputs")
        >>> try:
        ...     collector.raise_if_any()
        ... except ConfigError as e:
        ...     print(e)
        2 layers cannot take the 2:4 pattern:
        - layer 'fc1' has 6 inputs
        - layer 'fc2' has 6 inputs
    """

    def __init__(self, summary: str = "") -> None:
        self.summary = summary
        self.errors: list[TorchCompressError] = []

    @contextlib.contextmanager
    def catch(self) -> Iterator[None]:
        """Run a block; a :class:`TorchCompressError` it raises is kept instead of propagating."""
        try:
            yield
        except TorchCompressError as e:
            self.errors.append(e)

    def raise_if_any(self) -> None:
        """Raise one error naming every gathered one (the error itself when there is one)."""
        if not self.errors:
            return
        if len(self.errors) == 1:
            raise self.errors[0]
        classes = [type(e) for e in self.errors]
        cls = next(
            (c for c in classes[0].__mro__ if all(issubclass(k, c) for k in classes)),
            TorchCompressError,
        )
        head = self.summary or f"{len(self.errors)} problems"
        body = "\n".join(f"- {e}" for e in self.errors)
        raise cls(f"{head}:\n{body}")
