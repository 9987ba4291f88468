"""Which step may follow which in a recipe: the forms of :mod:`torchcompress.forms`, step by step.

Each compressing step is a verb of :data:`torchcompress.forms.VERBS` under the same name (the
``prune`` step calls ``tc.prune``, ...). A recipe is checked before anything runs by following the
model's forms through its steps (:func:`after`, from :func:`torchcompress.forms.after`) and
asking the forms table whether each step may follow (:func:`check_step`, from
:func:`torchcompress.forms.offences`, with the table's notes and the verb to call first). Form
names are those of :data:`torchcompress.forms.FORMS`, spelled as recipe keys (``"fake_quant"`` for
``"fake-quant"``; either spelling is read).

What the forms table cannot say stays here, small: a step that is not a verb of the table
(``finetune`` needs a model that can train) declares the forms it cannot run on with
:func:`register_effect`, and the recipe's own policy on a few orders (:data:`RULES`).

Example:
    >>> from torchcompress.recipe.orders import after, check_step
    >>> forms = after(frozenset(), "quantize")
    >>> sorted(forms)
    ['fake_quant']
    >>> check_step(forms, "prune")[:66]
    'the model is already quantized (fake_quant): prune before quantize'
    >>> check_step(frozenset(), "convert")
    'nothing to convert: call quantize or prepare_qat first'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import forms as _forms
from ..errors import ConfigError

__all__ = [
    "RULES",
    "FormEffect",
    "Rule",
    "after",
    "check_step",
    "quantized_forbidden",
    "register_effect",
]


@dataclass(frozen=True)
class FormEffect:
    """What a step that is not a verb of the forms table does to the forms: adds some, removes
    some."""

    adds: frozenset[str] = frozenset()
    removes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule:
    """The recipe's own rule for a step: the forms it cannot run on (``forbidden``: form -> what
    to do instead), the forms it needs one of (``requires``, with ``requires_advice``), and the
    forms on which the recipe lets it run although the forms table blocks them per layer
    (``allowed``: the step only reaches other layers)."""

    forbidden: Mapping[str, str] = field(default_factory=dict)
    requires: frozenset[str] = frozenset()
    requires_advice: str = ""
    allowed: frozenset[str] = frozenset()


#: Step kind (not a verb of the forms table) -> its effect on the forms.
EFFECTS: dict[str, FormEffect] = {}


def _name(form: str) -> str:
    return form.replace("_", "-")


def _norm(forms: frozenset[str]) -> frozenset[str]:
    return frozenset(_name(f) for f in forms)


def _spell(form: str) -> str:
    return form.replace("-", "_")


def _spelled(forms: frozenset[str]) -> frozenset[str]:
    return frozenset(_spell(f) for f in forms)


def quantized_forbidden(advice: str) -> dict[str, str]:
    """The quantized forms of the forms table, each with ``advice`` (for a step that needs a float
    model)."""
    return {
        _spell(f): f"the model is already quantized ({_spell(f)}): {advice}"
        for f in _forms.FORMS.names()
        if _forms.FORMS.get(f).quantized
    }


_MASKED = "the model is masked: call finalize first (a recipe bakes the masks in before quantizing)"

#: Step kind -> the recipe's own rule, checked before the forms table: steps that are not verbs of
#: the table, and the recipe's policy where it is stricter (masks baked in before quantizing) or
#: looser (``fuse`` reaches only float Conv/BatchNorm pairs) than the per-layer table.
RULES: dict[str, Rule] = {
    "quantize": Rule({"masked": _MASKED}),
    "prepare_qat": Rule({"masked": _MASKED}),
    "fuse": Rule(allowed=frozenset({"fake-quant"})),
    "finetune": Rule(
        {
            "converted": "the model is converted (it stores integers and cannot train): fine-tune "
            "before convert"
        }
    ),
}


def register_effect(kind: str, effect: FormEffect | None = None, rule: Rule | None = None) -> None:
    """Declare the forms a step kind that is not a verb of the forms table produces, and its own
    rule (the forms it cannot run on or needs).

    Raises:
        ConfigError: ``effect`` for a verb of the forms table (declare it in
            :mod:`torchcompress.forms` instead).
    """
    if effect is not None:
        if kind in _forms.VERBS.names():
            raise ConfigError(
                f"{kind!r} is a verb of torchcompress.forms: its effect on the forms is the "
                "verb's (forms.register_verb), not a recipe-level one."
            )
        EFFECTS[kind] = FormEffect(_norm(effect.adds), _norm(effect.removes))
    if rule is not None:
        RULES[kind] = Rule(
            {_name(f): why for f, why in rule.forbidden.items()},
            _norm(rule.requires),
            rule.requires_advice,
            _norm(rule.allowed),
        )


def after(forms: frozenset[str], kind: str) -> frozenset[str]:
    """The forms after a step of ``kind`` runs on a model in ``forms`` (spelled as recipe keys)."""
    forms = _norm(forms)
    if kind in _forms.VERBS.names():
        return _spelled(_forms.after(forms, kind))
    effect = EFFECTS.get(kind)
    if effect is None:
        return _spelled(forms)
    return _spelled((forms - effect.removes) | effect.adds)


def _blocked(kind: str, form: str, r: _forms.Rule) -> str:
    f = _forms.FORMS.get(form)
    name = _spell(form)
    state = f"already quantized ({name})" if f.quantized else f"{name} (made by {f.made_by})"
    if r.first == kind:
        do = f"{kind} before {'/'.join(_forms.makers(form))}"
    elif r.first:
        do = f"call {r.first} first"
    else:
        do = f"{kind} cannot follow {f.made_by}"
    return f"the model is {state}: {do}; {r.note}"


def check_step(forms: frozenset[str] | None, kind: str) -> str | None:
    """Why a step of ``kind`` cannot run on a model in ``forms``, or ``None`` if it can.

    ``forms=None`` means unknown (a model loaded from a file): nothing is checked.
    """
    if forms is None:
        return None
    forms = _norm(forms)
    rule = RULES.get(kind, Rule())
    for form in sorted(forms):
        if form in rule.forbidden:
            return rule.forbidden[form]
    if rule.requires and not forms & rule.requires:
        return rule.requires_advice
    if kind not in _forms.VERBS.names():
        return None
    verb = _forms.VERBS.get(kind)
    if verb.acts_on is not None and not forms & verb.acts_on:
        first = [m for f in sorted(verb.acts_on) for m in _forms.makers(f)]
        return f"nothing to {kind}: call {' or '.join(dict.fromkeys(first))} first"
    for form, r in _forms.offences(forms - rule.allowed, kind):
        return _blocked(kind, form, r)
    return None
