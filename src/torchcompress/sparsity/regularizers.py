"""Sparsity-inducing regularizers: callables ``model -> scalar`` to add to the training loss.

Use them with ``tc.finetune(model, data, regularizer=...)`` (or add ``reg(model)`` to your own loss).
Each is computed on the weights the forward uses (masked weights for pruned layers) of the layers
:func:`torchcompress.prune` would target (filtered with ``include``/``exclude``), in the canonical
``(out, in, *kernel)`` layout, and grouped with a sparsity pattern where groups matter.

===================  ==========================================================================
:class:`L1`          ``λ Σ |w|`` (lasso)
:class:`GroupLasso`  ``λ Σ_g √|g| ‖w_g‖₂`` over a pattern's groups (Yuan & Lin 2006; channels:
                     Wen et al. 2016, "Learning Structured Sparsity")
:class:`BNScaleL1`   ``λ Σ |γ|`` over BatchNorm scales (network slimming, Liu et al. 2017)
:class:`Hoyer`       ``λ Σ_layers (‖w‖₁ / ‖w‖₂)²`` (Hoyer-Square, DeepHoyer, Yang et al. 2020;
                     the L1/L2 ratio is Hoyer's 2004 sparseness measure); ``square=False``
                     gives the plain ratio
:class:`GroupHoyer`  ``λ Σ_layers (Σ_g ‖w_g‖₂)² / Σ_g ‖w_g‖₂²`` (group Hoyer-Square, DeepHoyer)
===================  ==========================================================================

The Hoyer measures are scale invariant (they push towards sparsity without shrinking the weights);
L1 and group lasso shrink. All are safe at zero (an all-zero layer or group has zero penalty and
zero gradient).

Example:
    >>> import torch, torchcompress as tc
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    >>> reg = tc.sparsity.GroupLasso(1e-4, pattern="channel") + tc.sparsity.BNScaleL1(1e-5)
    >>> loss = reg(model)
    >>> loss.backward()
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, SelectionError, check_range
from .calibration import Target
from .patterns import PATTERNS, Pattern, make_pattern

__all__ = ["L1", "BNScaleL1", "GroupHoyer", "GroupLasso", "Hoyer", "Regularizer", "SumRegularizer"]

_EPS = 1e-12


class Regularizer:
    """Base class: ``reg(model)`` returns ``weight * penalty`` as a scalar tensor.

    Args:
        weight: the coefficient λ (>= 0).
        include: glob patterns of layer names (default: every prunable layer).
        exclude: glob patterns of layer names to skip.
    """

    def __init__(
        self,
        weight: float = 1e-4,
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
    ) -> None:
        check_range("weight", weight, 0.0, owner=type(self).__name__)
        self.weight = float(weight)
        self.include = include
        self.exclude = exclude

    def targets(self, model: nn.Module) -> list[Target]:
        """The layers the penalty covers."""
        from .pruning import select_targets

        return select_targets(model, self.include, self.exclude)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """The unweighted penalty."""
        raise NotImplementedError

    def __call__(self, model: nn.Module) -> torch.Tensor:
        return self.weight * self.penalty(model)

    def __add__(self, other: Regularizer) -> SumRegularizer:
        return SumRegularizer([self, other])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight:g})"


class SumRegularizer(Regularizer):
    """The sum of several regularizers (``reg_a + reg_b``)."""

    def __init__(self, parts: Sequence[Regularizer]) -> None:
        super().__init__(1.0)
        self.parts: list[Regularizer] = []
        for p in parts:
            self.parts += p.parts if isinstance(p, SumRegularizer) else [p]

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return sum((p(model) for p in self.parts), start=_zero(model))

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.parts)


def _zero(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((), device=p.device if p is not None else None)


def _canonical(t: Target) -> torch.Tensor:
    return t.kind.to_canonical(t.module, t.module.weight)


def _safe_norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """L2 norm whose gradient at zero is zero (not NaN)."""
    sq = x.pow(2).sum(dim)
    pos = sq > 0
    return torch.where(pos, sq.clamp_min(_EPS).sqrt(), torch.zeros_like(sq))


class _Grouped(Regularizer):
    def __init__(
        self,
        weight: float = 1e-4,
        *,
        pattern: str | Pattern = "channel",
        n: int = 2,
        m: int = 4,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, include=include, exclude=exclude)
        if isinstance(pattern, Pattern):
            self.pattern = pattern
        elif isinstance(pattern, str):
            if pattern not in PATTERNS:
                PATTERNS.get(pattern)  # raises ConfigError with the registered names
            self.pattern = make_pattern(pattern, n, m)
        else:
            raise ConfigError(f"pattern must be a pattern name or a Pattern, got {pattern!r}.")

    def groups(self, model: nn.Module) -> list[torch.Tensor]:
        out = []
        for t in self.targets(model):
            self.pattern.check(t.name, t.kind, t.module)
            out.append(self.pattern.group_matrix(_canonical(t)))
        if not out:  # pragma: no cover - select_targets raises first
            raise SelectionError("No layer to regularize.")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight:g}, pattern={self.pattern.name!r})"


class L1(Regularizer):
    """``λ Σ |w|`` over the targeted layers' weights (lasso; drives weights to exactly zero
    with proximal steps, towards zero with plain SGD).

    Example:
        >>> import torch, torchcompress as tc
        >>> from torch import nn
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[1.0, -2.0]]))
        >>> tc.sparsity.L1(0.5)(nn.Sequential(lin)).detach().item()
        1.5
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        return sum((_canonical(t).abs().sum() for t in self.targets(model)), start=_zero(model))


