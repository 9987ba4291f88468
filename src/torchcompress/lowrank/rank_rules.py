"""Rank rules: how each layer's rank is chosen, one small registered class per rule.

A rule turns a layer's :class:`LayerSpectrum` (its matrix shape and the singular values of the
matrix the method truncates) into a raw rank; :func:`choose_rank` then applies what every rule
shares: ``round_to``, ``min_rank``, ``min_features``, the layer's largest rank, and the test that the
factorized layer is strictly cheaper than the dense one in what the rule counts (params or MACs).

Rules (``LowRankConfig(rank=...)``):

- ``"fixed"``: the given rank (an ``int`` ``rank=16``); larger than ``min(out, in)`` is an error.
- ``"rank_ratio"``: ``round(value * min(out, in))`` (a ``float`` ``rank=0.25``).
- ``"energy"``: the smallest rank keeping ``value`` of the squared singular values.
- ``"params_ratio"``: the largest rank whose real parameter count ``r*(out+in)`` + bias is at most
  ``value`` x the dense layer's.
- ``"flops_ratio"``: the largest rank whose MACs ``r*(out+in)`` per position are at most ``value``
  x the dense layer's;
- ``"auto"``: one global allocation across the layers under a params or FLOPs budget
  (:class:`~torchcompress.lowrank.allocation.AutoRank`, registered by
  :mod:`~torchcompress.lowrank.allocation`).

A rule decides one layer at a time (:meth:`RankRule.decide`) or, with ``per_layer = False``, all
layers at once (:meth:`RankRule.decide_all`). A new rule subclasses :class:`RankRule` and registers
itself::

    @RANK_RULES.register("my_rule")
    class MyRule(RankRule):
        def raw_rank(self, layer):
            return layer.full_rank // 3

Example:
    >>> import torch
    >>> from torchcompress.layers import Geometry
    >>> from torchcompress.lowrank.rank_rules import LayerSpectrum, RANK_RULES
    >>> layer = LayerSpectrum("fc", Geometry("linear", 64, 64), torch.ones(1, 64))
    >>> RANK_RULES.get("params_ratio")(0.5).raw_rank(layer)  # 16*(64+64) = 0.5 * 64*64
    16.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ..errors import ConfigError, check_range
from ..layers import Geometry
from ..registry import Registry
from . import functional as F

__all__ = [
    "RANK_RULES",
    "Decision",
    "Energy",
    "FixedRank",
    "FlopsRatio",
    "LayerSpectrum",
    "ParamsRatio",
    "RankRatio",
    "RankRule",
    "choose_rank",
    "layer_cost",
    "round_rank",
]


@dataclass
class LayerSpectrum:
    """What a rank rule sees of one layer.

    Attributes:
        name: qualified module name.
        geometry: the dense layer's geometry (its matrices are ``groups x m x n``).
        singular_values: ``(groups, k)`` singular values of the matrix the method truncates (the
            whitened / scaled weight for those methods), each row descending; ``k`` caps the rank.
        positions: output positions per calibration batch (tokens, or samples x pixels), if known.
    """

    name: str
    geometry: Geometry
    singular_values: Tensor
    positions: float | None = None

    @property
    def full_rank(self) -> int:
        """The largest usable rank: ``min(m, n)`` (or fewer, if the spectrum is shorter)."""
        return min(F.full_rank(self.geometry), int(self.singular_values.shape[-1]))

    def energy(self, rank: int | None) -> float:
        """Fraction of the spectrum's energy kept at ``rank`` (``None``: dense, 1.0)."""
        if rank is None:
            return 1.0
        return F.energy_kept(self.singular_values, rank)


@dataclass
class Decision:
    """A rule's verdict for one layer: ``rank`` (``None``: stays dense) and why."""

    rank: int | None
    reason: str


