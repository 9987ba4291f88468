"""What a channel pruning removed, group by group: :class:`ChannelPruneReport`.

:func:`~torchcompress.prune_channels` stores the report on the model;
:func:`channel_report` returns it. ``str(report)`` is the table; ``to_dict()`` plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ...errors import CompressionStateError

__all__ = ["ChannelPruneReport", "GroupReport", "channel_report", "set_report"]

_REPORT_ATTR = "_torchcompress_channel_report"


@dataclass
class GroupReport:
    """One group of coupled channels.

    Attributes:
        name: the modules whose channels the group's units are (the producers).
        members: the parameter dimensions the units slice (``"layer1.0.conv1.weight[0]"``).
        units: units before (channels, or heads for attention).
        removed: units removed.
        width: channels per unit (a head's size; 1 for channels).
        removed_units: indices of the removed units, in the order of the first member.
        criterion: the criterion that ranked them (and a fallback, when one applied).
    """

    name: str
    members: list[str]
    units: int
    removed: int
    width: int = 1
    removed_units: list[int] = field(default_factory=list)
    criterion: str = ""

    @property
    def kept(self) -> int:
        """Units kept."""
        return self.units - self.removed


@dataclass
class ChannelPruneReport:
    """What :func:`~torchcompress.prune_channels` did.

    Attributes:
        groups: one :class:`GroupReport` per prunable group.
        criterion: the criterion's name.
        scope: ``"local"`` or ``"global"``.
        ratio: the channel ratio used (given, or found for a target).
        target: the target asked for (``{"macs": 0.5}``), relative to ``relative_to``.
        macs_before: MACs of the model before this call (``tc.profile`` on the example inputs).
        macs_after: MACs after (measured with ``tc.profile``).
        macs_estimated: MACs the cost model predicted for the chosen allocation.
        params_before: parameters before.
        params_after: parameters after.
        baseline: ``{"macs": ..., "params": ...}``: this call's model as a fraction of the model
            before its first ``prune_channels`` (1.0 when it is the first).
        kept: why channels outside the groups stay: reason -> number of channel classes.
        seconds: wall time of each phase.
        note: anything the user should know (a target already met, fallbacks).
    """

    groups: list[GroupReport] = field(default_factory=list)
    criterion: str = ""
    scope: str = "local"
    ratio: float = 0.0
    target: dict[str, float] | None = None
    macs_before: int = 0
    macs_after: int = 0
    macs_estimated: int = 0
    params_before: int = 0
    params_after: int = 0
    baseline: dict[str, float] = field(default_factory=lambda: {"macs": 1.0, "params": 1.0})
    kept: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def macs_ratio(self) -> float:
        """MACs after / before (this call)."""
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        """Parameters after / before (this call)."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def cumulative(self) -> dict[str, float]:
        """MACs and parameters as fractions of the model before its first ``prune_channels``."""
        return {
            "macs": self.baseline.get("macs", 1.0) * self.macs_ratio,
            "params": self.baseline.get("params", 1.0) * self.params_ratio,
        }

    @property
    def channels_removed(self) -> int:
        """Channels removed over all groups (units times their width)."""
        return sum(g.removed * g.width for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        """The whole report as plain data."""
        out = {k: v for k, v in asdict(self).items() if k != "groups"}
        out["groups"] = [asdict(g) for g in self.groups]
        out.update(
            macs_ratio=self.macs_ratio, params_ratio=self.params_ratio, cumulative=self.cumulative
        )
        return out

    def summary(self) -> str:
        """One line: groups pruned, MACs and params before -> after."""
        pruned = sum(1 for g in self.groups if g.removed)
        s = (
            f"{pruned}/{len(self.groups)} groups pruned ({self.criterion}, {self.scope}, ratio "
            f"{self.ratio:.4f}); MACs {self.macs_before:,} -> {self.macs_after:,} "
            f"({self.macs_ratio:.3f}x), params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_ratio:.3f}x)"
        )
        if self.target:
            ((metric, goal),) = self.target.items()
            s += f"; target {metric} {goal:g}x, reached {self.cumulative[metric]:.4f}x"
        return s + (f"; {self.note}" if self.note else "")

    def __repr__(self) -> str:
        return f"ChannelPruneReport({self.summary()})"

    def __str__(self) -> str:
        head = ["group", "units", "kept", "width", "members", "criterion"]
        body = [
            [g.name, str(g.units), str(g.kept), str(g.width), str(len(g.members)), g.criterion]
            for g in self.groups
        ]
        widths = [
            max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)
        ]
        lines = [
            "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body]
        if self.kept:
            top = sorted(self.kept.items(), key=lambda kv: -kv[1])[:5]
            lines.append("kept whole: " + "; ".join(f"{why} ({n})" for why, n in top))
        return self.summary() + "\n" + "\n".join(lines)


def set_report(model: nn.Module, report: ChannelPruneReport) -> None:
    """Attach ``report`` to ``model`` (kept through ``copy.deepcopy``)."""
    object.__setattr__(model, _REPORT_ATTR, report)


def channel_report(model: nn.Module) -> ChannelPruneReport:
    """The report of the last :func:`~torchcompress.prune_channels` on ``model``.

    Raises:
        CompressionStateError: the model carries none (it was not channel-pruned in this process;
            ``tc.load`` restores the shapes, not the report).

    Example:
        >>> import torch, torchcompress as tc
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> _ = tc.prune_channels(m, torch.randn(1, 8), 0.5)
        >>> tc.sparsity.channel_report(m).groups[0].kept
        8
    """
    stored = getattr(model, _REPORT_ATTR, None)
    if isinstance(stored, ChannelPruneReport):
        return stored
    raise CompressionStateError(
        f"{type(model).__name__} carries no channel-pruning report: call tc.prune_channels on it "
        "first (tc.load restores pruned shapes, not the report; tc.profile shows them)."
    )
