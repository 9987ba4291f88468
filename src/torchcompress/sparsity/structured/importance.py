"""How important each unit of a group is: the channel-importance registry :data:`IMPORTANCE`.

A :class:`ChannelImportance` scores every unit (channel, head, block) of a
:class:`~torchcompress.sparsity.structured.graph.Group`; the lowest scores are pruned first. Scores
combine over the group's members (every weight the unit slices: the producing layer's rows, the
consumers' columns, a norm's scale): each member's scores are divided by their mean over the
group's units, so that members of different scales count alike, then averaged over the members.
Every group's scores therefore average 1, which is what ``scope="global"`` ranks across groups
(Torch-Pruning's ``"mean"`` normalizer does the same).

============  ===========================================================  =========================
name          score of a unit                                              reference
============  ===========================================================  =========================
l1            sum of ``|w|`` over the unit's weights                       Li et al. 2017
l2            L2 norm of the unit's weights                                Li et al. 2017
bn_scale      ``|γ|`` of the normalizations in the group (network          Liu et al. 2017
              slimming); groups without one fall back to ``l2`` (said in
              the report)
taylor        sum of ``mean_b |w · ∂L_b/∂w|`` over the unit's weights,     Molchanov et al. 2017,
              from ``data`` and ``loss_fn`` through the calibration        2019
              engine; weights of modules the engine cannot observe (an
              ``nn.MultiheadAttention``) fall back to ``l2`` (said)
wanda         ``Σ |w_ij| · ‖x_j‖`` over the columns of the layers reading  Sun et al. 2023
              the unit's channels (their activation norms on ``data``; no
              labels needed)
random        uniform, seeded                                              baseline
============  ===========================================================  =========================

A new criterion is one class: subclass :class:`ChannelImportance`, list the calibration
``statistics`` it needs for the weight layers of the groups, implement :meth:`~ChannelImportance.
scores`, and ``IMPORTANCE.add("name", MyImportance())``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.batches import example_batch
    >>> from torchcompress.sparsity.structured.builder import analyse
    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.copy_(torch.tensor([[1.0, 1.0], [0.1, 0.1], [3.0, 3.0]]))
    >>> group = analyse(model, example_batch(model, torch.randn(4, 2))).groups[0]
    >>> scores, note = IMPORTANCE.get("l1").scores(group, model, ScoreContext())
    >>> scores.argsort().tolist()[0]  # the small row goes first
    1
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from ...calibration import LayerStats
from ...layers import layer_kind
from ...registry import Registry
from ..criteria import CRITERIA
from .graph import Group, Member, split_key
from .handlers import handler_for

__all__ = [
    "IMPORTANCE",
    "BNScaleImportance",
    "ChannelImportance",
    "MagnitudeImportance",
    "RandomImportance",
    "ScoreContext",
    "TaylorImportance",
    "WandaImportance",
    "member_tensor",
]


@dataclass
class ScoreContext:
    """What a criterion may use besides the weights.

    Attributes:
        stats: layer name -> calibration statistics (the criterion's ``statistics``).
        seed: seed for random criteria.
    """

    stats: dict[str, LayerStats] = field(default_factory=dict)
    seed: int = 0


def member_tensor(model: nn.Module, member: Member) -> Tensor | None:
    """The tensor of a group member (``None`` for pseudo-attributes)."""
    if member.pseudo:
        return None
    owner, attr = split_key(member.key)
    t = getattr(model.get_submodule(owner), attr, None)
    return t if isinstance(t, Tensor) else None


def _per_position(values: Tensor, dim: int) -> Tensor:
    """Sum of ``values`` over every dimension but ``dim``: one value per index along it."""
    dims = [d for d in range(values.dim()) if d != dim]
    return values.sum(dims) if dims else values


def _combine(group: Group, member: Member, per_position: Tensor) -> Tensor:
    """Per-unit sums of per-position values, divided by their mean over the group's units."""
    unit_of = torch.from_numpy(group.unit_of(member))
    mask = unit_of >= 0
    v = torch.zeros(len(group.units), dtype=torch.float64)
    v.index_add_(0, unit_of[mask], per_position.detach().cpu().double()[mask])
    mean = v.mean()
    return v / mean if mean > 0 else v


def _is_weight(model: nn.Module, member: Member) -> bool:
    if member.pseudo or not split_key(member.key)[1].endswith("weight"):
        return False
    owner = member.binder if member.binder is not None else split_key(member.key)[0]
    h = handler_for(model.get_submodule(owner))
    return h is not None and h.role in ("weight", "norm")


class ChannelImportance:
    """Base class of channel criteria.

    Attributes:
        statistics: calibration statistics (:data:`torchcompress.calibration.STATISTICS`) the
            criterion needs for the weight layers of the groups; non-empty means it needs ``data``.
    """

    statistics: ClassVar[tuple[str, ...]] = ()

    @property
    def needs_data(self) -> bool:
        """Whether the criterion needs ``data``."""
        return bool(self.statistics)

    def scores(self, group: Group, model: nn.Module, ctx: ScoreContext) -> tuple[Tensor, str]:
        """``(one score per unit (float64), a note for the report, "" when none)``."""
        raise NotImplementedError


IMPORTANCE: Registry[ChannelImportance] = Registry("channel importance criterion")


class MagnitudeImportance(ChannelImportance):
    """L1 (``p=1``) or L2 (``p=2``) norm of each unit's weights (Li et al. 2017, "Pruning Filters")."""

    def __init__(self, p: int = 2) -> None:
        self.p = p

    def scores(self, group: Group, model: nn.Module, ctx: ScoreContext) -> tuple[Tensor, str]:
        parts = []
        members = [m for m in group.members if _is_weight(model, m)] or [
            m for m in group.members if not m.pseudo
        ]
        for m in members:
            t = member_tensor(model, m)
            if t is None or not t.is_floating_point():
                continue
            per = _per_position(t.detach().float().abs().pow(self.p), m.dim)
            s = _combine(group, m, per)
            parts.append(s.sqrt() if self.p == 2 else s)
        if not parts:
            return torch.ones(len(group.units), dtype=torch.float64), "no weights: kept order"
        return torch.stack(parts).mean(0), ""


class BNScaleImportance(ChannelImportance):
    """``|γ|`` of the group's normalizations (Liu et al. 2017, "Network Slimming")."""

    def scores(self, group: Group, model: nn.Module, ctx: ScoreContext) -> tuple[Tensor, str]:
        parts = []
        for m in group.members:
            if m.pseudo or split_key(m.key)[1] != "weight":
                continue
            h = handler_for(model.get_submodule(split_key(m.key)[0]))
            t = member_tensor(model, m)
            if h is None or h.role != "norm" or t is None:
                continue
            parts.append(_combine(group, m, _per_position(t.detach().float().abs(), m.dim)))
        if not parts:
            s, _ = IMPORTANCE.get("l2").scores(group, model, ctx)
            return s, "l2 (no normalization scale in this group)"
        return torch.stack(parts).mean(0), ""


def _data_scores(
    group: Group,
    model: nn.Module,
    ctx: ScoreContext,
    criterion: str,
    statistic: str,
    inputs_only: bool,
) -> list[Tensor]:
    """Per-member unit scores from a per-weight data criterion of :data:`~..criteria.CRITERIA`."""
    parts = []
    per_weight = CRITERIA.get(criterion)
    for m in group.members:
        if m.pseudo or split_key(m.key)[1] != "weight":
            continue
        owner = split_key(m.key)[0]
        stats = ctx.stats.get(owner)
        module = model.get_submodule(owner)
        kind = layer_kind(module)
        if stats is None or kind is None or stats.count(statistic) == 0:
            continue
        if inputs_only and m.dim != kind.weight_axes[1]:
            continue
        w = kind.to_canonical(module, module.weight.detach().float())
        s = per_weight.scores(w, stats, name=owner, seed=ctx.seed)
        stored = kind.from_canonical(module, s)
        parts.append(_combine(group, m, _per_position(stored, m.dim)))
    return parts


class TaylorImportance(ChannelImportance):
    """First-order Taylor: ``mean_b |w · ∂L_b/∂w|`` summed over the unit's weights.

    Molchanov et al. 2017 ("Pruning Convolutional Neural Networks for Resource Efficient Inference")
    and 2019 ("Importance Estimation for Neural Network Pruning"); the per-weight scores are those
    of :data:`torchcompress.sparsity.CRITERIA` ``"taylor"``.
    """

    statistics = ("grad_abs",)

    def scores(self, group: Group, model: nn.Module, ctx: ScoreContext) -> tuple[Tensor, str]:
        parts = _data_scores(group, model, ctx, "taylor", "grad_abs", inputs_only=False)
        if not parts:
            s, _ = IMPORTANCE.get("l2").scores(group, model, ctx)
            return s, "l2 (no gradients for this group's weights)"
        return torch.stack(parts).mean(0), ""


class WandaImportance(ChannelImportance):
    """How much each channel feeds the layers reading it: ``Σ |w_ij| · ‖x_j‖`` over its columns.

    Wanda's score (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language
    Models") summed over the consumer weights a unit owns: the channel's activation norm on
    ``data`` times the weights that read it. Needs ``data`` but no labels (an embedding model's
    calibration sentences will do).
    """

    statistics = ("input_sq",)

    def scores(self, group: Group, model: nn.Module, ctx: ScoreContext) -> tuple[Tensor, str]:
        parts = _data_scores(group, model, ctx, "wanda", "input_sq", inputs_only=True)
        if not parts:
            s, _ = IMPORTANCE.get("l2").scores(group, model, ctx)
            return s, "l2 (no layer reads this group's channels with statistics)"
        return torch.stack(parts).mean(0), ""


class RandomImportance(ChannelImportance):
    """Uniform random scores, seeded by the seed and the group (identical on every rank)."""

    def scores(self, group: Group, model: nn.Module, ctx: ScoreContext) -> tuple[Tensor, str]:
        g = torch.Generator(device="cpu")
        key = str(group.members[0])
        g.manual_seed((int(ctx.seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**63 - 1))
        return torch.rand(len(group.units), generator=g, dtype=torch.float64) + 0.5, ""


IMPORTANCE.add("l1", MagnitudeImportance(1))
IMPORTANCE.add("l2", MagnitudeImportance(2))
IMPORTANCE.add("bn_scale", BNScaleImportance())
IMPORTANCE.add("taylor", TaylorImportance())
IMPORTANCE.add("wanda", WandaImportance())
IMPORTANCE.add("random", RandomImportance())