class GroupLasso(_Grouped):
    """Group lasso ``λ Σ_g √|g| ‖w_g‖₂`` over the groups of a pattern (default: output channels).

    Follows Yuan & Lin 2006 (groups weighted by the square root of their size); with
    ``pattern="channel"`` it is the filter-level structured sparsity of Wen et al. 2016. The
    ``"n:m"`` pattern groups blocks of ``m`` inputs; ``"unstructured"`` reduces to L1.
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = _zero(model)
        for g in self.groups(model):
            total = total + (g.shape[1] ** 0.5) * _safe_norm(g).sum()
        return total


class BNScaleL1(Regularizer):
    """``λ Σ |γ|`` over the scales of BatchNorm layers (network slimming, Liu et al. 2017).

    Channels whose scale reaches zero can then be removed with ``tc.prune_channels``.
    ``include``/``exclude`` filter BatchNorm layers by name.
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        from ..select import select_modules

        bns = select_modules(
            model,
            self.include,
            self.exclude,
            types=(nn.modules.batchnorm._BatchNorm,),
            family="BNScaleL1",
        )
        scales = [m.weight for _, m in bns if getattr(m, "weight", None) is not None]
        if not scales:
            raise SelectionError(
                f"{type(model).__name__} has no affine BatchNorm layer for BNScaleL1 to regularize."
            )
        return sum((w.abs().sum() for w in scales), start=_zero(model))


class Hoyer(Regularizer):
    """Hoyer-Square ``λ Σ_layers (‖w‖₁/‖w‖₂)²`` (DeepHoyer, Yang et al. 2020).

    Args:
        weight: λ.
        square: ``True`` for the Hoyer-Square of DeepHoyer; ``False`` for the ratio ‖w‖₁/‖w‖₂
            itself (Hoyer 2004's sparseness measure is an affine function of it).
        include, exclude: layer name patterns.
    """

    def __init__(
        self,
        weight: float = 1e-4,
        *,
        square: bool = True,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, include=include, exclude=exclude)
        self.square = bool(square)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = _zero(model)
        for t in self.targets(model):
            w = _canonical(t).reshape(-1)
            total = total + _hoyer(w.abs().sum(), _safe_norm(w), self.square)
        return total


class GroupHoyer(_Grouped):
    """Group Hoyer-Square ``λ Σ_layers (Σ_g ‖w_g‖₂)² / Σ_g ‖w_g‖₂²`` (DeepHoyer, Yang et al. 2020).

    Drives whole groups (default: output channels) to zero, scale-invariantly.
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        total = _zero(model)
        for g in self.groups(model):
            norms = _safe_norm(g)
            total = total + _hoyer(norms.sum(), _safe_norm(norms, dim=0), True)
        return total


def _hoyer(l1: torch.Tensor, l2: torch.Tensor, square: bool) -> torch.Tensor:
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(_EPS), torch.zeros_like(l1))
    return ratio.pow(2) if square else ratio
