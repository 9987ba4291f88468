"""Which step may follow which: the forms a model is in, and the orders known to be impossible.

Each compressing step leaves the model in a *form* (masked, fake-quant, QAT, converted, k-means,
factorized); a recipe is checked by following the forms through its steps before anything runs.
This module is the one place that says which step cannot run on which form and what to call
first. When ``torchcompress.forms`` (the central table of admissible orders) exists, these rules
come from it instead; the recipe only calls :func:`check_step` and :func:`after`.

Example:
    >>> from torchcompress.recipe.orders import after, check_step
    >>> forms = after(frozenset(), "quantize")
    >>> sorted(forms)
    ['fake_quant']
    >>> check_step(forms, "prune")
    'the model is already quantized (fake_quant): prune before quantize/prepare_qat/kmeans_quantize'
    >>> check_step(frozenset(), "convert")
    'nothing to convert: call quantize or prepare_qat first'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "FORMS",
    "RULES",
    "FormEffect",
    "Rule",
    "after",
    "check_step",
    "quantized_forbidden",
    "register_effect",
]

#: The forms a model can be in after the compressing steps (several at once: masked + factorized).
FORMS = ("masked", "fake_quant", "qat", "converted", "kmeans", "factorized")

_QUANTIZED = frozenset({"fake_quant", "qat", "converted", "kmeans"})


@dataclass(frozen=True)
class FormEffect:
    """What a step does to the forms: adds some, removes some."""

    adds: frozenset[str] = frozenset()
    removes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule:
    """A step that cannot run on some forms (``forbidden``: form -> what to do instead), or only on
    some (``requires``, with ``requires_advice``)."""

    forbidden: Mapping[str, str] = field(default_factory=dict)
    requires: frozenset[str] = frozenset()
    requires_advice: str = ""


#: Step kind -> its effect on the forms (steps not listed leave the forms as they are).
EFFECTS: dict[str, FormEffect] = {
    "prune": FormEffect(adds=frozenset({"masked"})),
    "finalize": FormEffect(removes=frozenset({"masked"})),
    "quantize": FormEffect(adds=frozenset({"fake_quant"})),
    "prepare_qat": FormEffect(adds=frozenset({"qat"})),
    "convert": FormEffect(adds=frozenset({"converted"}), removes=frozenset({"fake_quant", "qat"})),
    "kmeans_quantize": FormEffect(adds=frozenset({"kmeans"})),
    "factorize": FormEffect(adds=frozenset({"factorized"})),
    "merge_lowrank": FormEffect(removes=frozenset({"factorized"})),
}


def quantized_forbidden(advice: str) -> dict[str, str]:
    """The forbidden forms of a step that needs a float model, each with ``advice``."""
    return {f: f"the model is already quantized ({f}): {advice}" for f in sorted(_QUANTIZED)}


_MASKED = {
    "masked": "the model is masked: call finalize first (masked layers cannot be quantized yet)"
}

#: Step kind -> the forms it cannot run on / needs. The known impossible orders, in one place.
RULES: dict[str, Rule] = {
    "prune": Rule(quantized_forbidden("prune before quantize/prepare_qat/kmeans_quantize")),
    "factorize": Rule(quantized_forbidden("factorize before quantize/prepare_qat/kmeans_quantize")),
    "quantize": Rule({**quantized_forbidden("quantize starts from a float model"), **_MASKED}),
    "prepare_qat": Rule(
        {**quantized_forbidden("prepare_qat starts from a float model"), **_MASKED}
    ),
    "kmeans_quantize": Rule(quantized_forbidden("kmeans_quantize starts from a float model")),
    "fuse": Rule(
        {
            "qat": "the model is prepared for QAT: fuse before prepare_qat (which folds BatchNorm "
            "itself with fold_bn=True)"
        }
    ),
    "finetune": Rule(
        {
            "converted": "the model is converted (it stores integers and cannot train): fine-tune "
            "before convert"
        }
    ),
    "finalize": Rule(
        requires=frozenset({"masked"}), requires_advice="nothing to finalize: call prune first"
    ),
    "convert": Rule(
        requires=frozenset({"fake_quant", "qat"}),
        requires_advice="nothing to convert: call quantize or prepare_qat first",
    ),
    "merge_lowrank": Rule(
        quantized_forbidden("merge_lowrank before quantize/prepare_qat/kmeans_quantize"),
        requires=frozenset({"factorized"}),
        requires_advice="nothing to merge: call factorize first",
    ),
}


def register_effect(kind: str, effect: FormEffect | None = None, rule: Rule | None = None) -> None:
    """Declare the forms a (new) step kind produces and the forms it cannot run on."""
    if effect is not None:
        EFFECTS[kind] = effect
    if rule is not None:
        RULES[kind] = rule


def after(forms: frozenset[str], kind: str) -> frozenset[str]:
    """The forms after a step of ``kind`` runs on a model in ``forms``."""
    effect = EFFECTS.get(kind)
    if effect is None:
        return forms
    return (forms - effect.removes) | effect.adds


def check_step(forms: frozenset[str] | None, kind: str) -> str | None:
    """Why a step of ``kind`` cannot run on a model in ``forms``, or ``None`` if it can.

    ``forms=None`` means unknown (a model loaded from a file): nothing is checked.
    """
    rule = RULES.get(kind)
    if rule is None or forms is None:
        return None
    for form in sorted(forms):
        if form in rule.forbidden:
            return rule.forbidden[form]
    if rule.requires and not forms & rule.requires:
        return rule.requires_advice
    return None
