"""Typed fields from plain data: the checks a recipe gets before anything runs.

A recipe is YAML or JSON, so every value arrives as a ``dict``, ``list``, ``str``, number, bool or
``None``. :func:`parse_config` turns such a mapping into a typed config (a frozen dataclass
deriving from :class:`~torchcompress.config.Config`: the family configs and the recipe steps
alike), checking on the way, with the place in the file in every message:

- every key is a field (an unknown one names the closest fields);
- every value has the field's type (read from its type hints: ``int``, ``float``, ``bool``,
  ``str``, ``None``, unions, tuples, lists, mappings, ``Literal`` and nested configs, which are
  parsed the same way);
- the config's own ``validate()`` accepts the values (its :class:`~torchcompress.errors.ConfigError`
  gains the place).

:func:`plain` goes the other way: a config as the mapping a recipe would spell it, fields at their
default left out.

Example:
    >>> import torchcompress as tc
    >>> from torchcompress.recipe.schema import Where, parse_config, plain
    >>> spec = parse_config(tc.IntSpec, {"bits": 4, "granularity": "channel"}, Where("r.yaml"))
    >>> spec.bits, plain(spec)
    (4, {'bits': 4, 'granularity': 'channel'})
    >>> try:
    ...     parse_config(tc.IntSpec, {"bitz": 4}, Where("r.yaml", ("steps[2]", "weight")))
    ... except tc.errors.ConfigError as e:
    ...     print(e)
    r.yaml: steps[2].weight: unknown key 'bitz' (IntSpec fields: bits, symmetric, signed, granularity, group_size). Did you mean 'bits'?
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from ..config import Config
from ..errors import ConfigError, TorchCompressError, did_you_mean

__all__ = ["Where", "check_value", "field_names", "kinds_of", "parse_config", "plain"]

C = TypeVar("C", bound=Config)

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Where:
    """A place in a recipe: the file and the path of keys to the value (``steps[2].weight``).

    ``str(where)`` is the prefix of every message about that place.
    """

    file: str = "<recipe>"
    path: tuple[str, ...] = ()

    def __truediv__(self, key: str | int) -> Where:
        part = f"[{key}]" if isinstance(key, int) else str(key)
        return Where(self.file, (*self.path, part))

    def __str__(self) -> str:
        dotted = ""
        for p in self.path:
            dotted += p if (not dotted or p.startswith("[")) else f".{p}"
        return f"{self.file}: {dotted}" if dotted else self.file

    def error(self, message: str) -> ConfigError:
        """A :class:`ConfigError` about this place."""
        return ConfigError(f"{self}: {message}")


def _init_options(cls: type[Any]) -> list[str]:
    """Keyword arguments of a config's own ``__init__`` that are not fields (shorthands such as
    ``QuantConfig(percentile=...)``)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in list(params.items())[1:] if p.kind in kinds and n not in fields]


def field_names(cls: type[Any]) -> list[str]:
    """The dataclass fields of ``cls`` that a recipe may set, in declaration order, then the
    keyword options its own ``__init__`` takes besides them."""
    return [f.name for f in dataclasses.fields(cls) if f.init] + _init_options(cls)


def _hints(cls: type[Any]) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # annotations naming classes local to a function
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
    if _init_options(cls):
        try:
            init = typing.get_type_hints(cls.__init__)
        except (NameError, TypeError):
            init = {}
        hints = {**{k: v for k, v in init.items() if k != "return"}, **hints}
    return hints


def kinds_of(cls: type[Any]) -> dict[str, type[Any]]:
    """Subclasses of a config that stand for registered kinds, by name (``{}`` for other configs).

    A config class whose ``name`` is a class attribute, not a field (the observer specs: the
    registry that owns them sets it), is spelt in a recipe by that name: ``percentile``, or a
    mapping with ``name:`` and the kind's fields (``{name: percentile, percentile: 99.9}``).
    """
    if not isinstance(getattr(cls, "name", None), str) or "name" in {
        f.name for f in dataclasses.fields(cls)
    }:
        return {}
    out: dict[str, type[Any]] = {}
    stack = [cls]
    while stack:
        c = stack.pop()
        if getattr(c, "name", ""):
            out.setdefault(c.name, c)
        stack.extend(c.__subclasses__())
    return out


