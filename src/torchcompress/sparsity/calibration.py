"""Gathering the statistics data-driven criteria need, through the calibration engine.

Each criterion names the statistics it needs (:data:`torchcompress.calibration.STATISTICS`):
``input_sq`` (Wanda: the mean square of each input feature, per ``(in_channel, kernel tap)`` for
convolutions, never an unfolded copy), ``grad_abs`` (Taylor: the mean over batches of ``|dL/dw|``
with respect to the *effective*, masked weight) and ``grad_sq`` (Fisher: the mean over samples of
``(dL/dw)^2``, each batch split into single samples). :func:`collect_statistics` asks
:func:`torchcompress.calibration.collect` for them in one pass over ``data`` (two with ``grad_sq``):
the model runs in eval mode with its flags restored, memory stays bounded, and under
``torch.distributed`` every statistic is all-reduced so every rank computes the same scores.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.layers import layer_kind
    >>> from torchcompress.sparsity.calibration import Target, collect_statistics
    >>> model = nn.Sequential(nn.Linear(3, 2))
    >>> t = Target("0", model[0], layer_kind(model[0]))
    >>> stats = collect_statistics(model, [t], {"0": {"input_sq"}}, torch.ones(4, 3))
    >>> stats["0"]["input_sq"].tolist(), stats["0"].count("input_sq")
    ([1.0, 1.0, 1.0], 4)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import LayerStats, LossFn, collect, split_batch
from ..errors import DataError
from ..layers import LayerKind

__all__ = ["LossFn", "Target", "collect_statistics", "default_loss", "split_batch"]

log = logging.getLogger(__name__)


@dataclass
class Target:
    """One layer to prune: its qualified name, the module and its layer kind."""

    name: str
    module: nn.Module
    kind: LayerKind


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    raise DataError(
        f"Cannot find logits in the model output ({type(output).__name__}); pass loss_fn="
        "(output, target) -> scalar loss."
    )


def default_loss(output: Any, target: Any) -> torch.Tensor:
    """Cross-entropy of the output's logits against integer targets.

    A model output with a ``loss`` (Hugging Face, labels passed) is used as is when there is no
    target. Sequence logits ``(batch, length, classes)`` are flattened against ``(batch, length)``
    targets (``-100`` ignored).
    """
    if target is None:
        loss = getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            return loss
        raise DataError(
            "The criterion needs a loss, but the batches have no targets. Pass (inputs, targets) "
            "batches, or loss_fn=(output, target) -> scalar."
        )
    logits = _logits(output)
    if not isinstance(target, torch.Tensor):
        raise DataError(
            f"Targets must be tensors for the default loss, got {type(target).__name__}."
        )
    if logits.dim() > 2:
        logits = logits.reshape(-1, logits.shape[-1])
        target = target.reshape(-1)
    return F.cross_entropy(logits.float(), target)


def collect_statistics(
    model: nn.Module,
    targets: Sequence[Target],
    needs: dict[str, set[str]],
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    max_batches: int | None = None,
    progress: bool | None = None,
) -> dict[str, LayerStats]:
    """Accumulate the statistics each target needs (``needs[name]``) over ``data``.

    Gradients are taken with respect to each layer's effective weight (the masked weight when the
    layer carries a pruning mask). A layer the data never reached gets statistics with zero counts
    (the caller decides what to do about it).

    Args:
        model: the model.
        targets: the layers to prune.
        needs: layer name -> statistic names (see :data:`torchcompress.calibration.STATISTICS`).
        data: any iterable of batches.
        loss_fn: ``(output, target) -> scalar`` for gradient statistics (default:
            :func:`default_loss`).
        max_batches: use at most this many batches.
        progress: show a progress bar (``None``: when interactive).

    Returns:
        ``{name: LayerStats}`` for every target (empty stats for those that need none).

    Raises:
        DataError: ``data`` is empty or a batch does not fit the model.
        CalibrationError: the loss is not a differentiable scalar depending on the weights.
    """
    requests = {t.name: sorted(needs[t.name]) for t in targets if needs.get(t.name)}
    stats: dict[str, LayerStats] = {}
    if requests:
        stats = collect(
            model,
            data,
            requests,
            loss_fn=loss_fn or default_loss,
            max_batches=max_batches,
            progress=progress,
            desc="pruning: statistics",
            what="data",
            require_all=False,
        )
    return {
        t.name: stats[t.name] if t.name in stats else LayerStats(t.kind.geometry(t.module))
        for t in targets
    }
