"""A recipe file: read, check, write.

A recipe is YAML (or JSON) — a list of steps, or a mapping::

    name: int8 for my model
    seed: 0
    steps:                      # the baseline: every variant starts from its end
      - model: resnet20
      - data: digits(image_size=16)
      - finetune: {epochs: 4, lr: 0.05}
    variants:                   # optional: pipelines compared side by side in the report
      - steps:
          - quantize: {config: {observer: percentile}}
          - convert
      - name: low-rank + int8
        from: low-rank           # start from another variant's result
        steps: [...]

Each step is ``kind: {fields}`` (or just ``kind``); see :mod:`~torchcompress.recipe.steps`.
:func:`load` checks everything that can be checked before anything runs — unknown keys and steps
(with the closest names), wrong types and values, impossible orders, models and data that do not
import or need arguments, missing files — and every message names the file, the step and the key.

Example:
    >>> from torchcompress.recipe import loads, dumps
    >>> r = loads("steps: [{model: resnet20}, {data: digits}, {prune: {sparsity: 0.5}}, finalize]")
    >>> [s.kind for s in r.steps]
    ['model', 'data', 'prune', 'finalize']
    >>> print(dumps(r), end="")
    steps:
    - model: resnet20
    - data: digits
    - prune:
        config:
          sparsity: 0.5
    - finalize: {}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Config
from ..errors import ConfigError, TorchCompressError, check_range, did_you_mean
from . import orders
from .schema import Where, parse_config, plain
from .steps import PLANNED, STEPS, CheckEnv, Step

__all__ = [
    "LatencyConfig",
    "Recipe",
    "Variant",
    "dump",
    "dumps",
    "load",
    "loads",
    "validate",
    "variant_labels",
    "variant_parents",
]

_TOP_KEYS = ("name", "description", "seed", "cache", "latency", "steps", "variants")
_VARIANT_KEYS = ("name", "id", "from", "optional", "steps")


@dataclass(frozen=True)
class LatencyConfig(Config):
    """How the run times the baseline and the variants against each other (CPU or CUDA).

    Rounds interleave every model (in a rotating order); each round times each model for about
    ``round_time`` seconds. Rounds continue, between ``min_rounds`` and ``max_rounds``, until the
    spread of every ratio to the baseline (half the interquartile range over the median) is below
    ``spread``; the report gives the median ratio and that spread.

    Args:
        batch_size: samples per timed call.
        min_rounds: rounds at least.
        max_rounds: rounds at most.
        spread: the relative spread to reach.
        round_time: seconds per model per round.
    """

    batch_size: int = 32
    min_rounds: int = 3
    max_rounds: int = 15
    spread: float = 0.05
    round_time: float = 0.1

    def validate(self) -> None:
        check_range("batch_size", self.batch_size, 1, owner="latency")
        check_range("min_rounds", self.min_rounds, 1, owner="latency")
        check_range("max_rounds", self.max_rounds, self.min_rounds, owner="latency")
        check_range("spread", self.spread, 0, low_inclusive=False, owner="latency")
        check_range("round_time", self.round_time, 0, 60, low_inclusive=False, owner="latency")


@dataclass
class Variant:
    """A pipeline that starts from the baseline (or from another variant's result).

    Attributes:
        steps: its steps.
        name: its label (default: made from what its steps do).
        base: the variant it starts from (``from:`` in the file: its ``id``, name or label), or
            ``None`` for the baseline.
        optional: skip it (with a note) when a step it uses is not in this build.
        missing: the planned step kinds it uses that are not in this build.
        unbuilt: those steps as the file spells them, with their positions (written back by
            :func:`dumps`).
    """

    steps: list[Step]
    name: str | None = None
    base: str | None = None
    optional: bool = False
    missing: list[str] = field(default_factory=list)
    unbuilt: list[tuple[int, Any]] = field(default_factory=list)
    id: str | None = None

    def label(self, base_label: str | None = None) -> str:
        """The name, or what the steps do (``"W8A8 static PTQ + converted"``), after the label of
        the variant it starts from."""
        if self.name:
            return self.name
        own: list[Any] = list(self.steps)
        for i, raw in self.unbuilt:
            own.insert(i, raw)
        parts = [base_label] if base_label else []
        for s in own:
            if isinstance(s, Step):
                if not s.reports:
                    parts.append(s.label())
            else:
                kind = s if isinstance(s, str) else next(iter(s))
                parts.append(f"{kind} (not built)")
        return " + ".join(parts) or "unchanged"

    def to_data(self) -> dict[str, Any]:
        """The recipe spelling of the variant."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.id:
            out["id"] = self.id
        if self.base:
            out["from"] = self.base
        if self.optional:
            out["optional"] = True
        steps: list[Any] = [s.to_data() for s in self.steps]
        for i, raw in self.unbuilt:
            steps.insert(i, raw)
        out["steps"] = steps
        return out


@dataclass
class Recipe:
    """A parsed recipe: the baseline steps, the variants, and run options.

    Attributes:
        steps: the baseline's steps (model, data, training...).
        variants: pipelines compared side by side, each starting from the baseline.
        name: a title for reports.
        description: free text for reports.
        seed: seeds everything before the baseline and before each variant.
        cache: reuse the baseline model from an earlier run in the same output folder.
        latency: how to time the models (``None``: not timed).
        source: the file it was read from.
    """

    steps: list[Step]
    variants: list[Variant] = field(default_factory=list)
    name: str = ""
    description: str = ""
    seed: int = 0
    cache: bool = False
    latency: LatencyConfig | None = field(default_factory=LatencyConfig)
    source: str | None = None

    @property
    def base_dir(self) -> Path:
        """The folder relative input paths start from (the file's, else the working folder)."""
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def to_data(self) -> dict[str, Any]:
        """The recipe as plain data (what :func:`dumps` writes)."""
        out: dict[str, Any] = {}
        if self.name:
            out["name"] = self.name
        if self.description:
            out["description"] = self.description
        if self.seed:
            out["seed"] = self.seed
        if self.cache:
            out["cache"] = True
        if self.latency is None:
            out["latency"] = False
        elif self.latency != LatencyConfig():
            out["latency"] = plain(self.latency)
        out["steps"] = [s.to_data() for s in self.steps]
        if self.variants:
            out["variants"] = [v.to_data() for v in self.variants]
        return out


# ------------------------------------------------------------------------------------- reading


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads ``1e-3`` as a float."""


def _no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise ConfigError(
                f"line {mark.line + 1}: the key {key!r} appears twice in one mapping."
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_text(text: str, file: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{file}: {where}not valid YAML/JSON ({problem}).") from None


def _parse_step(entry: Any, where: Where) -> Step | str:
    """A step, or the planned kind it names (a ``str``) when that kind is not in this build."""
    if isinstance(entry, str):
        kind, body = entry, None
    elif isinstance(entry, dict) and len(entry) == 1:
        kind, body = next(iter(entry.items()))
    else:
        shown = list(entry) if isinstance(entry, dict) else entry
        raise where.error(
            f"a step is one 'kind: {{keys}}' mapping (or just 'kind'), got {shown!r}."
        )
    if not isinstance(kind, str):
        raise where.error(f"a step kind is a name, got {kind!r}.")
    if kind not in STEPS:
        if kind in PLANNED:
            return kind
        known = [*STEPS.names(), *PLANNED]
        raise where.error(
            f"unknown step {kind!r} (steps: {', '.join(sorted(STEPS.names()))})."
            f"{did_you_mean(kind, known)}"
        )
    return STEPS.get(kind).parse(
        body, Where(where.file, (*where.path[:-1], f"{where.path[-1]} ({kind})"))
    )


def _parse_steps(
    value: Any, where: Where, *, optional: bool = False
) -> tuple[list[Step], list[str], list[tuple[int, Any]]]:
    if value is None:
        return [], [], []
    if not isinstance(value, list):
        raise where.error(f"expected a list of steps, got {type(value).__name__}.")
    steps: list[Step] = []
    missing: list[str] = []
    unbuilt: list[tuple[int, Any]] = []
    for i, entry in enumerate(value):
        w = where / i
        parsed = _parse_step(entry, w)
        if isinstance(parsed, str):
            if not optional:
                raise Where(w.file, (*w.path[:-1], f"{w.path[-1]} ({parsed})")).error(
                    f"step {parsed!r} needs {PLANNED[parsed]}, which is not in this build of "
                    "torchcompress (mark the variant 'optional: true' to skip it)."
                )
            missing.append(parsed)
            unbuilt.append((i, entry))
        else:
            steps.append(parsed)
    return steps, missing, unbuilt


def _from_data(data: Any, file: str) -> Recipe:
    root = Where(file)
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict):
        raise root.error(
            f"a recipe is a mapping with 'steps:' (or a list of steps), got {type(data).__name__}."
        )
    for key in data:
        if key not in _TOP_KEYS:
            raise root.error(
                f"unknown key {key!r} (recipe keys: {', '.join(_TOP_KEYS)}).{did_you_mean(str(key), _TOP_KEYS)}"
            )
    if "steps" not in data:
        raise root.error("a recipe needs 'steps:' (the model, the data and what to do).")
    steps, _, _ = _parse_steps(data["steps"], root / "steps")
    variants = []
    raw_variants = data.get("variants") or []
    if not isinstance(raw_variants, list):
        raise (root / "variants").error("expected a list of variants (each a mapping with steps:).")
    for j, raw in enumerate(raw_variants):
        w = root / "variants" / j
        if not isinstance(raw, dict):
            raise w.error(f"a variant is a mapping with 'steps:', got {type(raw).__name__}.")
        for key in raw:
            if key not in _VARIANT_KEYS:
                raise w.error(
                    f"unknown key {key!r} (variant keys: {', '.join(_VARIANT_KEYS)}).{did_you_mean(str(key), _VARIANT_KEYS)}"
                )
        for key, types in (("name", str), ("id", str), ("from", str), ("optional", bool)):
            if raw.get(key) is not None and not isinstance(raw[key], types):
                raise (w / key).error(
                    f"expected {'true or false' if types is bool else 'a string'}, got {raw[key]!r}."
                )
        if "steps" not in raw:
            raise w.error("a variant needs 'steps:'.")
        optional = bool(raw.get("optional", False))
        vsteps, missing, unbuilt = _parse_steps(raw["steps"], w / "steps", optional=optional)
        variants.append(
            Variant(
                vsteps, raw.get("name"), raw.get("from"), optional, missing, unbuilt, raw.get("id")
            )
        )
    recipe = Recipe(steps, variants, source=None)
    for key, kind in (("name", str), ("description", str)):
        if data.get(key) is not None:
            if not isinstance(data[key], kind):
                raise (root / key).error(f"expected a string, got {data[key]!r}.")
            setattr(recipe, key, data[key])
    if "seed" in data:
        seed = data["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise (root / "seed").error(f"expected a non-negative integer, got {seed!r}.")
        recipe.seed = seed
    if "cache" in data:
        if not isinstance(data["cache"], bool):
            raise (root / "cache").error(f"expected true or false, got {data['cache']!r}.")
        recipe.cache = data["cache"]
    if "latency" in data:
        lat = data["latency"]
        if lat is False:
            recipe.latency = None
        elif lat is True:
            recipe.latency = LatencyConfig()
        else:
            recipe.latency = parse_config(LatencyConfig, lat, root / "latency")
    return recipe


def loads(text: str, *, source: str | None = None, check: bool = True) -> Recipe:
    """Parse a recipe from YAML/JSON text (see :func:`load`).

    Args:
        text: the recipe.
        source: the file it came from (messages, relative paths).
        check: also run :func:`validate`.

    Raises:
        ConfigError: anything wrong with it, with the place.
    """
    file = source or "<recipe>"
    recipe = _from_data(_parse_text(text, file), file)
    recipe.source = source
    if check:
        validate(recipe)
    return recipe


def load(path: str | Path, *, check: bool = True) -> Recipe:
    """Read and check a recipe file; its steps are the typed step objects.

    Args:
        path: a ``.yaml``/``.yml``/``.json`` file.
        check: also run :func:`validate` (imports, files, orders).

    Raises:
        ConfigError: the file is missing or unreadable, or anything in it is wrong (with the file,
            the step and the key in the message).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"recipe file {str(p)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe file {str(p)!r}: {e}") from None
    return loads(text, source=str(p), check=check)


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of plain values (``[1, 3, 32, 32]``) and empty mappings."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flat = all(isinstance(v, str | int | float | bool) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def dumps(recipe: Recipe | list[Step]) -> str:
    """The YAML text of a recipe (or of a list of steps); :func:`loads` reads it back equal."""
    if not isinstance(recipe, Recipe):
        recipe = Recipe(list(recipe))
    return yaml.dump(
        recipe.to_data(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100
    )


def dump(recipe: Recipe | list[Step], path: str | Path) -> None:
    """Write :func:`dumps` of ``recipe`` to ``path``."""
    Path(path).write_text(dumps(recipe))


# ------------------------------------------------------------------------------------ checking


def _step_where(file: str, prefix: tuple[str, ...], i: int, step: Step) -> Where:
    return Where(file, (*prefix, f"steps[{i}] ({step.kind})"))


def _check_chain(
    steps: list[Step],
    env: CheckEnv,
    forms: frozenset[str] | None,
    file: str,
    prefix: tuple[str, ...],
) -> frozenset[str] | None:
    for i, step in enumerate(steps):
        w = _step_where(file, prefix, i, step)
        if prefix and step.kind in ("model", "data"):
            raise w.error(
                f"a variant starts from the baseline's model and data: put '{step.kind}' in the top-level steps."
            )
        if step.kind == "model" and env.has_model:
            raise w.error("a second model step: a recipe has one model.")
        if step.kind == "data" and env.has_data:
            raise w.error("a second data step: a recipe has one data set.")
        for need in step.needs:
            if need == "model" and not env.has_model:
                raise w.error(f"{step.kind} needs a model: put a 'model' step first.")
            if need in ("data", "labels") and not env.has_data:
                raise w.error(f"{step.kind} needs data: put a 'data' step before it.")
            if need == "labels" and env.labelled is False:
                raise w.error(f"{step.kind} needs labelled data, and this data set has no labels.")
            if need == "example" and not (env.has_example or env.has_data):
                raise w.error(
                    f"{step.kind} needs example inputs: add a data step or model.input_shape."
                )
        try:
            step.check(env)
        except TorchCompressError as e:
            raise type(e)(f"{w}: {e}") from None
        why = orders.check_step(forms, step.kind)
        if why is not None:
            raise w.error(why)
        if step.kind == "model":
            env.has_model = True
            env.has_example = getattr(step, "input_shape", None) is not None
            if getattr(step, "weights", None) is not None:
                forms = None  # a saved model may hold any form: orders are checked when it runs
        if step.kind == "data":
            env.has_data = True
            env.labelled = step.labelled()  # type: ignore[attr-defined]
        forms = orders.after(forms, step.kind) if forms is not None else None
    return forms


def validate(recipe: Recipe) -> Recipe:
    """Check a parsed recipe before anything runs.

    Checks the order of the steps (one model first, data before what needs it, no variant with its
    own model or data, no impossible order of compressing steps), every step's own checks (a model
    or data factory that does not import or needs arguments, missing files), and the variants'
    ``from:`` references.

    Raises:
        ConfigError: the first problem, with the file and the step.
    """
    file = recipe.source or "<recipe>"
    env = CheckEnv(base_dir=recipe.base_dir)
    forms = _check_chain(recipe.steps, env, frozenset(), file, ())
    if not env.has_model:
        raise Where(file, ("steps",)).error(
            "the recipe has no model step (e.g. '- model: resnet20')."
        )
    ends: list[frozenset[str] | None] = []
    for j, (v, parent) in enumerate(zip(recipe.variants, variant_parents(recipe))):
        start = forms if parent is None else ends[parent]
        venv = CheckEnv(recipe.base_dir, env.has_model, env.has_data, env.labelled, env.has_example)
        ends.append(_check_chain(v.steps, venv, start, file, (f"variants[{j}]",)))
    return recipe


def variant_parents(recipe: Recipe) -> list[int | None]:
    """For each variant, the index of the variant it starts from (``None``: the baseline).

    Raises:
        ConfigError: a ``from:`` that names no earlier variant (by id, name or label), two
            variants with one id, or two variants with one label.
    """
    file = recipe.source or "<recipe>"
    parents: list[int | None] = []
    handles: dict[str, int] = {}
    for j, v in enumerate(recipe.variants):
        parent = None
        if v.base is not None:
            if v.base not in handles:
                earlier = list(handles)
                raise Where(file, (f"variants[{j}]", "from")).error(
                    f"'from: {v.base}' names no earlier variant (earlier: "
                    f"{', '.join(repr(x) for x in earlier) or 'none'}).{did_you_mean(v.base, earlier)}"
                )
            parent = handles[v.base]
        parents.append(parent)
        if v.id is not None:
            if v.id in handles:
                raise Where(file, (f"variants[{j}]", "id")).error(f"the id {v.id!r} is taken.")
            handles[v.id] = j
        handles.setdefault(variant_labels(recipe, upto=j + 1, parents=parents)[j], j)
    return parents


def variant_labels(
    recipe: Recipe, upto: int | None = None, parents: list[int | None] | None = None
) -> list[str]:
    """The label of every variant: its name, or what it does after what it starts from.

    Raises:
        ConfigError: a ``from:`` that names no earlier variant, or two variants with one label.
    """
    file = recipe.source or "<recipe>"
    parents = parents if parents is not None else variant_parents(recipe)
    labels: list[str] = []
    for j, v in enumerate(recipe.variants[:upto]):
        p = parents[j]
        label = v.label(labels[p] if p is not None else None)
        if label in labels:
            raise Where(file, (f"variants[{j}]",)).error(
                f"two variants are labelled {label!r}: give one a 'name:'."
            )
        labels.append(label)
    return labels
