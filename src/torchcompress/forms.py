"""The compressed forms a layer can be in, and which verb may follow which: one table.

Every verb that changes a model leaves its layers in a *form*: ``tc.prune`` makes them *masked*,
``tc.quantize`` *fake-quant*, ``tc.prepare_qat`` *QAT*, ``tc.convert`` *converted*,
``tc.kmeans_quantize`` *k-means*, ``tc.factorize`` *factorized*, ``tc.prune_channels``
*channel-pruned*; ``tc.finalize``, ``tc.merge_lowrank`` and ``tc.fuse`` give plain (*dense*)
layers again. Forms combine: a pruned layer that is then quantized is *masked* and *fake-quant*
at once (it quantizes its masked weight, and the converted model still holds the zeros); a
factorized layer whose factors are then quantized is *factorized* and *fake-quant*.

This module holds, in one place:

- :data:`FORMS` and :data:`VERBS`: what each form is and which verb makes it;
- the table of :class:`Rule`\\ s: for a layer in a given form, whether a verb may follow (and what
  it then does to what the earlier step bought), or which verb to call first;
- the recognisers: how a layer's form is recognised *without importing the families*. Each family
  registers a recogniser for its modules when it is imported (:func:`register_recogniser`), so a
  model holding a family's modules has that family's recognisers registered;
- the carriers: how a form survives when another family replaces the layer by its own module
  (:func:`carry_over`; a pruning mask moves onto the fake-quant layer's master weight).

Every verb calls :func:`check` at its start; an inadmissible order raises one
:class:`~torchcompress.errors.CompressionStateError` naming every offending layer and the verb to
call first. Recipes and the command line ask :func:`check_order` (verb after verb) before running.
``docs/composition.md`` is generated from this table (:func:`markdown_table`, checked by a test).

Adding a form is one :func:`register_form` plus its rules (:func:`allow` / :func:`block`) and,
in the family that makes it, a :func:`register_recogniser` call.

Example:
    >>> from torchcompress import forms
    >>> forms.check_order("prune", "quantize").note[:38]
    'quantizes the masked (zeroed) weight: '
    >>> forms.check_order("quantize", "prune")
    Traceback (most recent call last):
    ...
    torchcompress.errors.CompressionStateError: tc.prune cannot follow tc.quantize: ...
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .errors import CompressionStateError, UnsupportedModuleError
from .registry import Registry

__all__ = [
    "FORMS",
    "VERBS",
    "Carried",
    "Form",
    "Rule",
    "Verb",
    "after",
    "allow",
    "block",
    "carriable",
    "carried_forms",
    "carry_over",
    "check",
    "check_order",
    "forms_of",
    "layer_forms",
    "makers",
    "markdown_table",
    "offences",
    "register_carrier",
    "register_form",
    "register_recogniser",
    "register_verb",
    "rule",
]

#: The form of a plain layer (no recogniser matches it).
DENSE = "dense"


@dataclass(frozen=True)
class Form:
    """A form a layer can be in.

    Attributes:
        name: the key (``"masked"``, ``"fake-quant"``, ...).
        description: one line: what such a layer holds.
        made_by: the verb that puts a layer in this form (``""`` for dense).
        quantized: its weights are quantized (an integer grid, simulated or real, or a codebook):
            the verbs that start from a float layer refuse it.
    """

    name: str
    description: str
    made_by: str = ""
    quantized: bool = False


@dataclass(frozen=True)
class Verb:
    """A verb that changes a model's layers.

    Attributes:
        name: the verb's name (``tc.<name>``).
        makes: the form it leaves its targets in.
        acts_on: the forms of the layers it changes; ``None`` for every layer it reaches. A verb
            that acts on some forms only (``tc.convert`` on fake-quant and QAT layers) leaves other
            layers as they are, whatever their form.
    """

    name: str
    makes: str
    acts_on: frozenset[str] | None = None


@dataclass(frozen=True)
class Rule:
    """Whether ``verb`` may follow on a layer in ``form``.

    Attributes:
        allowed: the verb may follow.
        note: allowed: what the verb does with what the earlier step bought; blocked: what to do.
        first: blocked: the verb to call before the form's maker (``None``: start from the float
            model).
    """

    allowed: bool
    note: str
    first: str | None = None


@dataclass(frozen=True)
class Carried:
    """What became of one form when its layer was replaced (see :func:`carry_over`).

    Attributes:
        form: the form.
        kept: whether the replacement keeps it.
        note: what happened, for logs and reports ("pruning mask kept on weight", or why not).
    """

    form: str
    kept: bool
    note: str


#: The forms, by name.
FORMS: Registry[Form] = Registry("form")
#: The verbs that change layers' forms, by name.
VERBS: Registry[Verb] = Registry("verb")

_RULES: dict[tuple[str, str], Rule] = {}
_RECOGNISERS: dict[str, list[Callable[[nn.Module], bool]]] = {}
Carrier = Callable[[nn.Module, nn.Module, Callable[[str, torch.Tensor], torch.Tensor]], Carried]
_CARRIERS: dict[str, Carrier] = {}


def register_form(form: Form) -> Form:
    """Add a form (its rules are set with :func:`allow` / :func:`block`)."""
    FORMS.add(form.name, form, overwrite=True)
    return form


def register_verb(verb: Verb) -> Verb:
    """Add a verb that changes layers' forms."""
    VERBS.add(verb.name, verb, overwrite=True)
    return verb


