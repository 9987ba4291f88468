"""Factorization methods: how a layer's matrix is transformed before its truncated SVD.

Each method is a small registered class in :data:`METHODS`. It says which activation statistics it
needs and turns them into a right transform ``S``: the SVD is taken of ``W @ S``, truncated, and the
input factor multiplied by ``S^-1``, so that truncation minimises ``||(W - W_r) S||_F``.

- ``"svd"``: ``S = I``, the weight's own best approximation (Eckart-Young); no data.
- ``"activation_aware"``: ASVD (Yuan et al., 2023, "ASVD: Activation-aware Singular Value
  Decomposition for Compressing Large Language Models", arXiv:2312.05821):
  ``S = diag(mean|x|) ** alpha``, protecting the input channels with large activations.
- ``"whitened"``: SVD-LLM (Wang et al., 2024, "SVD-LLM: Truncation-aware Singular Value
  Decomposition for Large Language Model Compression", arXiv:2403.07378): ``S S^T = E[x x^T]``
  (Cholesky), so ``||(W - W_r) S||_F^2`` *is* the squared output error on the calibration inputs and
  each truncated singular value's square is exactly the error it adds.

Example:
    >>> from torchcompress.lowrank.methods import METHODS
    >>> METHODS.names()
    ['svd', 'activation_aware', 'whitened']
    >>> METHODS.get("whitened").needs
    frozenset({'second_moment'})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..registry import Registry
from . import functional as F

if TYPE_CHECKING:
    from .calibration import LayerStats
    from .config import LowRankConfig

__all__ = [
    "METHODS",
    "ActivationAware",
    "FactorizationMethod",
    "PlainSVD",
    "Whitened",
    "get_method",
]


class FactorizationMethod:
    """Base class of a factorization method.

    Attributes:
        needs: the statistics :mod:`~torchcompress.lowrank.calibration` must collect
            (``"second_moment"``: ``sum x x^T``; ``"abs_mean"``: ``sum |x|``).
    """

    needs: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def needs_data(cls) -> bool:
        """Whether ``calib_data`` is required."""
        return bool(cls.needs)

    def transform(self, stats: LayerStats | None, config: LowRankConfig) -> F.Transform:
        """The right transform ``S`` for one layer (``stats`` is ``None`` for data-free methods)."""
        raise NotImplementedError


METHODS: Registry[type[FactorizationMethod]] = Registry("low-rank method")


@METHODS.register("svd")
class PlainSVD(FactorizationMethod):
    """Truncated SVD of the weight itself (no data)."""

    def transform(self, stats: LayerStats | None, config: LowRankConfig) -> F.Transform:
        return F.Identity()


@METHODS.register("activation_aware")
class ActivationAware(FactorizationMethod):
    """ASVD: scale the weight's columns by ``mean|x| ** alpha`` before the SVD."""

    needs = frozenset({"abs_mean"})

    def transform(self, stats: LayerStats | None, config: LowRankConfig) -> F.Transform:
        if stats is None:  # guarded by factorize(); keep the method total
            raise ValueError("activation_aware needs activation statistics")
        return F.asvd_scaling(stats.abs_mean(), alpha=config.alpha)


@METHODS.register("whitened")
class Whitened(FactorizationMethod):
    """SVD-LLM: whiten by the Cholesky factor of the inputs' second moment (float64, damped)."""

    needs = frozenset({"second_moment"})

    def transform(self, stats: LayerStats | None, config: LowRankConfig) -> F.Transform:
        if stats is None:
            raise ValueError("whitened needs activation statistics")
        return F.whitening(stats.second_moment(), damping=config.damping)


def get_method(name: str) -> FactorizationMethod:
    """An instance of the method registered as ``name``.

    Raises:
        ConfigError: no such method (the message lists the registered ones).
    """
    return METHODS.get(name)()
