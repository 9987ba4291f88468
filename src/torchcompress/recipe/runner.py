"""Running a recipe: the baseline, the variants, the measurements and the report.

:func:`run` runs the baseline's steps, snapshots the model before the first compressing step (the
reference every figure is compared with), runs each variant on a copy of the baseline (or of an
earlier variant), then measures every model the same way (:mod:`~torchcompress.recipe.measure`)
and, given an output folder, writes ``report.md``, ``report.json`` and plots there
(:mod:`torchcompress.report`).

Every step prints a line when it starts and one with its duration when it ends, through ``say``
(the command line prints them; the library itself prints nothing). A step that fails raises its
error with the file and the step in the message; the report of an earlier run stays as it was.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchcompress as tc

from ..errors import ConfigError, TorchCompressError
from .document import Recipe, load, validate, variant_labels, variant_parents
from .measure import summary_figures, time_models
from .schema import plain
from .specs import first_batch, repeat_batch, slice_batch
from .steps import PLANNED, Step, StepContext

__all__ = ["Branch", "InternalStepError", "RunResult", "StepRecord", "run"]


class InternalStepError(RuntimeError):
    """A step failed with an error that is not torchcompress's own (an internal failure).

    Attributes:
        where: the file and step.
        error: the original exception.
    """

    def __init__(self, where: str, error: BaseException) -> None:
        super().__init__(f"{where}: {type(error).__name__}: {error}")
        self.where = where
        self.error = error


@dataclass
class StepRecord:
    """What one step did: its config, how long it took and its figures."""

    kind: str
    label: str
    description: str
    config: dict[str, Any]
    duration_s: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "kind": self.kind,
            "label": self.label,
            "description": self.description,
            "config": self.config,
            "duration_s": round(self.duration_s, 3),
            "figures": self.figures,
            "cached": self.cached,
        }


@dataclass
class Branch:
    """The baseline or one variant: its steps, its final model and its measured figures."""

    label: str
    role: str
    base: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    model: nn.Module | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    folder: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (without the model)."""
        return {
            "label": self.label,
            "role": self.role,
            "from": self.base,
            "skipped": self.skipped,
            "folder": self.folder,
            "steps": [s.to_dict() for s in self.steps],
            "figures": self.figures,
        }