def allow(form: str, verb: str, note: str) -> None:
    """Declare that ``verb`` may follow on a layer in ``form``; ``note`` says what it keeps."""
    _RULES[(FORMS.get(form).name, VERBS.get(verb).name)] = Rule(True, note)


def block(form: str, verb: str, note: str, first: str | None = None) -> None:
    """Declare that ``verb`` may not follow on a layer in ``form``; ``note`` says what to do."""
    _RULES[(FORMS.get(form).name, VERBS.get(verb).name)] = Rule(False, note, first)


def rule(form: str, verb: str) -> Rule:
    """The rule for ``verb`` on a layer in ``form`` (allowed when none was declared)."""
    FORMS.get(form)
    VERBS.get(verb)
    return _RULES.get((form, verb), Rule(True, ""))


def register_recogniser(form: str, recognise: Callable[[nn.Module], bool]) -> None:
    """Let ``recognise(module)`` say whether a module is (itself) in ``form``.

    Families call this when they are imported, for their own module classes or parametrizations.
    """
    FORMS.get(form)
    fns = _RECOGNISERS.setdefault(form, [])
    if recognise not in fns:
        fns.append(recognise)


def register_carrier(form: str, carry: Carrier) -> None:
    """Let ``carry(old, new, layout)`` move ``form`` from a replaced layer onto its replacement.

    ``layout(tensor_name, t)`` maps a tensor in ``old``'s stored layout to ``new``'s (a transpose for
    Hugging Face's ``Conv1D``). The carrier returns a :class:`Carried` saying whether the form was
    kept, and a note.
    """
    FORMS.get(form)
    _CARRIERS[form] = carry


def forms_of(module: nn.Module) -> frozenset[str]:
    """The forms ``module`` itself is in (its submodules not included; empty for a plain layer)."""
    return frozenset(form for form, fns in _RECOGNISERS.items() if any(fn(module) for fn in fns))


def carried_forms(module: nn.Module) -> frozenset[str]:
    """The forms of ``module`` that move onto a replacement (those with a carrier: a pruning mask)."""
    return frozenset(f for f in forms_of(module) if f in _CARRIERS)


def carriable(module: nn.Module) -> bool:
    """``module`` is in at least one form and every one of its forms has a carrier (a pruning
    mask): a family may replace it, taking over its stored tensors, and keep what it holds."""
    own = forms_of(module)
    return bool(own) and all(f in _CARRIERS for f in own)


def carry_over(
    old: nn.Module,
    new: nn.Module,
    layout: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> list[Carried]:
    """Move the forms of ``old`` that have a carrier onto ``new``, its replacement.

    A family that replaces a layer by its own module, taking over the layer's stored tensors (the
    float master weight of a fake-quant layer), calls this so that what an earlier step bought is
    kept (a pruning mask keeps applying to the new module's weight).

    Returns:
        One :class:`Carried` per form of ``old`` that has a carrier (a form dropped is reported,
        never silent: log it, put it in the verb's report).
    """
    fn = layout or (lambda _name, t: t)
    return [_CARRIERS[f](old, new, fn) for f in sorted(forms_of(old)) if f in _CARRIERS]


def _matches(name: str, patterns: Sequence[str]) -> bool:
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
    return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)


