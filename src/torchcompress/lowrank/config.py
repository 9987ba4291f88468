"""The low-rank factorization config: which rank rule, which method, which budget.

See :class:`LowRankConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import ConfigError, check_choice, check_range

__all__ = ["LowRankConfig"]

_OWNER = "LowRankConfig"


@dataclass(frozen=True)
class LowRankConfig(Config):
    """How :func:`torchcompress.factorize` chooses each layer's rank and computes its factors.

    A weight ``W`` (``m x n``; a convolution's kernel reshaped to ``out x in*k*k`` per group) is
    replaced by two factors of rank ``r``, costing ``r*(m+n)`` parameters and MACs per position
    instead of ``m*n``. A layer is factorized only when that is strictly cheaper (``r`` below the
    break-even rank ``m*n/(m+n)``); otherwise it stays dense and the report says why.

    The ``rank`` argument names the rule that picks ``r``:

    ===============================  ============================================================
    ``rank=``                        meaning
    ===============================  ============================================================
    ``16`` (an ``int``)              the same fixed rank in every targeted layer
    ``0.25`` (a ``float`` in (0,1])  rank ratio: ``r = round(0.25 * min(m, n))``
    ``"params_ratio"`` + ``value``   the factorized layer holds at most ``value`` x its dense
                                     parameters (its *real* cost ``r*(m+n)`` + bias), the default,
                                     with ``value=0.5``
    ``"flops_ratio"`` + ``value``    the factorized layer does at most ``value`` x its dense MACs
    ``"energy"`` + ``value``         the smallest rank keeping ``value`` of the squared singular
                                     values (of the whitened / scaled spectrum for those methods)
    ``"fixed"`` / ``"rank_ratio"``   the long forms of an ``int`` / a ``float`` (with ``value``)
    ``"auto"`` + ``budget``          one global allocation across all targeted layers: the
                                     targeted layers together keep at most ``budget`` x their dense
                                     params (or FLOPs, ``budget_kind="flops"``), with the ranks
                                     that keep the most energy per unit of cost
    ===============================  ============================================================

    Further rules can be registered in :data:`torchcompress.lowrank.RANK_RULES`.

    Attributes:
        rank: the rank rule (see the table).
        value: the target of a named rule (``None``: the rule's default, 0.5 for the ratios and
            0.9 for energy).
        method: how the factors are computed. ``"svd"``: truncated SVD of the weight (no data).
            ``"activation_aware"``: ASVD (Yuan et al., 2023, arXiv:2312.05821): the SVD of
            ``W @ diag(mean|x|)**alpha`` over ``calib_data``, the scale undone afterwards.
            ``"whitened"``: SVD-LLM (Wang et al., 2024, arXiv:2403.07378): the SVD of ``W @ L``,
            ``L`` the Cholesky factor of the inputs' second moment ``E[x x^T]``, so that the
            truncation minimises the layer's output error on ``calib_data``.
        budget: for ``rank="auto"``: the fraction, in (0, 1], of the targeted layers' dense params
            (or MACs) that the factorized model may keep.
        budget_kind: ``"params"`` or ``"flops"``; what ``budget`` counts. FLOPs are counted at the
            layer input sizes seen in ``calib_data`` (so a FLOPs budget needs ``calib_data``, one
            batch suffices for ``method="svd"``).
        objective: for ``"auto"``: ``"energy"`` ranks each singular value by the fraction of its
            layer's (whitened) energy it carries, so every layer counts alike; ``"error"`` by its
            absolute squared value (for ``"whitened"``, the absolute output error it removes).
        min_rank: the smallest rank used; a rule asking for less is raised to it (and a budget that
            then cannot be met is an error).
        round_to: ranks are multiples of this (8 or 16 suit matrix kernels); rounding goes up for
            ``"energy"``, down for the params/FLOPs ratios and ``"auto"``, to the nearest for the
            rank ratio.
        min_features: layers whose smaller dimension (``min(out, in)``, per group) is below this
            are left dense (small layers rarely get faster when factorized).
        min_saving: factorize only when that saves at least this fraction of the layer's cost
            (params, or MACs for ``"flops_ratio"``/``budget_kind="flops"``).
        alpha: the ASVD exponent of ``mean|x|`` (0.5 in the paper).
        damping: whitening damping, relative to the mean diagonal of ``E[x x^T]``; raised tenfold
            (up to three times) if the Cholesky factorization fails, then an eigendecomposition is
            used instead.
        max_batches: calibration batches to use (``None``: all of ``calib_data``).

    Example:
        >>> import torchcompress as tc
        >>> tc.LowRankConfig(rank="params_ratio", value=0.6).rule_name
        'params_ratio'
        >>> tc.LowRankConfig(rank=0.25).rule_name, tc.LowRankConfig(rank=16).rule_name
        ('rank_ratio', 'fixed')
        >>> cfg = tc.LowRankConfig(rank="auto", budget=0.6, method="whitened")
        >>> tc.LowRankConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    rank: int | float | str = "params_ratio"
    value: float | None = None
    method: str = "svd"
    budget: float | None = None
    budget_kind: str = "params"
    objective: str = "energy"
    min_rank: int = 1
    round_to: int = 1
    min_features: int = 0
    min_saving: float = 0.0
    alpha: float = 0.5
    damping: float = 1e-3
    max_batches: int | None = None

    # -- derived ----------------------------------------------------------------------------

    @property
    def rule_name(self) -> str:
        """The registered rank rule this config uses (``"auto"`` for the global allocation)."""
        if isinstance(self.rank, bool):  # validate() rejects it; keep the property total
            return "fixed"
        if isinstance(self.rank, int):
            return "fixed"
        if isinstance(self.rank, float):
            return "rank_ratio"
        return self.rank

    @property
    def rule_value(self) -> float | int | None:
        """The rule's target (the rank, the ratio, the energy); ``None`` for ``"auto"``."""
        if isinstance(self.rank, int | float) and not isinstance(self.rank, bool):
            return self.rank
        if self.value is not None:
            return self.value
        from .rank_rules import RANK_RULES

        return RANK_RULES.get(self.rank).default_value

    def rule(self) -> Any:
        """The :class:`~torchcompress.lowrank.RankRule` this config asks for (an instance)."""
        from .rank_rules import RANK_RULES

        return RANK_RULES.get(self.rule_name).from_config(self)

    @property
    def is_auto(self) -> bool:
        """Whether this config asks for a global allocation across layers (``rank="auto"``)."""
        from .rank_rules import RANK_RULES

        return not RANK_RULES.get(self.rule_name).per_layer

    @property
    def needs_data(self) -> bool:
        """Whether :func:`~torchcompress.factorize` needs ``calib_data`` for this config."""
        from .methods import METHODS

        return bool(METHODS.get(self.method).needs) or self.rule().needs_data

    def describe(self) -> str:
        """A short human description of the rule (used in reports)."""
        return f"{self.rule().describe()}, {self.method}"

    # -- validation -------------------------------------------------------------------------

    def validate(self) -> None:
        from .methods import METHODS
        from .rank_rules import RANK_RULES

        r = self.rank
        if isinstance(r, bool) or not isinstance(r, int | float | str):
            raise ConfigError(
                f"{_OWNER}.rank={r!r} must be an int (fixed rank), a float in (0, 1] (rank ratio), "
                f"'auto', or a rule name: {', '.join(repr(n) for n in RANK_RULES.names())}."
            )
        if isinstance(r, int):
            if r < 1:
                raise ConfigError(f"{_OWNER}.rank={r} must be at least 1 (a fixed rank).")
            if self.value is not None:
                raise ConfigError(
                    f"{_OWNER}: rank={r} is a fixed rank; value={self.value!r} has no meaning with it. "
                    "Use rank='fixed', value=... or drop value."
                )
        elif isinstance(r, float):
            if not (0.0 < r <= 1.0) or r != r:
                hint = (
                    f" For a fixed rank pass an int: rank={int(r)}."
                    if r > 1 and r.is_integer()
                    else ""
                )
                raise ConfigError(
                    f"{_OWNER}.rank={r!r}: a float rank is a rank ratio and must lie in (0, 1].{hint}"
                )
            if self.value is not None:
                raise ConfigError(
                    f"{_OWNER}: rank={r} is a rank ratio; value={self.value!r} has no meaning with it."
                )
        else:
            check_choice("rank", r, RANK_RULES.names(), owner=_OWNER)
            RANK_RULES.get(r).check_config(self)
        if not isinstance(r, str) and self.budget is not None:
            RANK_RULES.get(self.rule_name).check_config(self)  # budget= without rank='auto'
        if self.budget is not None:
            check_range("budget", self.budget, 0.0, 1.0, low_inclusive=False, owner=_OWNER)
        check_choice("method", self.method, METHODS.names(), owner=_OWNER)
        check_choice("budget_kind", self.budget_kind, ("params", "flops"), owner=_OWNER)
        check_choice("objective", self.objective, ("energy", "error"), owner=_OWNER)
        for name in ("min_rank", "round_to", "min_features"):
            v: Any = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{_OWNER}.{name} must be an int, got {v!r}.")
        check_range("min_rank", self.min_rank, 1, owner=_OWNER)
        check_range("round_to", self.round_to, 1, owner=_OWNER)
        check_range("min_features", self.min_features, 0, owner=_OWNER)
        check_range("min_saving", self.min_saving, 0.0, 1.0, high_inclusive=False, owner=_OWNER)
        check_range("alpha", self.alpha, 0.0, low_inclusive=False, owner=_OWNER)
        check_range("damping", self.damping, 0.0, owner=_OWNER)
        if self.max_batches is not None:
            if isinstance(self.max_batches, bool) or not isinstance(self.max_batches, int):
                raise ConfigError(
                    f"{_OWNER}.max_batches must be an int or None, got {self.max_batches!r}."
                )
            check_range("max_batches", self.max_batches, 1, owner=_OWNER)
        if isinstance(r, int) and r % self.round_to:
            raise ConfigError(
                f"{_OWNER}: the fixed rank {r} is not a multiple of round_to={self.round_to}."
            )
