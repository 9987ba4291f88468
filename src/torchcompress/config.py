"""Base class for typed, validated, serialisable configs.

Every technique's config (``IntSpec``, ``QuantConfig``, ``PruneConfig``, ``LowRankConfig``, ...) is a
frozen dataclass deriving from :class:`Config`. Validation happens in ``__post_init__`` (via
:meth:`Config.validate`), unknown keys are rejected when building from a dict, and every config
round-trips through :meth:`Config.to_dict` / :meth:`Config.from_dict` (and so through YAML/JSON
recipes and the JSON description written by :func:`torchcompress.save`).

Example:
    >>> from dataclasses import dataclass
    >>> from torchcompress.config import Config
    >>> @dataclass(frozen=True)
    ... class Demo(Config):
    ...     bits: int = 8
    ...     def validate(self) -> None:
    ...         if self.bits < 2:
    ...             raise ValueError("bits too small")
    >>> Demo.from_dict({"bits": 4})
    Demo(bits=4)
    >>> Demo(bits=4).to_dict()
    {'bits': 4}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar, get_type_hints

from .errors import ConfigError, did_you_mean

__all__ = ["Config"]

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for frozen dataclass configs: validation hook, strict dict round-trip, ``replace``."""

    #: Registered config classes by name, so nested configs can be rebuilt from dicts.
    _by_name: ClassVar[dict[str, type[Config]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Config._by_name[cls.__name__] = cls

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check field values; raise :class:`~torchcompress.errors.ConfigError` on a bad one."""

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(
                f"{type(self).__name__} has no field {name!r}."
                f"{did_you_mean(name, [f.name for f in dataclasses.fields(self)])}"  # type: ignore[arg-type]
            )
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """A plain (JSON/YAML-serialisable) dict of the fields; nested configs become dicts."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build the config from a dict, rejecting unknown keys with a helpful message.

        Raises:
            ConfigError: a key is not a field of this config, or a value is invalid.
        """
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise ConfigError(
                f"{cls.__name__} expects a dict of fields, got {type(data).__name__}."
            )
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = [k for k in data if k not in names]
        if unknown:
            k = unknown[0]
            raise ConfigError(
                f"{cls.__name__} has no field {k!r} (fields: {', '.join(names)}).{did_you_mean(k, names)}"
            )
        try:
            hints = get_type_hints(cls)
        except (NameError, TypeError):  # annotations naming classes local to a function
            hints = {f.name: f.type for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: _decode(v, hints.get(k)) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as e:  # wrong constructor arguments
            raise ConfigError(f"{cls.__name__}: {e}") from e


def _encode(value: Any) -> Any:
    if isinstance(value, Config):
        return {"__config__": type(value).__name__, **value.to_dict()}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any, hint: Any) -> Any:
    if isinstance(value, dict) and "__config__" in value:
        name = value["__config__"]
        cls = Config._by_name.get(name)
        if cls is None:
            raise ConfigError(f"Unknown config class {name!r} in serialised config.")
        return cls.from_dict({k: v for k, v in value.items() if k != "__config__"})
    if isinstance(value, dict) and hint is not None:
        for cand in _config_types(hint):
            try:
                return cand.from_dict(value)
            except ConfigError:
                continue
    if isinstance(value, dict):  # a plain dict: its values may hold configs
        return {k: _decode(v, None) for k, v in value.items()}
    if isinstance(value, list):  # elements may be configs; tuple fields come back as tuples
        items = [_decode(v, None) for v in value]
        return tuple(items) if hint is not None and _is_tuple_hint(hint) else items
    return value


def _config_types(hint: Any) -> list[type[Config]]:
    out: list[type[Config]] = []
    args = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    for a in args:
        if isinstance(a, type) and issubclass(a, Config):
            out.append(a)
    return out


def _is_tuple_hint(hint: Any) -> bool:
    if isinstance(hint, str):  # an annotation that could not be evaluated
        return hint.replace(" ", "").startswith(
            ("tuple", "Tuple", "typing.Tuple")
        ) or "|tuple" in hint.replace(" ", "")
    origin = typing.get_origin(hint)
    if origin is tuple:
        return True
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return any(_is_tuple_hint(a) for a in typing.get_args(hint))
    return False