def _patterns(p: str | Sequence[str] | None) -> list[str]:
    if p is None:
        return []
    return [p] if isinstance(p, str) else [x for x in p if isinstance(x, str)]


def layer_forms(
    model: nn.Module,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    targets: Iterable[str] | None = None,
) -> dict[str, frozenset[str]]:
    """The compressed layers of ``model`` and their forms, outermost module first.

    A layer's forms are its own and those of its submodules (a factorized layer whose factors are
    quantized is ``{"factorized", "fake-quant"}``). Plain layers are not listed.

    Args:
        model: the model.
        include: glob patterns of module names to look at (a module whose ancestor matches is in).
        exclude: glob patterns of module names to leave out.
        targets: exact module names to look at (with their submodules) instead of patterns.
    """
    inc, exc = _patterns(include), _patterns(exclude)
    names = None if targets is None else set(targets)
    out: dict[str, frozenset[str]] = {}
    for name, module in model.named_modules():
        own = forms_of(module)
        if not own:
            continue
        if names is not None:
            if (
                not any(name == t or name.startswith(t + ".") for t in names if t)
                and "" not in names
            ):
                continue
        elif (inc and not _matches(name, inc)) or (exc and _matches(name, exc)):
            continue
        outer = next((o for o in out if o == "" or name.startswith(o + ".")), None)
        if outer is None:
            out[name] = own
        else:
            out[outer] = out[outer] | own
    return out


def _call(verb: str) -> str:
    return f"tc.{verb}"


def offences(forms: frozenset[str], verb: str) -> list[tuple[str, Rule]]:
    """The forms among ``forms`` (of one layer, or of a whole model) that ``verb`` may not follow.

    Returns:
        ``(form, rule)`` for each such form, sorted by form; empty when ``verb`` may follow, or
        when it acts on some forms only (:attr:`Verb.acts_on`) and none of them is in ``forms``.

    Example:
        >>> from torchcompress import forms
        >>> [(f, r.first) for f, r in forms.offences(frozenset({"masked", "kmeans"}), "prune")]
        [('kmeans', 'prune')]
    """
    v = VERBS.get(verb)
    if v.acts_on is not None and not forms & v.acts_on:
        return []  # the verb leaves this layer as it is
    return [(f, r) for f in sorted(forms) if not (r := rule(f, v.name)).allowed]


def after(forms: frozenset[str], verb: str) -> frozenset[str]:
    """The forms of a model whose layers are in ``forms`` once ``verb`` has run on it.

    What a recipe or a plan follows before anything runs: the verb adds the form it makes and, if
    it acts on some forms only, removes those (``tc.convert`` turns fake-quant and QAT into
    converted); a verb that gives plain layers (``tc.fuse``) adds nothing.

    Example:
        >>> from torchcompress import forms
        >>> sorted(forms.after(frozenset({"masked", "fake-quant"}), "convert"))
        ['converted', 'masked']
    """
    v = VERBS.get(verb)
    kept = forms - v.acts_on if v.acts_on is not None else forms
    return (kept | {v.makes}) - {DENSE}


def makers(form: str) -> tuple[str, ...]:
    """The verbs that start a layer on its way to ``form``: its maker, or, for a form made from
    other forms (converted, from fake-quant or QAT), the makers of those.

    Example:
        >>> from torchcompress import forms
        >>> forms.makers("converted"), forms.makers("masked"), forms.makers("dense")
        (('quantize', 'prepare_qat'), ('prune',), ())
    """
    out: list[str] = []
    todo, seen = [form], set()
    while todo:
        f = todo.pop(0)
        if f in seen or not FORMS.get(f).made_by:
            continue
        seen.add(f)
        v = VERBS.get(FORMS.get(f).made_by)
        if v.acts_on is None or not v.acts_on - seen:
            out += [] if v.name in out else [v.name]
        else:
            todo += sorted(v.acts_on - seen)
    return tuple(out)


