"""``PruneConfig``: what :func:`torchcompress.prune` does."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import Config
from ..errors import ConfigError, check_choice, check_range
from .functional import NORMALIZATIONS

__all__ = ["NORMALIZATIONS", "SCOPES", "PruneConfig"]

SCOPES = ("layer", "global", "output")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class PruneConfig(Config):
    """How to prune: the target sparsity, the pattern, the criterion and the scope.

    Args:
        sparsity: fraction of the targeted weights that end up exactly zero, in ``[0, 1)``. ``None``
            (the default) means 0.5, or ``1 - n/m`` for the ``"n:m"`` pattern. With ``"n:m"`` a
            value below ``1 - n/m`` N:M-prunes only that share of the blocks (for gradual N:M).
        pattern: ``"unstructured"``, ``"n:m"`` (also written ``"2:4"``, ``"4:8"``, ...) or
            ``"channel"`` (whole output channels / filters, masked; alias ``"filter"``); any name
            registered in :data:`torchcompress.sparsity.PATTERNS`.
        n: weights kept in each block of ``m`` (``"n:m"`` only); ``1 <= n < m``.
        m: block length along the input dimension (``"n:m"`` only).
        criterion: ``"magnitude"`` (|w|), ``"random"``, ``"l1"``/``"l2"`` (group norms),
            ``"taylor"`` (first order, |w·∂L/∂w|), ``"fisher"`` (second order, ½·F·w² with the
            empirical Fisher) or ``"wanda"`` (|w|·‖x‖); the last three need ``data``.
        scope: ``"layer"`` (each layer to ``sparsity``), ``"global"`` (one threshold across the
            targeted layers; ``min_density`` and ``normalize`` apply) or ``"output"`` (each output
            row of each layer to ``sparsity``: Wanda's per-output comparison group; unstructured only).
        min_density: with ``scope="global"``, the fraction of its weights every layer keeps at least
            (so that no layer is emptied); ``0`` for none.
        normalize: with ``scope="global"``, how each layer's scores are scaled before they are
            ranked together: ``"none"`` (raw scores, as ``torch.nn.utils.prune.global_unstructured``),
            ``"mean"`` (divided by the layer's mean score), ``"l2"`` (by the L2 norm of the layer's
            scores, as Molchanov et al. 2017), ``"max"`` (by the largest), or ``"lamp"`` (LAMP,
            Lee et al. 2021: s²/Σ of the s² not smaller than it, in the layer).
        regrow: allow a target below what is already pruned: the masks are then recomputed from
            scratch, and previously pruned weights may come back with their stored values.
        max_batches: data criteria use at most this many batches of ``data`` (``None``: all).
        seed: seed of the ``"random"`` criterion (reproducible across runs and ranks).

    Example:
        >>> import torchcompress as tc
        >>> tc.PruneConfig(pattern="2:4").target_sparsity
        0.5
        >>> tc.PruneConfig(sparsity=0.9, scope="global", min_density=0.02).scope
        'global'
    """

    sparsity: float | None = None
    pattern: str = "unstructured"
    n: int = 2
    m: int = 4
    criterion: str = "magnitude"
    scope: str = "layer"
    min_density: float = 0.0
    normalize: str = "none"
    regrow: bool = False
    max_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.pattern, str):
            match = _NM.match(self.pattern)
            if match:  # "2:4" -> pattern="n:m", n=2, m=4
                object.__setattr__(self, "pattern", "n:m")
                object.__setattr__(self, "n", int(match.group(1)))
                object.__setattr__(self, "m", int(match.group(2)))
        super().__post_init__()

    @property
    def target_sparsity(self) -> float:
        """The sparsity to reach: ``sparsity``, or its default for the pattern."""
        if self.sparsity is not None:
            return float(self.sparsity)
        if self.pattern == "n:m":
            return 1.0 - self.n / self.m
        return 0.5

    def validate(self) -> None:
        from .criteria import CRITERIA
        from .patterns import PATTERNS

        owner = "PruneConfig"
        check_choice("pattern", self.pattern, PATTERNS.names(), owner=owner)
        check_choice("criterion", self.criterion, CRITERIA.names(), owner=owner)
        check_choice("scope", self.scope, SCOPES, owner=owner)
        check_choice("normalize", self.normalize, NORMALIZATIONS.names(), owner=owner)
        if self.sparsity is not None:
            check_range("sparsity", self.sparsity, 0.0, 1.0, high_inclusive=False, owner=owner)
        for field in ("n", "m"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{owner}.{field} must be an int, got {v!r}.")
        if self.pattern == "n:m":
            if self.m < 2 or self.n < 1:
                raise ConfigError(
                    f"{owner}: n:m needs m >= 2 and n >= 1, got n={self.n}, m={self.m}."
                )
            if self.n >= self.m:
                raise ConfigError(
                    f"{owner}: n:m keeps n of every m weights, so n must be smaller than m; got "
                    f"n={self.n}, m={self.m} (did you mean n={self.m}, m={self.n}?)."
                    if self.n > self.m
                    else f"{owner}: n={self.n} equal to m={self.m} prunes nothing; use n < m."
                )
            full = 1.0 - self.n / self.m
            if self.sparsity is not None and self.sparsity > full + 1e-9:
                raise ConfigError(
                    f"{owner}: sparsity={self.sparsity} is above what {self.n}:{self.m} can reach "
                    f"({full:g}); leave sparsity unset or choose another n:m."
                )
        if self.scope == "output" and self.pattern != "unstructured":
            raise ConfigError(
                f"{owner}: scope='output' (per-row comparison) applies to the unstructured pattern "
                f"only, not {self.pattern!r}."
            )
        check_range("min_density", self.min_density, 0.0, 1.0, owner=owner)
        if self.scope == "global" and self.min_density > 1.0 - self.target_sparsity + 1e-12:
            raise ConfigError(
                f"{owner}: min_density={self.min_density} keeps more than 1 - sparsity = "
                f"{1 - self.target_sparsity:g} of every layer, so sparsity={self.target_sparsity:g} "
                "cannot be reached; lower min_density."
            )
        if not isinstance(self.regrow, bool):
            raise ConfigError(f"{owner}.regrow must be a bool, got {self.regrow!r}.")
        if self.max_batches is not None and (
            isinstance(self.max_batches, bool)
            or not isinstance(self.max_batches, int)
            or self.max_batches < 1
        ):
            raise ConfigError(
                f"{owner}.max_batches must be a positive int or None, got {self.max_batches!r}."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"{owner}.seed must be an int, got {self.seed!r}.")

    def describe(self) -> str:
        """A short human-readable summary (``"50% unstructured, magnitude, layer"``)."""
        pat = f"{self.n}:{self.m}" if self.pattern == "n:m" else self.pattern
        return f"{self.target_sparsity:.0%} {pat}, {self.criterion}, {self.scope}"
