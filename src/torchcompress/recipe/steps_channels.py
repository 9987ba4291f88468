"""The ``prune_channels`` step: structured channel pruning (``tc.prune_channels``) in recipes.

One entry of the step table: the step's fields are the verb's arguments, its typed config a
:class:`~torchcompress.ChannelPruneConfig` whose fields may be written flat
(``prune_channels: {ratio: 0.5}``); the example batch of the data step is the example input the
dependency graph is traced on, and the calibration batches are the data of the criteria that need
some (``wanda``, ``taylor``).

Example:
    >>> from torchcompress.recipe import loads
    >>> text = "steps: [{model: resnet20}, {prune_channels: {ratio: 0.5, round_to: 8}}]"
    >>> r = loads(text, check=False)  # checked, it asks for data first (the example inputs)
    >>> step = r.steps[1]
    >>> step.config.ratio, step.label()
    (0.5, 'channels pruned 50% (l2, local)')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torchcompress as tc

from ..errors import ConfigError
from . import specs
from .steps import Step, StepContext, register_step

__all__ = ["PruneChannelsStep"]


@register_step
@dataclass(frozen=True)
class PruneChannelsStep(Step):
    """``tc.prune_channels(model, example, config, data=calib)``: channels removed for real, a
    smaller dense model (Torch-Pruning's dependency groups; Fang et al., "DepGraph: Towards Any
    Structural Pruning", CVPR 2023).

    Args:
        config: the :class:`~torchcompress.ChannelPruneConfig` (``ratio`` or ``target``,
            ``criterion``, ``scope``, ``round_to``, ``ignore``, ...).
    """

    kind = "prune_channels"
    verb = "tc.prune_channels"
    config_field = "config"
    compresses = True
    needs = ("model", "example")

    config: tc.ChannelPruneConfig

    def run(self, ctx: StepContext) -> dict[str, Any]:
        model = ctx.need_model(self.kind)
        if ctx.example is None:
            raise ConfigError("prune_channels needs example inputs: add a data step first.")
        before = sum(p.numel() for p in model.parameters())
        tc.prune_channels(
            model,
            specs.batch_inputs(ctx.example),
            self.config,
            data=ctx.calib(),
            progress=ctx.progress,
        )
        after = sum(p.numel() for p in model.parameters())
        return {"params_before": before, "params_after": after}

    def label(self) -> str:
        c = self.config
        if c.ratio is not None:
            amount = f"{c.ratio:.0%}"
        else:
            amount = "to " + ", ".join(f"{v:.0%} {k}" for k, v in (c.target or {}).items())
        return f"channels pruned {amount} ({c.criterion}, {c.scope})"

    def describe(self) -> str:
        return self.label() + " (tc.prune_channels: a smaller dense model)"
