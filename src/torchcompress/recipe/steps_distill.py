"""The ``distill`` step: fine-tuning with the baseline as the teacher (``tc.finetune`` with
``teacher=`` and ``distill=``), the recovery step after compression.

The teacher is the recipe's reference model: the model as it was before the first compressing step
(the same baseline every figure of the report is compared with), frozen; the student is the model
the steps before produced. The step's fields are :class:`~torchcompress.recipe.steps_compress.
FinetuneStep`'s (epochs, lr, optimizer, ...) plus the distillation loss: ``method: kd`` (Hinton et
al., 2015, arXiv:1503.02531: ``alpha * T^2 * KL + (1 - alpha) * CE``) or ``method: dkd`` (Zhao et
al., "Decoupled Knowledge Distillation", CVPR 2022).

Example:
    >>> from torchcompress.recipe import loads
    >>> text = "steps: [{model: resnet20}, {distill: {epochs: 2, temperature: 2.0}}]"
    >>> step = loads(text, check=False).steps[1]
    >>> step.temperature, step.alpha, step.label()
    (2.0, 0.9, 'distilled 2 ep (kd, T=2)')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

import torchcompress as tc

from ..errors import ConfigError, check_range
from .orders import Rule, register_effect
from .steps import StepContext, register_step
from .steps_compress import FinetuneStep

__all__ = ["DistillStep"]

#: ``method`` -> the builder of its distillation object from the step's fields.
METHODS = ("kd", "dkd")


@register_step
@dataclass(frozen=True)
class DistillStep(FinetuneStep):
    """``tc.finetune(model, train, teacher=<the baseline>, distill=tc.distill.kd(...))``.

    Args:
        method: ``"kd"`` (Hinton) or ``"dkd"`` (decoupled KD, with cross-entropy).
        temperature: the softmax temperature of both methods.
        alpha: ``kd``: the weight of the soft-target term (``1 - alpha`` on the labels);
            ``dkd``: the weight of the target-class term.
        beta: ``dkd``: the weight of the non-target-class term.
        cache: keep the teacher's outputs per sample and reuse them in later epochs (a fixed,
            non-augmented data set).
        (and every :class:`FinetuneStep` field: epochs, steps, lr, optimizer, ...)
    """

    kind = "distill"
    verb = "tc.finetune(teacher=, distill=)"
    needs = ("model", "labels")

    method: str = "kd"
    temperature: float = 4.0
    alpha: float = 0.9
    beta: float = 8.0
    cache: bool = False

    def validate(self) -> None:
        super().validate()
        if self.method not in METHODS:
            raise ConfigError(
                f"distill: method={self.method!r} is not one of {list(METHODS)} "
                "(for other mixes of losses call tc.finetune with tc.distill.Distiller)."
            )
        check_range("temperature", self.temperature, 0, low_inclusive=False, owner="distill")
        check_range("alpha", self.alpha, 0, owner="distill")
        check_range("beta", self.beta, 0, owner="distill")

    def distiller(self) -> nn.Module:
        """The distillation object :func:`tc.finetune` trains with."""
        if self.method == "dkd":
            return tc.distill.dkd(
                alpha=self.alpha, beta=self.beta, temperature=self.temperature, cache=self.cache
            )
        return tc.distill.kd(temperature=self.temperature, alpha=self.alpha, cache=self.cache)

    def run(self, ctx: StepContext) -> dict[str, Any]:
        model = ctx.need_model(self.kind)
        data = ctx.need_data(self.kind)
        if ctx.reference is None or ctx.reference is model:
            raise ConfigError(
                "distill: its teacher is the baseline (the model before the first compressing "
                "step), and no step has compressed the model yet; put a compressing step (prune, "
                "prune_channels, quantize, factorize, ...) before distill."
            )
        return self.train(ctx, model, data, teacher=ctx.reference, distill=self.distiller())

    def label(self) -> str:
        amount = super().label().replace("fine-tuned", "distilled", 1)
        return f"{amount} ({self.method}, T={self.temperature:g})"

    def describe(self) -> str:
        return (
            super().describe().replace("fine-tuned", "distilled from the baseline", 1)
            + f", {self.method} at temperature {self.temperature:g}"
        )


# training needs float weights: like finetune, distill comes before convert
register_effect(
    "distill",
    rule=Rule(
        {
            "converted": "the model is converted (it stores integers and cannot train): distill "
            "before convert"
        }
    ),
)