def check(
    model: nn.Module,
    verb: str,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    targets: Iterable[str] | None = None,
) -> dict[str, frozenset[str]]:
    """Raise unless ``verb`` may follow on every compressed layer it reaches; return their forms.

    Called by every verb at its start, with the verb's own ``include``/``exclude`` (or the exact
    ``targets`` it found), before anything changes.

    Raises:
        CompressionStateError: some layers are in a form ``verb`` may not follow; the message names
            every one of them, grouped by form, and says which verb to call first.
        ConfigError: ``verb`` is not a registered verb.
        UnsupportedModuleError: ``model`` is not an ``nn.Module``.
    """
    v = VERBS.get(verb)
    if not isinstance(model, nn.Module):
        raise UnsupportedModuleError(
            f"{_call(verb)} takes an nn.Module as its model (first argument), got "
            f"{type(model).__name__} {model!r:.60}."
        )
    found = layer_forms(model, include=include, exclude=exclude, targets=targets)
    groups: dict[tuple[str, Rule], list[str]] = {}
    for name, forms in found.items():
        for form, r in offences(forms, v.name):
            groups.setdefault((form, r), []).append(name or "(the model itself)")
    if groups:
        n = len({n for names in groups.values() for n in names})
        lines = []
        for (form, r), names in groups.items():
            maker = FORMS.get(form).made_by
            made = f", made by {_call(maker)}" if maker else ""
            lines.append(f"- {', '.join(repr(x) for x in names)} ({form}{made}): {r.note}")
        raise CompressionStateError(
            f"{_call(verb)} cannot follow on {n} layer{'s' if n > 1 else ''} of "
            f"{type(model).__name__} in their current form; nothing was changed.\n"
            + "\n".join(lines)
        )
    return found


def check_order(previous: str, next: str) -> Rule:
    """The rule for calling verb ``next`` on the layers verb ``previous`` left.

    Returns:
        The :class:`Rule` (``rule.note`` says what ``next`` keeps of what ``previous`` bought).

    Raises:
        CompressionStateError: ``next`` may not follow ``previous``; says which verb to call first.
        ConfigError: an unknown verb.
    """
    made = VERBS.get(previous).makes
    v = VERBS.get(next)
    r = rule(made, v.name)
    if v.acts_on is not None and made not in v.acts_on:
        return Rule(True, f"{_call(next)} leaves {made} layers as they are")
    if not r.allowed:
        raise CompressionStateError(f"{_call(next)} cannot follow {_call(previous)}: {r.note}")
    return r


def markdown_table() -> str:
    """The forms-by-verbs table of ``docs/composition.md`` (generated from the registries)."""
    verbs = VERBS.names()
    head = "| layer form (made by) | " + " | ".join(f"`{v}`" for v in verbs) + " |"
    rows = [head, "|" + "---|" * (len(verbs) + 1)]
    notes = []
    for f in FORMS.names():
        form = FORMS.get(f)
        by = f" (`{form.made_by}`)" if form.made_by else ""
        cells = []
        for v in verbs:
            verb, r = VERBS.get(v), rule(f, v)
            if not r.allowed:
                cells.append(f"✗ `{r.first}` first" if r.first else "✗")
            elif verb.acts_on is not None and f not in verb.acts_on:
                cells.append("·")
            else:
                cells.append("✓")
            if r.note:
                notes.append(f"- **{f} → {v}** ({'✓' if r.allowed else '✗'}): {r.note}")
        rows.append(f"| {f}{by} | " + " | ".join(cells) + " |")
    forms = [f"- **{f}**: {FORMS.get(f).description}" for f in FORMS.names()]
    return "\n".join(["\n".join(forms), "", "\n".join(rows), "", "\n".join(notes)]) + "\n"


# --- the built-in forms, verbs and table -------------------------------------------------------

_FORMS = [
    Form(DENSE, "a plain layer (Linear, Conv, Hugging Face Conv1D)"),
    Form("masked", "pruning masks on the weight: pruned weights are exact zeros", "prune"),
    Form(
        "fake-quant",
        "float master weight, quantization simulated exactly",
        "quantize",
        quantized=True,
    ),
    Form(
        "qat",
        "fake-quant with trainable quantizers (and folded BatchNorm)",
        "prepare_qat",
        quantized=True,
    ),
    Form(
        "converted", "integer weights and kernels: the deployable layer", "convert", quantized=True
    ),
    Form("kmeans", "a codebook and per-weight codes", "kmeans_quantize", quantized=True),
    Form("factorized", "two smaller layers (first, second)", "factorize"),
    Form("channel-pruned", "a smaller plain layer: channels removed", "prune_channels"),
]
_VERBS = [
    Verb("prune", "masked"),
    Verb("finalize", DENSE, frozenset({"masked"})),
    Verb("quantize", "fake-quant"),
    Verb("prepare_qat", "qat"),
    Verb("convert", "converted", frozenset({"fake-quant", "qat"})),
    Verb("kmeans_quantize", "kmeans"),
    Verb("factorize", "factorized"),
    Verb("merge_lowrank", DENSE, frozenset({"factorized"})),
    Verb("fuse", DENSE),
    Verb("prune_channels", "channel-pruned"),
]
for _f in _FORMS:
    register_form(_f)