class RankRule:
    """Base class of a per-layer rank rule.

    Attributes:
        default_value: the target used when ``LowRankConfig.value`` is ``None``.
        counts: what "cheaper" means for this rule: ``"params"`` or ``"flops"``.
        rounding: how ``round_to`` rounds this rule's rank: ``"up"``, ``"down"`` or ``"nearest"``.
        per_layer: whether each layer is decided from its own spectrum alone (so a layer can be
            factorized as soon as its spectrum is known); ``False`` for global allocations, which
            see every spectrum first (:meth:`decide_all`).
    """

    default_value: ClassVar[float | None] = None
    counts: ClassVar[str] = "params"
    rounding: ClassVar[str] = "nearest"
    per_layer: ClassVar[bool] = True
    #: why the rule needs ``calib_data`` when :attr:`needs_data` (for error messages)
    data_reason: ClassVar[str] = ""
    #: lower and upper bound of the value, inclusive flags
    value_range: ClassVar[tuple[float, float, bool, bool]] = (0.0, 1.0, False, True)

    def __init__(self, value: float | int | None = None) -> None:
        self.value = self.default_value if value is None else value

    @classmethod
    def from_config(cls, config: Any) -> RankRule:
        """The rule a :class:`~torchcompress.lowrank.LowRankConfig` asks for."""
        return cls(config.rule_value)

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Raise :class:`ConfigError` unless ``config``'s fields suit this rule."""
        owner = type(config).__name__
        cls.check_value(config.rule_value, owner=owner)
        if config.budget is not None:
            raise ConfigError(
                f"{owner}.budget={config.budget!r} is only used with rank='auto' (got "
                f"rank={config.rank!r}). For a per-layer params budget use "
                "rank='params_ratio', value=..."
            )

    @property
    def needs_data(self) -> bool:
        """Whether the rule needs ``calib_data`` (e.g. layer input sizes for a FLOPs budget)."""
        return False

    @classmethod
    def check_value(cls, value: float | int | None, owner: str = "LowRankConfig") -> None:
        """Raise :class:`ConfigError` unless ``value`` is a valid target for this rule."""
        if value is None:
            raise ConfigError(f"{owner}: rank rule {cls.__name__} needs value=.")
        lo, hi, lo_inc, hi_inc = cls.value_range
        check_range(
            "value", value, lo, hi, low_inclusive=lo_inc, high_inclusive=hi_inc, owner=owner
        )

    def raw_rank(self, layer: LayerSpectrum) -> float:
        """The rank the rule asks for, before rounding and the shared checks."""
        raise NotImplementedError

    def describe(self) -> str:
        """E.g. ``"params_ratio=0.5"``."""
        name = next((n for n in RANK_RULES if RANK_RULES.get(n) is type(self)), type(self).__name__)
        return name if self.value is None else f"{name}={self.value:g}"

    def decide(
        self,
        layer: LayerSpectrum,
        *,
        min_rank: int = 1,
        round_to: int = 1,
        min_features: int = 0,
        min_saving: float = 0.0,
    ) -> Decision:
        """One layer's rank, or why it stays dense (:func:`choose_rank` with this rule)."""
        return choose_rank(
            self,
            layer,
            min_rank=min_rank,
            round_to=round_to,
            min_features=min_features,
            min_saving=min_saving,
        )

    def decide_all(
        self,
        layers: Sequence[LayerSpectrum],
        *,
        min_rank: int = 1,
        round_to: int = 1,
        min_features: int = 0,
        min_saving: float = 0.0,
        keep_dense: Mapping[str, str] | None = None,
    ) -> dict[str, Decision]:
        """Every layer's decision; ``keep_dense`` (name -> reason) must stay dense."""
        keep = dict(keep_dense or {})
        return {
            la.name: Decision(None, keep[la.name])
            if la.name in keep
            else self.decide(
                la,
                min_rank=min_rank,
                round_to=round_to,
                min_features=min_features,
                min_saving=min_saving,
            )
            for la in layers
        }


RANK_RULES: Registry[type[RankRule]] = Registry("rank rule")


@RANK_RULES.register("fixed")
class FixedRank(RankRule):
    """The same rank in every layer."""

    value_range = (1, math.inf, True, True)

    @classmethod
    def check_value(cls, value: float | int | None, owner: str = "LowRankConfig") -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{owner}: a fixed rank must be an int >= 1, got {value!r}.")

    def raw_rank(self, layer: LayerSpectrum) -> float:
        r = int(self.value)  # type: ignore[arg-type]
        g = layer.geometry
        if r > F.full_rank(g):  # (an already factorized layer keeps its rank: see choose_rank)
            raise ConfigError(
                f"rank={r} is larger than layer {layer.name!r} ({F.shape_str(g)}) allows: its "
                f"matrix is {g.m}x{g.n}{' per group' if g.groups > 1 else ''}, so the rank is at "
                f"most {F.full_rank(g)}. Use a smaller rank, a ratio (rank=0.5, "
                "rank='params_ratio') or exclude the layer."
            )
        return float(r)


