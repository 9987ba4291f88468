"""Name -> implementation registries.

Each technique family keeps its pluggable pieces (observers, pruning criteria, rank rules, sparsity
patterns, profiler cost formulas, ...) in a :class:`Registry`, so that adding one is a small class
with a decorator rather than an edit to a walker.

Example:
    >>> from torchcompress.registry import Registry
    >>> SCHEDULES = Registry("schedule")
    >>> @SCHEDULES.register("flat")
    ... class Flat:
    ...     pass
    >>> SCHEDULES.get("flat") is Flat
    True
    >>> SCHEDULES.names()
    ['flat']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, did_you_mean

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of implementations of one kind.

    Args:
        kind: what the entries are ("observer", "criterion", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` and returns it unchanged.

        Args:
            name: the key users pass in configs.
            overwrite: replace an existing entry instead of raising.

        Raises:
            ConfigError: ``name`` is taken and ``overwrite`` is false.
        """

        def decorator(obj: T) -> T:
            self.add(name, obj, overwrite=overwrite)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> None:
        """Register ``obj`` under ``name`` (the non-decorator form of :meth:`register`)."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"A {self.kind} name must be a non-empty string, got {name!r}.")
        if name in self._entries and not overwrite:
            raise ConfigError(
                f"A {self.kind} named {name!r} is already registered; pass overwrite=True to replace it."
            )
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """Return the entry called ``name``.

        Raises:
            ConfigError: no such entry; the message lists the registered names.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(n) for n in self._entries)
            raise ConfigError(
                f"Unknown {self.kind} {name!r}; registered: {known}.{did_you_mean(str(name), self._entries)}"
            ) from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
