"""``ChannelPruneConfig``: what :func:`torchcompress.prune_channels` does."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import Config
from ...errors import ConfigError, check_choice, check_range
from .importance import IMPORTANCE

__all__ = ["METRICS", "SCOPES", "ChannelPruneConfig"]

SCOPES = ("local", "global")
#: what a ``target`` may budget
METRICS = ("macs", "params")


@dataclass(frozen=True)
class ChannelPruneConfig(Config):
    """How to prune channels: how much, by which criterion, where.

    Args:
        ratio: fraction of the prunable channels to remove, in ``[0, 1]``: of every group
            (``scope="local"``, Torch-Pruning's ``pruning_ratio``) or of all channels together
            (``"global"``). Give ``ratio`` or ``target``.
        target: what the pruned model may cost, as a fraction of the unpruned model:
            ``{"macs": 0.5}`` (half the MACs ``tc.profile`` counts on the example inputs) or
            ``{"params": 0.4}``; the ratio is searched so that the pruned model costs at most that
            (and one rounding step more would too). With ``relative_to="original"`` a model pruned
            before is measured against the model before its first ``prune_channels``.
        criterion: ``"l2"`` (default), ``"l1"``, ``"bn_scale"``, ``"taylor"`` (needs ``data`` with
            targets, or ``loss_fn``), ``"wanda"`` (needs ``data``, no labels) or ``"random"``; any
            name in :data:`~torchcompress.sparsity.structured.IMPORTANCE`.
        scope: ``"local"`` (every group loses the same fraction) or ``"global"`` (one ranking
            across groups, scores normalised per group).
        round_to: keep channel counts at multiples of this (8, 16) where a group is that wide.
        ignore: glob patterns of protected modules: a layer keeps its output channels (heads) and
            the channels it creates; a block or a module without a handler is kept whole. The
            model's outputs always keep their shape (so the classifier's outputs stay).
        max_ratio: the largest fraction of any group's units that may go, in ``(0, 1]``.
        relative_to: ``"original"`` or ``"current"``: what a ``target`` is a fraction of.
        max_batches: ``taylor`` uses at most this many batches of ``data``.
        seed: seed of the ``"random"`` criterion.

    Example:
        >>> import torchcompress as tc
        >>> tc.ChannelPruneConfig(target={"macs": 0.5}, round_to=8).target
        {'macs': 0.5}
    """

    ratio: float | None = None
    target: dict[str, float] | None = None
    criterion: str = "l2"
    scope: str = "local"
    round_to: int | None = None
    ignore: tuple[str, ...] = ()
    max_ratio: float = 0.9
    relative_to: str = "original"
    max_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", (self.ignore,))
        elif self.ignore is None:
            object.__setattr__(self, "ignore", ())
        else:
            object.__setattr__(self, "ignore", tuple(self.ignore))
        if isinstance(self.target, dict):
            object.__setattr__(self, "target", dict(self.target))
        super().__post_init__()

    def validate(self) -> None:
        owner = "ChannelPruneConfig"
        if (self.ratio is None) == (self.target is None):
            raise ConfigError(
                f"{owner}: give exactly one of ratio= (a fraction of channels) and target= "
                "({'macs': 0.5} or {'params': 0.4})."
            )
        if self.ratio is not None:
            check_range("ratio", self.ratio, 0.0, 1.0, owner=owner)
            if self.scope == "local" and self.ratio > self.max_ratio:
                raise ConfigError(
                    f"{owner}.ratio={self.ratio} is above max_ratio={self.max_ratio}: every group "
                    "would be capped. Raise max_ratio (at most 1) or lower the ratio."
                )
        if self.target is not None:
            if not isinstance(self.target, dict) or len(self.target) != 1:
                raise ConfigError(
                    f"{owner}.target must be one budget such as {{'macs': 0.5}} or "
                    f"{{'params': 0.4}}, got {self.target!r}."
                )
            ((metric, value),) = self.target.items()
            check_choice("target metric", metric, METRICS, owner=owner)
            check_range(f"target[{metric!r}]", value, 0.0, 1.0, low_inclusive=False, owner=owner)
        check_choice("criterion", self.criterion, IMPORTANCE.names(), owner=owner)
        check_choice("scope", self.scope, SCOPES, owner=owner)
        check_choice("relative_to", self.relative_to, ("original", "current"), owner=owner)
        check_range("max_ratio", self.max_ratio, 0.0, 1.0, low_inclusive=False, owner=owner)
        if self.round_to is not None and (
            isinstance(self.round_to, bool)
            or not isinstance(self.round_to, int)
            or self.round_to < 1
        ):
            raise ConfigError(
                f"{owner}.round_to must be a positive int or None, got {self.round_to!r}."
            )
        for p in self.ignore:
            if not isinstance(p, str):
                raise ConfigError(f"{owner}.ignore must hold glob patterns (str), got {p!r}.")
        if self.max_batches is not None and (
            not isinstance(self.max_batches, int) or self.max_batches < 1
        ):
            raise ConfigError(f"{owner}.max_batches must be a positive int or None.")

    @property
    def metric(self) -> str | None:
        """``"macs"`` or ``"params"`` for a target, else ``None``."""
        return next(iter(self.target)) if self.target else None

    @property
    def goal(self) -> float | None:
        """The target fraction, else ``None``."""
        return next(iter(self.target.values())) if self.target else None

    def needs_data(self) -> bool:
        """Whether the criterion needs ``data``."""
        return IMPORTANCE.get(self.criterion).needs_data
