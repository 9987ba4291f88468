"""Saving and loading compressed models without pickle.

:func:`save` writes one `safetensors <https://github.com/huggingface/safetensors>`_ file: the model's
``state_dict`` tensors, plus a JSON description (in the file's metadata header) of what was
compressed: for each compressed or resized module, the codec that rebuilds it and the constructor
arguments it needs. :func:`load` takes that file and a *fresh* model (the original architecture, as
your code builds it), rebuilds the compressed modules in place, then loads the tensors strictly.
Nothing is unpickled, so loading a file cannot run code.

Families make their modules loadable by registering a :class:`ModuleCodec`; plain layers (Linear,
Conv, BatchNorm, LayerNorm, Embedding) have built-in codecs, so a structurally pruned model whose
layers shrank loads too. The file names the module that defines each codec, and :func:`load`
imports it when the codec is not registered yet (only modules of this package, or of codecs already
registered); for files that predate that record, the package's subpackages with a ``codecs`` module
are imported. This module never names a family.

Example:
    >>> import tempfile, os, torch
    >>> from torch import nn
    >>> import torchcompress as tc
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> m[0] = nn.Linear(4, 2); m[2] = nn.Linear(2, 2)   # e.g. after structured pruning
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> tc.save(m, path)
    >>> fresh = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> tc.load(path, fresh)[0].out_features
    2
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import pkgutil
from typing import Any

import torch
from torch import nn

from ._version import __version__
from .errors import CompressionStateError, DataError, PathNotFoundError, SelectionError
from .select import get_module, set_module
from .state import has_module as _has_module
from .state import load_state as _load_state
from .state import tie_aliases as _tie_aliases
from .state import untie_unshared as _untie_unshared

__all__ = [
    "ModuleCodec",
    "add_history",
    "decode_plain",
    "describe",
    "encode_plain",
    "history",
    "load",
    "register_codec",
    "save",
    "set_attribute",
]

log = logging.getLogger(__name__)

FORMAT = "torchcompress"
FORMAT_VERSION = 1
_HISTORY_ATTR = "_torchcompress_history"
_PATCH_ATTR = "_torchcompress_attributes"
_PACKAGE = __name__.rpartition(".")[0]  # this package; the codec providers live below it


class ModuleCodec:
    """How to rebuild one kind of module in a fresh model before its tensors are loaded.

    Subclass it and register an instance with :func:`register_codec`.

    Attributes:
        name: a unique key written to the file.
    """

    name: str = ""

    def matches(self, module: nn.Module) -> bool:
        """Whether this codec describes ``module``."""
        raise NotImplementedError

    def encode(self, module: nn.Module) -> dict[str, Any]:
        """A JSON-serialisable description sufficient to rebuild ``module`` (without its tensors)."""
        raise NotImplementedError

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        """Build the module described by ``spec``; ``current`` is what the fresh model holds there.

        Return ``current`` itself when it already has the right structure.
        """
        raise NotImplementedError

    def after_load(self, module: nn.Module) -> None:
        """Optional hook run once the tensors are loaded (e.g. to repack integer kernels)."""

    #: Set to true by codecs of something laid *over* a module that another codec (or the fresh
    #: model) provides, such as pruning masks: a module gets at most one codec that rebuilds it
    #: and then every overlay codec that matches it, recorded and decoded in that order (a pruned
    #: layer that was then quantized is rebuilt as a fake-quant layer, then its masks are added).
    overlay: bool = False

    #: Set to true by codecs of modules a verb *adds* to a model (not replacing an existing one):
    #: on load, :meth:`decode` then receives ``current=None`` when the fresh model lacks the module.
    creates_missing: bool = False

    def after_load_model(self, model: nn.Module, name: str) -> None:
        """Optional hook run once the tensors are loaded, with the whole model (default: :meth:`after_load`).

        For codecs whose module changes how the model runs as a whole (e.g. a quantized graph
        bound as the model's forward).
        """
        self.after_load(get_module(model, name))


_CODECS: list[ModuleCodec] = []


def register_codec(codec: ModuleCodec) -> ModuleCodec:
    """Register ``codec``; codecs registered later are tried first, so they may specialise earlier ones."""
    if not codec.name:
        raise ValueError("A ModuleCodec needs a non-empty name.")
    for i, c in enumerate(_CODECS):
        if c.name == codec.name:
            _CODECS[i] = codec
            return codec
    _CODECS.append(codec)
    return codec


def _registered(name: str) -> ModuleCodec | None:
    for c in _CODECS:
        if c.name == name:
            return c
    return None


def _codec_by_name(name: str, module: str | None = None) -> ModuleCodec:
    """The codec called ``name``, importing what provides it when it is not registered yet.

    ``module`` is the module the file says defines the codec (files written since the format
    recorded it); it is imported only when it lies inside this package or already provides a
    registered codec, so a file cannot make :func:`load` import arbitrary code. Without it (older
    files), or when that module has moved, the package's codec providers are imported.
    """
    codec = _registered(name)
    if codec is not None:
        return codec
    if module and _may_import(module):
        try:
            importlib.import_module(module)
        except ImportError as e:  # moved or renamed since the file was written
            log.debug("could not import %s, named for codec %r: %s", module, name, e)
        codec = _registered(name)
        if codec is not None:
            return codec
    _import_codec_providers()
    codec = _registered(name)
    if codec is not None:
        return codec
    where = (
        f" The file says it is defined in {module!r}; import that module before loading."
        if module and not _may_import(module)
        else ""
    )
    raise CompressionStateError(
        f"The file needs the module codec {name!r}, which is not registered.{where} Import the "
        "torchcompress family that made it (or the plug-in that registered it) before loading."
    )


def _may_import(module: str) -> bool:
    return module.startswith(_PACKAGE + ".") or module in {type(c).__module__ for c in _CODECS}


def _codecs_for(module: nn.Module) -> list[ModuleCodec]:
    """The codec that rebuilds ``module`` (the latest registered that matches), then its overlays."""
    base = next((c for c in reversed(_CODECS) if not c.overlay and c.matches(module)), None)
    overlays = [c for c in _CODECS if c.overlay and c.matches(module)]
    return ([base] if base is not None else []) + overlays


# --- plain layers ----------------------------------------------------------------------------

_PLAIN_FIELDS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv1d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ),
    nn.Conv2d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ),
    nn.Conv3d: (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ),
    nn.BatchNorm1d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine"),
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine"),
    nn.Embedding: ("num_embeddings", "embedding_dim", "padding_idx"),
    # what tc.fuse leaves in place of a folded BatchNorm
    nn.Identity: (),
}


def _plain_type(module: nn.Module) -> type[nn.Module] | None:
    for cls in type(module).__mro__:
        if cls in _PLAIN_FIELDS:
            return cls  # type: ignore[return-value]
    return None


def encode_plain(module: nn.Module) -> dict[str, Any]:
    """Constructor arguments of a plain layer (Linear, Conv, norm, Embedding).

    Families reuse this for the layer wrapped inside their own modules.
    """
    cls = _plain_type(module)
    if cls is None:
        raise TypeError(f"{type(module).__name__} is not a plain layer with a built-in codec.")
    spec: dict[str, Any] = {"type": cls.__name__}
    for f in _PLAIN_FIELDS[cls]:
        v = getattr(module, f)
        spec[f] = list(v) if isinstance(v, tuple) else v
    if cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
        spec["bias"] = module.bias is not None
    if cls is nn.LayerNorm:
        spec["bias"] = getattr(module, "bias", None) is not None
    return spec


def _plain_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"}
    if spec["type"] == "LayerNorm" and not kw.get("elementwise_affine", True):
        kw.pop("bias", None)
    return kw


def decode_plain(spec: dict[str, Any], current: nn.Module | None = None) -> nn.Module:
    """Build the plain layer ``spec`` describes; reuse ``current`` when it already matches."""
    if current is not None and _plain_type(current) is not None:
        try:
            if encode_plain(current) == spec:
                return current
        except TypeError:
            pass
    cls = getattr(nn, spec["type"])
    device = dtype = None
    if current is not None:
        for t in [*current.parameters(), *current.buffers()]:
            device = t.device
            if t.is_floating_point():
                dtype = t.dtype
                break
    new = cls(**_plain_kwargs(spec))
    new = new.to(device=device) if device is not None else new
    if dtype is not None:
        new = new.to(dtype=dtype)
    if current is not None:
        new.train(current.training)
    return new


class _PlainCodec(ModuleCodec):
    name = "plain"

    def matches(self, module: nn.Module) -> bool:
        return type(module) in _PLAIN_FIELDS

    def encode(self, module: nn.Module) -> dict[str, Any]:
        return encode_plain(module)

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        return decode_plain(spec, current)


register_codec(_PlainCodec())


# --- history and attribute patches -----------------------------------------------------------


def add_history(
    model: nn.Module, step: str, config: dict[str, Any] | None = None, **info: Any
) -> None:
    """Record that ``step`` (a verb) was applied to ``model`` with ``config``; saved with the model."""
    entries = list(getattr(model, _HISTORY_ATTR, []))
    entries.append({"step": step, "config": config or {}, **info})
    object.__setattr__(model, _HISTORY_ATTR, entries)


def history(model: nn.Module) -> list[dict[str, Any]]:
    """The compression steps recorded on ``model`` (see :func:`add_history`)."""
    return list(getattr(model, _HISTORY_ATTR, []))


def set_attribute(model: nn.Module, module_name: str, attr: str, value: Any) -> None:
    """Set a plain (JSON-serialisable) attribute of a submodule and record it for :func:`load`.

    Structured pruning uses this for attributes such as an attention module's head count.
    """
    json.dumps(value)  # fail early if it cannot be saved
    setattr(get_module(model, module_name), attr, value)
    patches = dict(getattr(model, _PATCH_ATTR, {}))
    patches[f"{module_name}\0{attr}"] = value
    object.__setattr__(model, _PATCH_ATTR, patches)


# --- save / load -------------------------------------------------------------------------------


def _codec_provider_names(package: str) -> list[str]:
    """Modules of ``package`` (a subpackage of this package) whose name ends in ``codecs``."""
    try:
        pkg = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if pkg is None or not pkg.submodule_search_locations:
        return []
    return [
        f"{package}.{info.name}"
        for info in pkgutil.iter_modules(list(pkg.submodule_search_locations))
        if info.name.endswith("codecs")
    ]


def _import_providers(package: str) -> None:
    for name in _codec_provider_names(package):
        try:
            importlib.import_module(name)
        except ImportError as e:  # an optional dependency missing
            log.debug("could not import %s while looking for codecs: %s", name, e)


def _import_codec_providers() -> None:
    """Import every subpackage of this package that has a codecs module (they register on import).

    Found by scanning the package's folders, so that ``io`` names none of the families: a new
    family with a ``codecs`` module is found without an edit here.
    """
    top = importlib.import_module(_PACKAGE)
    for info in pkgutil.iter_modules(top.__path__):
        if info.ispkg:
            _import_providers(f"{_PACKAGE}.{info.name}")


def _import_codecs_of(model: nn.Module) -> None:
    """Make sure the codecs of the packages whose modules ``model`` holds are registered."""
    packages = set()
    for module in model.modules():
        parts = type(module).__module__.split(".")
        if len(parts) > 2 and parts[0] == _PACKAGE:
            packages.add(".".join(parts[:2]))
    for package in sorted(packages):
        _import_providers(package)


def _describe_model(model: nn.Module) -> dict[str, Any]:
    _import_codecs_of(model)
    records = []
    providers: dict[str, str] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        for codec in _codecs_for(module):
            records.append({"name": name, "codec": codec.name, "spec": codec.encode(module)})
            providers[codec.name] = type(codec).__module__
    patches = [
        {"module": k.split("\0")[0], "attr": k.split("\0")[1], "value": v}
        for k, v in getattr(model, _PATCH_ATTR, {}).items()
    ]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "torchcompress_version": __version__,
        "torch_version": torch.__version__,
        "model_class": type(model).__name__,
        "modules": records,
        # codec name -> the module that defines it, which load() imports when needed
        "codec_modules": providers,
        "attributes": patches,
        "history": history(model),
    }


def save(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save ``model`` (compressed or not) to a safetensors file at ``path``.

    Tensors shared between modules (tied weights) are stored once. The JSON description of the
    compression is stored in the file's metadata; see :func:`describe`.

    Args:
        model: the model to save.
        path: the file to write (conventionally ``*.safetensors``); its folder must exist.

    Raises:
        PathNotFoundError: the folder of ``path`` does not exist, or ``path`` is a folder.
        CompressionStateError: a state entry cannot be saved (not a tensor, a torch quantized
            tensor).
    """
    from safetensors.torch import save_file

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise PathNotFoundError(
            f"Cannot save to {os.fspath(path)!r}: the folder {folder!r} does not exist; create it "
            "first (os.makedirs(folder, exist_ok=True))."
        )
    if os.path.isdir(os.fspath(path)):
        raise PathNotFoundError(
            f"Cannot save to {os.fspath(path)!r}: it is a folder; give a file name inside it, "
            "e.g. 'model.safetensors'."
        )
    desc = _describe_model(model)
    state = model.state_dict(keep_vars=False)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CompressionStateError(
                f"state_dict entry {key!r} is not a tensor; it cannot be saved."
            )
        if t.is_quantized:
            raise CompressionStateError(
                f"state_dict entry {key!r} is a torch quantized tensor; torchcompress modules store "
                "plain integer tensors. Convert with tc.convert() instead of torch.ao."
            )
        ident = (
            (
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                tuple(t.stride()),
                t.dtype,
            )
            if t.numel()
            else None
        )
        if ident is not None and ident in by_storage:
            aliases[key] = by_storage[ident]
            continue
        if ident is not None:
            by_storage[ident] = key
        tensors[key] = t.detach().to("cpu").contiguous()
    desc["aliases"] = aliases
    # safetensors refuses tensors that share memory, even partially: give each its own storage.
    ptrs: dict[int, int] = {}
    for v in tensors.values():
        if v.numel():
            ptrs[v.untyped_storage().data_ptr()] = ptrs.get(v.untyped_storage().data_ptr(), 0) + 1
    tensors = {
        k: v.clone() if v.numel() and ptrs[v.untyped_storage().data_ptr()] > 1 else v
        for k, v in tensors.items()
    }
    save_file(tensors, os.fspath(path), metadata={FORMAT: json.dumps(desc)})


def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON description stored in a file written by :func:`save`.

    Raises:
        PathNotFoundError: there is no such file.
        DataError: the file is not a torchcompress safetensors file.
    """
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise PathNotFoundError(
            f"No such file: {os.fspath(path)!r}"
            + (" (it is a folder)" if os.path.isdir(path) else "")
            + "; give the path of a file written by tc.save()."
        )
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise DataError(f"{os.fspath(path)!r} is not a safetensors file: {e}") from e
    if FORMAT not in meta:
        raise DataError(
            f"{os.fspath(path)!r} has no torchcompress description; it was not written by tc.save()."
        )
    return json.loads(meta[FORMAT])


def load(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    map_location: str | torch.device | None = None,
) -> nn.Module:
    """Load a file written by :func:`save` into ``model``, a fresh instance of the architecture.

    The compressed modules are rebuilt in place (via their codecs), then every tensor is loaded
    strictly. Tensors the file stores once (tied weights) are one tensor of the model again, also
    where a codec rebuilt one of their modules; tensors it stores separately are separate. If
    anything fails, the model is left as it was.

    Args:
        path: the file written by :func:`save`.
        model: a freshly built model of the same architecture (its weights are overwritten).
        map_location: device for the loaded tensors (default: where the model's tensors are).

    Returns:
        ``model``, compressed as it was when saved.

    Raises:
        PathNotFoundError: there is no such file.
        DataError: the file is not one written by :func:`save`, or it is truncated.
        SelectionError: the file names a module the model does not have.
        CompressionStateError: a codec is unknown or the tensors do not fit.
    """
    from safetensors.torch import load_file

    from .select import snapshot_modules

    desc = describe(path)
    if desc.get("format_version", 0) > FORMAT_VERSION:
        raise CompressionStateError(
            f"{os.fspath(path)!r} was written by a newer torchcompress (format {desc['format_version']}); upgrade."
        )
    device = map_location
    if device is None:
        p = next(iter([*model.parameters(), *model.buffers()]), None)
        device = p.device if p is not None else "cpu"
    try:
        tensors = load_file(os.fspath(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types on a truncated body
        raise DataError(
            f"{os.fspath(path)!r} is truncated or corrupt (its tensors cannot be read: {e}); "
            "save the model again."
        ) from e
    for alias, target in desc.get("aliases", {}).items():
        tensors[alias] = tensors[target]

    decoded: list[tuple[ModuleCodec, str]] = []
    providers = desc.get("codec_modules", {})
    with snapshot_modules(model):
        for patch in desc.get("attributes", []):
            set_attribute(model, patch["module"], patch["attr"], patch["value"])
        for rec in desc.get("modules", []):
            codec = _codec_by_name(rec["codec"], providers.get(rec["codec"]))
            try:
                current: nn.Module | None = get_module(model, rec["name"])
            except SelectionError as e:
                parent = rec["name"].rpartition(".")[0]
                if not codec.creates_missing or not _has_module(model, parent):
                    raise SelectionError(
                        f"The saved model has a module {rec['name']!r} that this model does not: {e} "
                        "Pass a fresh model of the architecture that was saved."
                    ) from None
                current = None
            new = codec.decode(rec["spec"], current)  # type: ignore[arg-type]
            if current is None:
                parent, _, child = rec["name"].rpartition(".")
                get_module(model, parent).add_module(child, new)
            elif new is not current:
                set_module(model, rec["name"], new)
            decoded.append((codec, rec["name"]))
        aliases = dict(desc.get("aliases", {}))
        _untie_unshared(model, aliases, set(tensors))
        missing, unexpected = _load_state(model, tensors)
        _tie_aliases(model, aliases)
        if missing or unexpected:
            raise CompressionStateError(
                f"The file's tensors do not fit {type(model).__name__}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}. Was it saved from a different architecture?"
            )
        for codec, name in decoded:
            codec.after_load_model(model, name)
    object.__setattr__(model, _HISTORY_ATTR, list(desc.get("history", [])))
    return model
