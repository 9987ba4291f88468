"""Factorization methods: how a layer's matrix is transformed before its truncated SVD.

Each method is a small registered class in :data:`METHODS`. It names the calibration statistics it
needs (:data:`torchcompress.calibration.STATISTICS`) and turns them into a right transform ``S``: the SVD is taken of ``W @ S``, truncated, and the
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
    frozenset({'xtx'})
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..calibration import LayerStats
from ..config import Config
from ..errors import CalibrationError
from ..registry import Registry
from . import functional as F

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
        needs: the names of the calibration statistics the method needs (e.g. ``"xtx"``: the
            inputs' second moment ``E[x x^T]``; ``"abs_mean"``: ``E|x|`` per input feature).
        weight_only: the factors are the best approximation of the weight itself (no transform),
            so :func:`~torchcompress.lowrank.retruncate` can re-cut a factorized layer exactly.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    weight_only: ClassVar[bool] = False

    @classmethod
    def needs_data(cls) -> bool:
        """Whether ``calib_data`` is required."""
        return bool(cls.needs)

    def work_dtype(self, weight: torch.Tensor) -> torch.dtype:
        """The precision the weight is transformed and decomposed in (float64 by default)."""
        return torch.float64

    def transform(self, stats: LayerStats | None, config: Config) -> F.Transform:
        """The right transform ``S`` for one layer (``stats`` is ``None`` for data-free methods).

        Args:
            stats: the layer's calibration statistics (the ones named in :attr:`needs`).
            config: the :class:`~torchcompress.lowrank.LowRankConfig` (``alpha``, ``damping``).
        """
        raise NotImplementedError


def _stats(stats: LayerStats | None, method: str) -> LayerStats:
    if stats is None:  # guarded by factorize(); keep the methods total
        raise CalibrationError(f"method={method!r} needs activation statistics (calib_data).")
    return stats


METHODS: Registry[type[FactorizationMethod]] = Registry("low-rank method")


@METHODS.register("svd")
class PlainSVD(FactorizationMethod):
    """Truncated SVD of the weight itself (no data)."""

    weight_only = True

    def work_dtype(self, weight: torch.Tensor) -> torch.dtype:
        return torch.float64 if weight.dtype == torch.float64 else torch.float32

    def transform(self, stats: LayerStats | None, config: Config) -> F.Transform:
        return F.Identity()


@METHODS.register("activation_aware")
class ActivationAware(FactorizationMethod):
    """ASVD: scale the weight's columns by ``mean|x| ** alpha`` before the SVD."""

    needs = frozenset({"abs_mean"})

    def transform(self, stats: LayerStats | None, config: Config) -> F.Transform:
        st = _stats(stats, "activation_aware")
        abs_mean = st["abs_mean"]  # per input feature: (in,) or (in_channels, *kernel)
        if st.geometry is not None:
            abs_mean = abs_mean.reshape(st.geometry.groups, st.geometry.n)
        return F.asvd_scaling(abs_mean, alpha=config.alpha)  # type: ignore[attr-defined]


@METHODS.register("whitened")
class Whitened(FactorizationMethod):
    """SVD-LLM: whiten by the Cholesky factor of the inputs' second moment (float64, damped)."""

    needs = frozenset({"xtx"})

    def transform(self, stats: LayerStats | None, config: Config) -> F.Transform:
        xtx = _stats(stats, "whitened")["xtx"]  # E[x x^T] per group, float64
        return F.whitening(xtx, damping=config.damping)  # type: ignore[attr-defined]


def get_method(name: str) -> FactorizationMethod:
    """An instance of the method registered as ``name``.

    Raises:
        ConfigError: no such method (the message lists the registered ones).
    """
    return METHODS.get(name)()