def _parse_kind(hint: type[Any], kinds: dict[str, type[Any]], value: Any, where: Where) -> Any:
    name = value if isinstance(value, str) else value.get("name")
    if not isinstance(name, str) or name not in kinds:
        names = sorted(kinds)
        raise where.error(
            f"unknown {hint.__name__} name {name!r} (names: {', '.join(names)})."
            f"{did_you_mean(str(name), names)}"
        )
    rest = {} if isinstance(value, str) else {k: v for k, v in value.items() if k != "name"}
    return parse_config(kinds[name], rest, where)


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if isinstance(hint, type):
        if issubclass(hint, Config):
            return f"a mapping of {hint.__name__} fields"
        return {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
        }.get(hint.__name__, hint.__name__)
    origin = typing.get_origin(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (tuple, list, cabc.Sequence):
        return "a list"
    if origin in (dict, cabc.Mapping):
        return "a mapping"
    return str(hint)


def _describe(value: Any) -> str:
    kind = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "a mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


def check_value(value: Any, hint: Any, where: Where) -> Any:
    """``value`` checked against the type ``hint`` (nested configs parsed), or a located error.

    Lists become tuples where the hint says tuple; integers are accepted where a float is expected;
    ``bool`` is never accepted as a number. An unevaluated (string) hint or ``Any`` accepts anything.

    Raises:
        ConfigError: the value does not have the type; the message names the place.
    """
    if hint is Any or hint is None or isinstance(hint, str | typing.TypeVar):
        return value
    origin = typing.get_origin(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise where.error(f"expected {_type_name(hint)}, got null.")
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # ``X | None``: X's own message is the precise one
            return check_value(value, members[0], where)
        if isinstance(value, str) and str in members:  # a name the config itself resolves
            return value
        errors: list[ConfigError] = []
        # configs last: a mapping is tried as a plain mapping type first only if no config fits
        ordered = sorted(args, key=lambda a: not (isinstance(a, type) and issubclass(a, Config)))
        for a in ordered:
            if a is type(None):
                continue
            try:
                return check_value(value, a, where)
            except ConfigError as e:
                errors.append(e)
        # a mapping given for a config: the config's own message is the useful one
        if isinstance(value, dict):
            for a, e in zip([a for a in ordered if a is not type(None)], errors):
                if isinstance(a, type) and issubclass(a, Config):
                    raise e
        raise where.error(f"expected {_type_name(hint)}, got {_describe(value)}.")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        raise where.error(f"expected {_type_name(hint)}, got {_describe(value)}.")
    if origin in (tuple, list, cabc.Sequence, cabc.Iterable):
        if not isinstance(value, list | tuple):
            raise where.error(f"expected {_type_name(hint)}, got {_describe(value)}.")
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise where.error(f"expected a list of {len(args)} items, got {len(value)}.")
            items = [check_value(v, a, where / i) for i, (v, a) in enumerate(zip(value, args))]
        else:
            elem = args[0] if args else Any
            items = [check_value(v, elem, where / i) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, cabc.Mapping):
        if not isinstance(value, dict):
            raise where.error(f"expected a mapping, got {_describe(value)}.")
        args = typing.get_args(hint)
        kt, vt = args if len(args) == 2 else (Any, Any)
        return {
            check_value(k, kt, where / str(k)): check_value(v, vt, where / str(k))
            for k, v in value.items()
        }
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        kinds = kinds_of(hint)
        if kinds and (isinstance(value, str) or (isinstance(value, dict) and "name" in value)):
            return _parse_kind(hint, kinds, value, where)
        if kinds and not getattr(hint, "name", "") and isinstance(value, dict):
            raise where.error(
                f"{hint.__name__} needs 'name:' (one of: {', '.join(sorted(kinds))})."
            )
        if isinstance(value, dict):
            return parse_config(hint, value, where)
        raise where.error(f"expected {_type_name(hint)}, got {_describe(value)}.")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise where.error(f"expected a number, got {_describe(value)}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise where.error(f"expected a finite number, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"expected an integer, got {_describe(value)}.")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise where.error(f"expected true or false, got {_describe(value)}.")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise where.error(f"expected a string, got {_describe(value)}.")
        return value
    if hint is type(None):
        if value is not None:
            raise where.error(f"expected null, got {_describe(value)}.")
        return None
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise where.error(
            f"expected a {hint.__name__}, which a recipe cannot spell; got {_describe(value)}."
        )
    return value


def parse_config(cls: type[C], data: Any, where: Where) -> C:
    """Build the config ``cls`` from a recipe mapping, checking keys, types and values.

    Args:
        cls: a frozen dataclass deriving from :class:`~torchcompress.config.Config`.
        data: the mapping read from the recipe (``None`` is an empty mapping).
        where: the place of ``data`` in the recipe, for messages.

    Raises:
        ConfigError: an unknown key (with the closest fields), a value of the wrong type, a missing
            required field, or a value the config's ``validate()`` rejects; the message names the
            file, the step and the key.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise where.error(f"expected a mapping of {cls.__name__} fields, got {_describe(data)}.")
    names = field_names(cls)
    for key in data:
        if not isinstance(key, str) or key not in names:
            raise where.error(
                f"unknown key {key!r} ({cls.__name__} fields: {', '.join(names)})."
                f"{did_you_mean(str(key), names)}"
            )
    hints = _hints(cls)
    kwargs = {k: check_value(v, hints.get(k), where / k) for k, v in data.items()}
    for f in dataclasses.fields(cls):
        required = f.default is _MISSING and f.default_factory is _MISSING  # type: ignore[misc]
        if f.init and f.name not in kwargs and required:
            raise where.error(f"{cls.__name__} needs the key {f.name!r}.")
    try:
        if any(k in kwargs for k in _init_options(cls)):
            return cls(**kwargs)  # shorthand options: the config's own __init__ reads them
        return cls.from_dict(kwargs)
    except TorchCompressError as e:
        raise where.error(str(e)) from None
    except (TypeError, ValueError, KeyError) as e:  # a config that validates with plain errors
        raise where.error(f"{cls.__name__}: {e}") from None


def plain(config: Any, *, defaults: bool = False) -> Any:
    """A config (or any value holding configs) as the plain data a recipe spells it with.

    Nested configs become mappings, tuples become lists; with ``defaults=False`` the fields equal
    to their default are left out, so the result reads like what a person would write.
    """
    if isinstance(config, Config) and dataclasses.is_dataclass(config):
        out: dict[str, Any] = {}
        fresh = None if defaults else _default_instance(type(config))
        for f in dataclasses.fields(config):
            if not f.init:
                continue
            value = getattr(config, f.name)
            if not defaults and (
                _is_default(f, value) or (fresh is not None and getattr(fresh, f.name) == value)
            ):
                continue
            out[f.name] = plain(value, defaults=defaults)
        kind = getattr(type(config), "name", "") if kinds_of(type(config)) else ""
        if kind:  # a registered kind: by its name
            return {"name": kind, **out} if out else kind
        return out
    if isinstance(config, tuple | list):
        return [plain(v, defaults=defaults) for v in config]
    if isinstance(config, dict):
        return {k: plain(v, defaults=defaults) for k, v in config.items()}
    return config


def _default_instance(cls: type[Any]) -> Any:
    try:
        return cls()
    except Exception:  # a config with required fields
        return None


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default is not _MISSING:
        return bool(value == f.default)
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        try:
            return bool(value == f.default_factory())  # type: ignore[misc]
        except Exception:  # a factory that needs context: keep the value
            return False
    return False