@RANK_RULES.register("rank_ratio")
class RankRatio(RankRule):
    """``value * min(out, in)``: a fraction of the full rank (note: 0.5 saves nothing on square layers)."""

    default_value = 0.5

    def raw_rank(self, layer: LayerSpectrum) -> float:
        return max(1.0, float(self.value) * layer.full_rank)  # type: ignore[arg-type]


@RANK_RULES.register("energy")
class Energy(RankRule):
    """The smallest rank keeping ``value`` of the (method's) squared singular values."""

    default_value = 0.9
    rounding = "up"

    def raw_rank(self, layer: LayerSpectrum) -> float:
        return float(
            F.rank_for_energy(layer.singular_values[..., : layer.full_rank], float(self.value))
        )  # type: ignore[arg-type]


@RANK_RULES.register("params_ratio")
class ParamsRatio(RankRule):
    """The largest rank holding at most ``value`` x the dense parameters (``r*(m+n)`` + bias)."""

    default_value = 0.5
    rounding = "down"

    def raw_rank(self, layer: LayerSpectrum) -> float:
        g = layer.geometry
        return float(F.rank_for_ratio(g.m, g.n, float(self.value), g.groups, g.bias))  # type: ignore[arg-type]


@RANK_RULES.register("flops_ratio")
class FlopsRatio(RankRule):
    """The largest rank doing at most ``value`` x the dense MACs (``r*(m+n)`` per position)."""

    default_value = 0.5
    counts = "flops"
    rounding = "down"

    def raw_rank(self, layer: LayerSpectrum) -> float:
        g = layer.geometry
        return float(F.rank_for_ratio(g.m, g.n, float(self.value), g.groups, False))  # type: ignore[arg-type]


def round_rank(raw: float, step: int, how: str) -> int:
    """Round ``raw`` to a multiple of ``step`` (``how``: ``"up"``, ``"down"``, ``"nearest"``)."""
    q = raw / step
    if how == "up":
        k = math.ceil(q - 1e-9)
    elif how == "down":
        k = math.floor(q + 1e-9)
    else:
        k = max(1, math.floor(q + 0.5))
    return int(k * step)


#: What a rule's "cheaper" counts: name -> cost of a layer at a rank (``None``: dense).
COSTS = {"params": F.params_at, "flops": F.macs_per_position}


def layer_cost(geo: Geometry, rank: int | None, counts: str) -> int:
    """Params (with bias) or MACs per position of the layer at ``rank`` (``None``: dense)."""
    return COSTS[counts](geo, rank)


def choose_rank(
    rule: RankRule,
    layer: LayerSpectrum,
    *,
    min_rank: int = 1,
    round_to: int = 1,
    min_features: int = 0,
    min_saving: float = 0.0,
) -> Decision:
    """Apply ``rule`` and the shared checks to one layer.

    Raises:
        ConfigError: the rule cannot be met by this layer (a fixed rank above its full rank, a
            ratio so small that even the smallest rank exceeds it); the message names the layer.
    """
    g = layer.geometry
    if min(g.m, g.n) < min_features:
        return Decision(
            None, f"smaller than min_features={min_features} (min(out, in)={min(g.m, g.n)})"
        )
    raw = rule.raw_rank(layer)
    r = round_rank(raw, round_to, rule.rounding)
    floor = round_rank(min_rank, round_to, "up")
    if r < floor:
        if rule.rounding == "down":  # a budget rule that cannot be met
            smallest = layer_cost(g, floor, rule.counts) / layer_cost(g, None, rule.counts)
            raise ConfigError(
                f"{rule.describe()} cannot be met by layer {layer.name!r} ({F.shape_str(g)}): its "
                f"smallest factorization (rank {floor}) keeps {smallest:.3f}x its {rule.counts}. "
                "Raise the ratio, lower min_rank/round_to, exclude the layer, or set min_features."
            )
        r = floor
    r = min(r, layer.full_rank)
    dense = layer_cost(g, None, rule.counts)
    cost = layer_cost(g, r, rule.counts)
    if cost >= dense:
        why = (
            "this layer cannot be factorized more cheaply (break-even rank 0)"
            if F.break_even(g) == 0
            else f"rank {r} >= break-even {F.break_even(g)}: would not save {rule.counts}"
        )
        return Decision(None, why)
    if cost > (1.0 - min_saving) * dense:
        return Decision(
            None,
            f"rank {r} saves only {1 - cost / dense:.1%} of {rule.counts} (< min_saving={min_saving:g})",
        )
    return Decision(r, "")
