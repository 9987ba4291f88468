"""The verb: :func:`fuse` folds every safe Linear/Conv -> BatchNorm pair; :func:`fusion_pairs`.

The pairs come from the analysis (:mod:`torchcompress.fusion.analysis`) or from explicit
``pairs=``; each is judged exact or refused with a reason, and the chosen ones are swapped in
atomically (:func:`torchcompress.select.replace_modules`).

Example:
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    >>> fusion_pairs(m)
    [('0', '1')]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from .. import forms, io
from ..errors import ConfigError, SelectionError, UnsupportedModuleError, did_you_mean
from ..select import get_module, matches, replace_modules, select_modules
from .analysis import _analyse, _auto_pairs, _shared, _verdict
from .surgery import (
    _BN_TYPES,
    _FUSABLE,
    _PAIR_TYPES,
    _check_pair_types,
    _is_compressed,
    fuse_conv_bn,
)

__all__ = ["fuse", "fusion_pairs"]

log = logging.getLogger(__name__)


def fusion_pairs(model: nn.Module, *, example_inputs: Any = None) -> list[tuple[str, str]]:
    """The ``(layer, batchnorm)`` pairs :func:`fuse` would fold, without changing the model.

    Args:
        model: the model.
        example_inputs: a batch the model accepts, used where torch.fx cannot trace the model.

    Raises:
        ConfigError: torch.fx cannot see how some BatchNorm is used and no ``example_inputs`` were
            given.

    Example:
        >>> import torchcompress as tc
        >>> fusion_pairs(tc.models.create("resnet20"))[:2]
        [('conv1', 'bn1'), ('layer1.0.conv1', 'layer1.0.bn1')]
    """
    pairs, _, _ = _plan(model, None, example_inputs, [], [])
    return pairs


def _plan(
    model: nn.Module,
    pairs: Sequence[tuple[str, str]] | None,
    example_inputs: Any,
    inc: list[str],
    exc: list[str],
) -> tuple[list[tuple[str, str]], dict[str, str], str]:
    """Pairs to fold, reasons for the ones refused (by module name), and the method used."""
    shared = _shared(model)
    reasons: dict[str, str] = {}
    has_bn = any(isinstance(m, _BN_TYPES) for m in model.modules())
    if pairs is None and not has_bn:
        return [], reasons, "none"

    facts, errors = _analyse(model, example_inputs)
    if pairs is None:
        if facts is None or facts.unseen:
            missing = sorted(facts.unseen) if facts is not None else []
            detail = "; ".join(errors) or "torch.fx cannot trace it"
            raise ConfigError(
                f"fuse cannot see how the BatchNorm layers {missing or '(all)'} of "
                f"{type(model).__name__} are used ({detail}). Pass example_inputs=<a batch the "
                "model accepts> so that fuse follows one real forward, or pairs=[('conv', 'bn'), "
                "...] naming the layer that feeds each BatchNorm."
            )
        candidates = _auto_pairs(facts)
    else:
        candidates = _check_explicit(model, pairs)

    selected = []
    for layer_name, bn_name in candidates:
        if inc and not (matches(layer_name, inc) or matches(bn_name, inc)):
            continue
        if exc and (matches(layer_name, exc) or matches(bn_name, exc)):
            continue
        layer = get_module(model, layer_name)
        if pairs is None and (not isinstance(layer, tuple(_FUSABLE)) or _is_compressed(layer)):
            if _is_compressed(layer) or isinstance(layer, tuple(_FUSABLE)):
                log.debug("fuse: skipping %r: already compressed or not a plain layer", layer_name)
                reasons[layer_name] = reasons[bn_name] = (
                    f"{layer_name!r} ({type(layer).__name__}) is not a plain layer"
                )
            continue
        reason = _verdict(model, facts, layer_name, bn_name, shared)
        if reason is not None:
            if pairs is not None:
                raise UnsupportedModuleError(
                    f"Cannot fuse ({layer_name!r}, {bn_name!r}): {reason}. Remove the pair from "
                    "pairs= (fuse never folds a pair where that would change the outputs)."
                )
            log.debug("fuse: not folding (%s, %s): %s", layer_name, bn_name, reason)
            reasons[layer_name] = reasons[bn_name] = reason
            continue
        selected.append((layer_name, bn_name))
    return selected, reasons, facts.method if facts is not None else "pairs"


def _check_explicit(model: nn.Module, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(pairs, str | bytes) or not isinstance(pairs, Iterable):
        raise ConfigError(f"pairs must be a list of (layer, batchnorm) name pairs, got {pairs!r}.")
    out: list[tuple[str, str]] = []
    names = [n for n, _ in model.named_modules() if n]
    used: set[str] = set()
    for pair in pairs:
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(p, str) for p in pair)
        ):
            raise ConfigError(
                f"Each entry of pairs must be a (layer, batchnorm) name pair, got {pair!r}."
            )
        layer_name, bn_name = pair
        for n in pair:
            if n not in names:
                raise SelectionError(
                    f"pairs names {n!r}, which is not a module of {type(model).__name__}."
                    f"{did_you_mean(n, names)}"
                )
            if n in used:
                raise ConfigError(f"pairs names {n!r} twice; each module can be folded once.")
            used.add(n)
        layer, bn = get_module(model, layer_name), get_module(model, bn_name)
        if isinstance(layer, _BN_TYPES) and isinstance(bn, tuple(_FUSABLE)):
            raise ConfigError(
                f"pairs entry {tuple(pair)!r} is (batchnorm, layer); give (layer, batchnorm): "
                f"({bn_name!r}, {layer_name!r})."
            )
        reason = _check_pair_types(layer, bn, layer_name, bn_name)
        if reason is not None:
            raise UnsupportedModuleError(f"Cannot fuse ({layer_name!r}, {bn_name!r}): {reason}.")
        out.append((layer_name, bn_name))
    return out


def fuse(
    model: nn.Module,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    example_inputs: Any = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> nn.Module:
    """Fold every BatchNorm into the Linear/Conv layer that feeds it, in place.

    Each folded BatchNorm becomes ``nn.Identity`` and its layer a plain layer of the same kind with
    the folded weight and a bias (see the module documentation for the maths and the safety rules).
    The model object is edited in place (it is not turned into a ``GraphModule``) and returned; if
    anything fails it is left as it was. Eval-mode outputs are unchanged up to float rounding; the
    folded layers use the running statistics, so a model still in training mode stops normalising
    with batch statistics there (fuse is for inference).

    Args:
        model: the model to fuse.
        pairs: explicit ``[(layer, batchnorm), ...]`` qualified names to fold, instead of finding
            them. Each pair is still checked against the model's graph where one can be built.
        example_inputs: a batch the model accepts (tensor, tuple, dict of keyword inputs or
            :class:`~torchcompress.batches.Batch`), used to follow one real forward where torch.fx
            cannot trace the model (data-dependent control flow, Hugging Face models).
        include: glob patterns: only pairs whose layer or BatchNorm matches are folded. A module
            named exactly that cannot be folded is an error saying why.
        exclude: glob patterns of layers or BatchNorms not to fold.

    Returns:
        ``model``, fused.

    Raises:
        ConfigError: torch.fx cannot see how some BatchNorm is used and neither ``example_inputs``
            nor ``pairs`` were given (the message names them), or ``pairs`` is malformed.
        SelectionError: a name in ``pairs``, ``include`` or ``exclude`` matches no module.
        UnsupportedModuleError: an explicit pair (or a layer named exactly in ``include``) cannot
            be folded; the message says why.
        CompressionStateError: a BatchNorm follows a layer that is already quantized (fuse
            before quantizing; see :mod:`torchcompress.forms`). A BatchNorm after a factorized
            layer is left unfolded, with a warning.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
        >>> tc.fuse(m)
        Sequential(
          (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
          (1): Identity()
        )
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse() needs an nn.Module, got {type(model).__name__}.")
    if include is not None or exclude is not None:
        select_modules(model, include, exclude, types=None)  # patterns matching nothing raise
    inc = [include] if isinstance(include, str) else list(include or [])
    exc = [exclude] if isinstance(exclude, str) else list(exclude or [])

    chosen, reasons, method = _plan(model, pairs, example_inputs, inc, exc)
    fused_names = {n for pair in chosen for n in pair}
    modules = dict(model.named_modules())
    # a compressed layer feeding a BatchNorm: the order of the steps decides (fuse first)
    feeding = [
        n
        for n in reasons
        if n in modules and _is_compressed(modules[n]) and not isinstance(modules[n], _BN_TYPES)
    ]
    for name, layer_forms in forms.check(model, "fuse", targets=feeding).items():
        log.warning(
            "fuse: the BatchNorm after %r (%s) is not folded: %s",
            name,
            ", ".join(sorted(layer_forms)),
            "; ".join(forms.rule(f, "fuse").note for f in sorted(layer_forms)),
        )
    for pat in inc:
        m = modules.get(pat)
        if m is not None and isinstance(m, _PAIR_TYPES) and pat not in fused_names:
            why = reasons.get(pat, "no Linear/Conv -> BatchNorm pair of it was found")
            raise UnsupportedModuleError(
                f"{pat!r} was asked for in include= but cannot be fused: {why}."
            )

    factories: dict[str, Any] = {}
    training = False
    for layer_name, bn_name in chosen:
        bn = get_module(model, bn_name)
        training = training or bn.training
        factories[layer_name] = lambda old, bn=bn: fuse_conv_bn(old, bn)
        factories[bn_name] = lambda old: nn.Identity()
    if factories:
        replace_modules(model, factories)
        if training:
            log.warning(
                "fuse: %s is in training mode; the folded layers use the BatchNorm running "
                "statistics (eval-mode arithmetic).",
                type(model).__name__,
            )
    log.info("fuse: folded %d BatchNorm layers (%s)", len(chosen), method)
    io.add_history(model, "fuse", {"pairs": [list(p) for p in chosen], "method": method})
    return model