@dataclass
class RunResult:
    """Everything a run did and measured (``to_dict()`` is ``report.json``)."""

    recipe: Recipe
    branches: list[Branch]
    seed: int
    device: str
    started: str
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    files: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> Branch:
        """The reference every figure is compared with."""
        return self.branches[0]

    def rows(self) -> list[dict[str, Any]]:
        """One row per measured model (baseline first): the figures of the summary table."""
        out = []
        for b in self.branches:
            if b.skipped:
                continue
            f = b.figures
            lat = f.get("latency") or {}
            out.append(
                {
                    "variant": b.label,
                    "accuracy": f.get("accuracy"),
                    "params": f.get("params"),
                    "nonzero_params": f.get("nonzero_params"),
                    "macs": f.get("macs"),
                    "effective_macs": f.get("effective_macs"),
                    "bytes": f.get("bytes"),
                    "latency": lat.get("ratio"),
                    "latency_spread": lat.get("spread"),
                    "latency_ms": lat.get("ms"),
                    "output_cosine": f.get("output_cosine"),
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report: versions, seed, machine, every step's config and figures."""
        from ..report import environment

        return {
            "torchcompress_report": 1,
            "recipe": {
                "name": self.recipe.name,
                "description": self.recipe.description,
                "file": self.recipe.source,
                "spelled": self.recipe.to_data(),
            },
            "started": self.started,
            "duration_s": round(self.duration_s, 2),
            "seed": self.seed,
            "device": self.device,
            **environment(),
            "latency": None
            if self.recipe.latency is None
            else plain(self.recipe.latency, defaults=True),
            "branches": [b.to_dict() for b in self.branches],
            "rows": self.rows(),
            "notes": self.notes,
        }


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "variant"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(
            f"output folder {str(out)!r} cannot be written: {e.strerror or e}."
        ) from None


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device (cpu, cuda, cuda:1, mps).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine.")
    return dev


def _types(model: nn.Module | None) -> dict[str, str]:
    return {} if model is None else {n: type(m).__name__ for n, m in model.named_modules()}


@contextlib.contextmanager
def _located(where: str) -> Iterator[None]:
    """Errors inside get ``where`` in front: torchcompress's own keep their class; any other is an
    :class:`InternalStepError`."""
    try:
        yield
    except TorchCompressError as e:
        try:
            err = type(e)(f"{where}: {e}")
        except Exception:  # pragma: no cover - an error class with another signature
            raise e from None
        raise err from e
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        raise InternalStepError(where, e) from e


def _run_step(step: Step, ctx: StepContext, where: str, tag: str) -> StepRecord:
    ctx.say(f"{tag} {step.kind}: {step.describe()}")
    before = _types(ctx.model)
    t0 = time.perf_counter()
    with _located(where):
        figures = step.run(ctx) or {}
    dt = time.perf_counter() - t0
    after = _types(ctx.model)
    changed = sorted(n for n, t in after.items() if n and before.get(n) not in (None, t))
    added = len([n for n in after if n not in before]) if before else 0
    if changed or added:
        figures = {**figures, "modules_changed": len(changed), "modules_added": added}
    ctx.say(f"{tag} {step.kind}: done in {dt:.1f} s")
    return StepRecord(step.kind, step.label(), step.describe(), step.config_dict(), dt, figures)


def _cache_key(recipe: Recipe, seed: int, device: torch.device) -> str:
    blob = json.dumps(
        {
            "steps": [s.to_data() for s in recipe.steps],
            "seed": seed,
            "torchcompress": tc.__version__,
            "torch": torch.__version__,
            "device": str(device),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run(
    recipe: Recipe | str | Path | list[Step],
    out: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    say: Callable[[str], None] | None = None,
    latency: bool | None = None,
    report: bool = True,
) -> RunResult:
    """Run a recipe and (given ``out``) write its report there.

    Args:
        recipe: a :class:`~torchcompress.recipe.Recipe`, a recipe file, or a list of steps.
        out: the output folder (files the steps write, the cached baseline, the report); without
            it, files the steps write land in the working folder and no report is written.
        device: where the models run (default CPU).
        seed: overrides the recipe's seed.
        progress: progress bars of the verbs (default: when on a terminal).
        say: called with one line per step start and end (default: nothing printed).
        latency: ``False`` skips the timing even if the recipe asks for it.
        report: write ``report.md``, ``report.json`` and the plots to ``out``.

    Returns:
        The :class:`RunResult` (its ``branches`` keep the final models).

    Raises:
        ConfigError: the recipe is invalid or the output folder cannot be written.
        TorchCompressError: a step failed on bad input (the message names the file and the step).
        InternalStepError: a step failed with an internal error.
    """
    if isinstance(recipe, str | Path):
        recipe = load(recipe)
    elif isinstance(recipe, list):
        recipe = validate(Recipe(list(recipe)))
    else:
        validate(recipe)
    say = say or (lambda _msg: None)
    dev = _device(device)
    seed = recipe.seed if seed is None else seed
    out_dir = Path(out).expanduser() if out is not None else None
    if out_dir is not None:
        _check_out(out_dir)
    file = recipe.source or "<recipe>"
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    tc.seed_everything(seed)
    ctx = StepContext(
        out_dir=out_dir if out_dir is not None else Path.cwd(),
        base_dir=recipe.base_dir,
        device=dev,
        progress=progress,
        say=say,
    )
    result = RunResult(recipe, [], seed, str(dev), started, out_dir=out_dir)

    # ---- the baseline
    trunk = Branch("baseline", "baseline")
    compressing = [i for i, s in enumerate(recipe.steps) if s.compresses]
    cache_file = None
    if recipe.cache and out_dir is not None:
        if compressing:
            result.notes.append("cache: not used, the baseline steps compress the model")
        else:
            cache_file = out_dir / "cache" / f"baseline-{_cache_key(recipe, seed, dev)}.safetensors"
    cached = cache_file is not None and cache_file.is_file()
    reference: nn.Module | None = None
    n = len(recipe.steps)
    for i, step in enumerate(recipe.steps):
        if compressing and i == compressing[0]:
            reference = copy.deepcopy(ctx.model)
            ctx.reference = reference  # (the teacher of a distill step in the trunk)
        tag = f"[baseline {i + 1}/{n}]"
        if cached and step.kind not in ("model", "data"):
            rec = StepRecord(
                step.kind, step.label(), step.describe(), step.config_dict(), cached=True
            )
            trunk.steps.append(rec)
            continue
        trunk.steps.append(_run_step(step, ctx, f"{file}: steps[{i}] ({step.kind})", tag))
    if cached and ctx.model is not None:
        ctx.model = tc.load(cache_file, ctx.model).eval()  # type: ignore[arg-type]
        say(f"baseline: reused {cache_file} (delete it to train again)")
        meta = cache_file.with_suffix(".json")
        if meta.is_file():
            for rec, figures in zip(trunk.steps, json.loads(meta.read_text())):
                if rec.cached:
                    rec.figures = figures
    elif cache_file is not None and ctx.model is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tc.save(ctx.model, cache_file)
        cache_file.with_suffix(".json").write_text(json.dumps([r.figures for r in trunk.steps]))
    if ctx.model is None:  # pragma: no cover - validate() requires a model step
        raise ConfigError(f"{file}: the recipe has no model step.")
    trunk_model = ctx.model.eval()
    if reference is None:
        reference = trunk_model
        trunk.model = trunk_model
        trunk.label = "baseline: " + " + ".join(
            s.label for s in trunk.steps if s.kind != "data" and not _reports(s.kind)
        )
        result.branches.append(trunk)
    else:
        k = compressing[0]
        labels = [s.label for s in trunk.steps[:k] if s.kind != "data" and not _reports(s.kind)]
        base = Branch(
            "baseline: " + " + ".join(labels), "baseline", steps=trunk.steps[:k], model=reference
        )
        result.branches.append(base)
        trunk.role, trunk.model, trunk.steps = "result", trunk_model, trunk.steps[k:]
        trunk.label = " + ".join(s.label for s in trunk.steps if not _reports(s.kind))
        result.branches.append(trunk)
    ctx.reference = reference

    # ---- the variants
    variants: list[Branch] = []
    slugs: set[str] = set()
    parents = variant_parents(recipe)
    labels = variant_labels(recipe, parents=parents)
    for j, (v, label) in enumerate(zip(recipe.variants, labels)):
        parent = variants[parents[j]] if parents[j] is not None else None  # type: ignore[index]
        branch = Branch(label, "variant", base=parent.label if parent is not None else None)
        result.branches.append(branch)
        variants.append(branch)
        if v.missing:
            branch.skipped = (
                "needs " + ", ".join(PLANNED.get(k, k) for k in v.missing) + ", not in this build"
            )
            say(f"[{label}] skipped: {branch.skipped}")
            continue
        if parent is not None and parent.skipped:
            branch.skipped = f"starts from {parent.label!r}, which was skipped"
            say(f"[{label}] skipped: {branch.skipped}")
            continue
        start = parent.model if parent is not None else trunk_model
        branch.folder = _slug(label, slugs)
        vctx = replace(ctx, model=copy.deepcopy(start), out_dir=ctx.out_dir / branch.folder)
        tc.seed_everything(seed)
        m = len(v.steps)
        for i, step in enumerate(v.steps):
            where = f"{file}: variants[{j}] {label!r}: steps[{i}] ({step.kind})"
            branch.steps.append(_run_step(step, vctx, where, f"[{label} {i + 1}/{m}]"))
        branch.model = vctx.model

    # ---- measurements
    measured = [b for b in result.branches if not b.skipped and b.model is not None]
    say(
        f"measuring {len(measured)} models (accuracy, size{', latency' if recipe.latency and latency is not False else ''})"
    )
    for b in measured:
        with _located(f"{file}: measuring {b.label!r}"):
            b.figures = summary_figures(
                b.model, reference, ctx.data, ctx.example, progress=progress
            )  # type: ignore[arg-type]
    if recipe.latency is not None and latency is not False and ctx.example is not None:
        cfg = recipe.latency
        if ctx.data is not None:
            timed = slice_batch(first_batch(ctx.data.test), cfg.batch_size)
            timed = repeat_batch(timed, cfg.batch_size)
        else:
            timed = repeat_batch(ctx.example, cfg.batch_size)
        with _located(f"{file}: timing the models"):
            times = time_models({b.label: b.model for b in measured}, timed, cfg, say=say)  # type: ignore[misc]
        for b in measured:
            b.figures["latency"] = times[b.label]
    if ctx.data is not None:
        result.notes.extend(ctx.data.notes)
    result.duration_s = time.perf_counter() - t_start
    if report and out_dir is not None:
        from ..report import write_report

        result.files = write_report(result.to_dict(), out_dir)
        say(f"report: {out_dir / 'report.md'}")
    return result


def _reports(kind: str) -> bool:
    from .steps import STEPS

    return kind in STEPS and STEPS.get(kind).reports