for _v in _VERBS:
    register_verb(_v)

_FLOAT = "start again from the float model"
_QUANT_FORMS = [f for f in FORMS.names() if FORMS.get(f).quantized]

allow("masked", "prune", "re-prunes: pruned weights stay pruned, sparsity is the new total")
allow("masked", "finalize", "bakes the mask in: a plain layer with exact zeros")
allow(
    "masked",
    "quantize",
    "quantizes the masked (zeroed) weight: the mask stays on the fake-quant layer and the "
    "converted integer weight holds exact zeros; tc.profile reports both savings",
)
allow("masked", "prepare_qat", "the mask stays on the QAT layer: pruned weights stay zero")
allow("masked", "convert", "the integer weight holds the exact zeros of the mask")
allow("masked", "kmeans_quantize", "pruned weights get an exact zero code")
allow(
    "masked",
    "factorize",
    "factors the masked weight; the factors are dense, so the mask is dropped (logged and in "
    "the low-rank report); prune the factors again with tc.prune",
)
allow("masked", "merge_lowrank", "the merged weight is the product of the masked factors")
allow(
    "masked",
    "fuse",
    "folds the BatchNorm into the layer's original weight (a per-channel scale) and keeps the "
    "mask on the folded layer; a layer whose bias is masked too is not folded",
)
block(
    "masked",
    "prune_channels",
    "prune channels first, then tc.prune; or call tc.finalize first (bake the masks in)",
    "finalize",
)
allow("factorized", "prune", "prunes the factors (first, second) as two layers")
allow("factorized", "finalize", "bakes the factors' masks in")
allow("factorized", "quantize", "quantizes the factors (first, second) as two layers")
allow("factorized", "prepare_qat", "the factors train quantized")
allow("factorized", "convert", "converts the quantized factors")
allow("factorized", "kmeans_quantize", "a codebook per factor")
allow("factorized", "factorize", "left as it is (tc.lowrank.retruncate changes its rank)")
allow("factorized", "merge_lowrank", "multiplies the factors back into one layer")
allow(
    "factorized",
    "fuse",
    "a BatchNorm after a factorized layer is not folded (it runs in float; a warning says so): "
    "call tc.fuse before tc.factorize to fold it",
)
block(
    "factorized",
    "prune_channels",
    "call tc.prune_channels before tc.factorize (or tc.merge_lowrank first)",
    "prune_channels",
)
for _form in _QUANT_FORMS:
    _by = FORMS.get(_form).made_by
    block(
        _form,
        "prune",
        "call tc.prune on the float model, then quantize it (a masked layer quantizes its "
        "masked weight)",
        "prune",
    )
    block(
        _form,
        "factorize",
        "call tc.factorize on the float model, then quantize it (the factors get quantized)",
        "factorize",
    )
    block(_form, "merge_lowrank", "call tc.merge_lowrank before quantizing", "merge_lowrank")
    block(_form, "fuse", "call tc.fuse before quantizing", "fuse")
    block(_form, "prune_channels", "call tc.prune_channels before quantizing", "prune_channels")
    for _other in ("quantize", "prepare_qat", "kmeans_quantize"):
        if _other == _by == "prepare_qat":
            block(
                _form,
                _other,
                f"{_FLOAT} (tc.quant.requantize changes a QAT model's bit widths)",
            )
        elif _other == _by:
            allow(
                _form,
                _other,
                f"left as it is (already {_form}); {_call(_other)} acts on the other layers, and "
                "with none left is an error that says so",
            )
        else:
            block(_form, _other, f"{_FLOAT} ({_call(_other)} replaces float layers)")
allow("fake-quant", "finalize", "bakes the mask into the float master weight")
allow("qat", "finalize", "bakes the mask into the float master weight (then free to train)")
allow("fake-quant", "convert", "integer weights and kernels")
allow("qat", "convert", "folds BatchNorms, then integer weights and kernels")
allow("converted", "convert", "left as it is (already converted)")
block("converted", "prepare_qat", f"{_FLOAT}: tc.prepare_qat, then tc.convert")
