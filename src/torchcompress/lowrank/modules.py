"""Factorized layers: a Linear as two Linears, a convolution as r full-size filters then a 1x1 conv.

- :class:`LowRankLinear`: ``x -> second(first(x))`` with ``first = Linear(in, r, bias=False)`` and
  ``second = Linear(r, out)``; ``r*(in+out)`` weights instead of ``in*out``.
- :class:`LowRankConv2d` (and :class:`LowRankConv1d`): the channel decomposition of Zhang et al.
  (2015, "Accelerating very deep convolutional networks for classification and detection"):
  ``first`` is a conv with ``r`` filters (per group) of the original kernel, stride, padding,
  dilation and padding mode; ``second`` a 1x1 conv from those ``r`` channels to the outputs. A
  grouped conv is factorized per group (each group gets ``r`` filters; ``groups`` is kept in both
  convs). Costs ``groups*r*(out/g + in/g*k*k)`` weights and that many MACs per output position.

Every factorized layer keeps the original's bias, device and dtype, exposes ``rank``, the dense
``weight`` it represents (computed on access), and :meth:`merge` back to a plain layer. The factors
are ordinary ``nn.Linear``/``nn.Conv`` children, so other families (quantization, pruning) can
compress them further; the layer keeps its own geometry (sizes, kernel, stride, padding), so it
prints, saves and profiles whatever the factors became. Its form is ``"factorized"``
(:mod:`torchcompress.forms`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.lowrank.modules import LowRankLinear
    >>> dense = nn.Linear(32, 16)
    >>> lr = LowRankLinear.from_dense(dense, rank=16)      # full rank: exact
    >>> x = torch.randn(4, 32)
    >>> torch.allclose(lr(x), dense(x), atol=1e-5)
    True
    >>> isinstance(lr.merge(), nn.Linear)
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import forms
from ..errors import ConfigError, UnsupportedModuleError
from ..layers import Geometry, canonical_weight, geometry, layer_kind, stored_weight
from . import functional as F

__all__ = [
    "FACTORIZED",
    "LowRankConv1d",
    "LowRankConv2d",
    "LowRankLinear",
    "LowRankModule",
    "build_lowrank",
    "dense_geometry",
    "dense_matrices",
    "factorizable",
]


def dense_geometry(module: nn.Module, name: str = "") -> Geometry:
    """The :class:`~torchcompress.layers.Geometry` of the dense map ``module`` computes.

    For a factorized layer, the geometry of the dense layer it represents.

    Raises:
        UnsupportedModuleError: ``module`` is not a weight layer of a registered kind.
    """
    if isinstance(module, LowRankModule):
        return module.dense_geometry()
    return geometry(module, name)


def factorizable(module: nn.Module) -> bool:
    """Whether ``module`` is a dense weight layer with a factorized form (:data:`FACTORIZED`)."""
    if isinstance(module, LowRankModule) or layer_kind(module) is None:
        return False
    return geometry(module).spatial_dims in FACTORIZED


def dense_matrices(module: nn.Module) -> Tensor:
    """The weight of a dense layer as ``(groups, m, n)`` matrices (detached, same dtype).

    For a factorized layer, the product of its factors.
    """
    if isinstance(module, LowRankModule):
        return module.dense_matrix().detach()
    return dense_geometry(module).matrices(canonical_weight(module).detach())


class LowRankModule(nn.Module):
    """Base class of the factorized layers (``first`` then ``second``).

    Attributes:
        rank: the rank (per group for convolutions).
    """

    rank: int
    groups: int = 1
    first: nn.Module
    second: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(first, second)`` as matrices ``(groups, r, n)`` and ``(groups, m, r)`` (live views)."""
        raise NotImplementedError

    def dense_geometry(self) -> Geometry:
        """The :class:`~torchcompress.layers.Geometry` of the dense layer this one represents."""
        raise NotImplementedError

    def dense_matrix(self) -> Tensor:
        """The product ``second @ first`` as ``(groups, m, n)`` (differentiable)."""
        first, second = self.factors()
        return second @ first

    @property
    def bias(self) -> Tensor | None:  # type: ignore[override]
        """The output bias (held by ``second``)."""
        return self.second.bias  # type: ignore[return-value]

    def merge(self) -> nn.Module:
        """The equivalent dense layer (a new module on the same device and dtype)."""
        raise NotImplementedError

    @classmethod
    def from_geometry(
        cls,
        geometry: Geometry,
        rank: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LowRankModule:
        """An (uninitialised) factorized layer of rank ``rank`` for a dense map of ``geometry``."""
        raise NotImplementedError

    def with_factors(self, first: Tensor, second: Tensor) -> LowRankModule:
        """A new layer like this one (same shape, bias, device, dtype) with other factors.

        ``first`` is ``(groups, r, n)`` and ``second`` ``(groups, m, r)`` for any rank ``r``; the bias is
        copied.
        """
        raise NotImplementedError

    @torch.no_grad()
    def set_factors(self, first: Tensor, second: Tensor) -> None:
        """Overwrite the factors with ``(groups, r, n)`` / ``(groups, m, r)`` matrices."""
        f, s = self.factors()
        if first.shape != f.shape or second.shape != s.shape:
            raise ConfigError(
                f"factor shapes {tuple(first.shape)}, {tuple(second.shape)} do not fit "
                f"{tuple(f.shape)}, {tuple(s.shape)}"
            )
        f.copy_(first)
        s.copy_(second)


class LowRankLinear(LowRankModule):
    """A Linear factorized as ``Linear(in, rank, bias=False)`` then ``Linear(rank, out)``.

    Args:
        in_features: inputs.
        out_features: outputs.
        rank: the inner width.
        bias: whether ``second`` has a bias.
        device: where the factors live.
        dtype: their dtype.

    Example:
        >>> import torch
        >>> m = LowRankLinear(64, 32, rank=8)
        >>> m(torch.randn(2, 64)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 32]), 800)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LowRankLinear: rank must be at least 1, got {rank}.")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def weight(self) -> Tensor:
        """The dense ``out x in`` weight this layer represents (a matmul on every access)."""
        return self.second.weight @ self.first.weight

    def factors(self) -> tuple[Tensor, Tensor]:
        return self.first.weight.unsqueeze(0), self.second.weight.unsqueeze(0)

    def dense_geometry(self) -> Geometry:
        return Geometry("linear", self.in_features, self.out_features, bias=self.bias is not None)

    @classmethod
    def from_geometry(
        cls,
        geometry: Geometry,
        rank: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LowRankLinear:
        g = geometry
        return cls(g.n, g.m, rank, bias=g.bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(
        cls, first: Tensor, second: Tensor, bias: Tensor | None = None
    ) -> LowRankLinear:
        """Build from ``first`` (``r x in``), ``second`` (``out x r``) and an optional bias."""
        r, n = first.shape[-2:]
        m = second.shape[-2]
        mod = cls(n, m, r, bias=bias is not None, device=first.device, dtype=first.dtype)
        mod.set_factors(first.reshape(1, r, n), second.reshape(1, m, r))
        if bias is not None:
            with torch.no_grad():
                mod.second.bias.copy_(bias)  # type: ignore[union-attr]
        return mod

    @classmethod
    def from_dense(cls, linear: nn.Module, rank: int) -> LowRankLinear:
        """The truncated-SVD factorization of a Linear (or transformers' Conv1D) at ``rank``."""
        W = dense_matrices(linear)[0]
        first, second = F.truncated_svd(W, rank)
        return cls.from_factors(
            first, second, linear.bias.detach() if linear.bias is not None else None
        )

    def with_factors(self, first: Tensor, second: Tensor) -> LowRankLinear:
        p = self.first.weight
        bias = self.bias.detach() if self.bias is not None else None
        return LowRankLinear.from_factors(
            first.reshape(first.shape[-2:]).to(p), second.reshape(second.shape[-2:]).to(p), bias
        ).train(self.training)

    def merge(self) -> nn.Linear:
        p = self.first.weight
        out = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=p.device,
            dtype=p.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        out.train(self.training)
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, bias={self.bias is not None}"


class _LowRankConvNd(LowRankModule):
    _dims: int = 2
    _conv: type[nn.Module] = nn.Conv2d

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        rank: int,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"{type(self).__name__}: rank must be at least 1, got {rank}.")
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                f"{type(self).__name__}: channels {in_channels}->{out_channels} are not divisible "
                f"by groups={groups}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rank = rank
        self.groups = groups
        self.first = self._conv(
            in_channels,
            groups * rank,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.second = self._conv(
            groups * rank, out_channels, 1, groups=groups, bias=bias, device=device, dtype=dtype
        )
        # the geometry of the dense convolution, held here (not read from the factors, which other
        # families may replace by their own modules: a quantized or integer ``first``)
        self.kernel_size: tuple[int, ...] = tuple(self.first.kernel_size)
        self.stride: tuple[int, ...] = tuple(self.first.stride)
        self.padding: Any = self.first.padding
        self.dilation: tuple[int, ...] = tuple(self.first.dilation)
        self.padding_mode: str = self.first.padding_mode

    def factors(self) -> tuple[Tensor, Tensor]:
        g, r = self.groups, self.rank
        first = self.first.weight.reshape(g, r, -1)
        second = self.second.weight.reshape(g, self.out_channels // g, r)
        return first, second

    @classmethod
    def from_geometry(
        cls,
        geometry: Geometry,
        rank: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> _LowRankConvNd:
        g = geometry
        return cls(
            g.in_features,
            g.out_features,
            g.kernel_size,
            rank,
            stride=g.stride,
            padding=g.padding,
            dilation=g.dilation,
            groups=g.groups,
            bias=g.bias,
            padding_mode=g.padding_mode,
            device=device,
            dtype=dtype,
        )

    def dense_geometry(self) -> Geometry:
        pad = self.padding
        return Geometry(
            "conv",
            self.in_channels,
            self.out_channels,
            kernel_size=tuple(self.kernel_size),
            stride=tuple(self.stride),
            padding=pad if isinstance(pad, str) else tuple(pad),
            dilation=tuple(self.dilation),
            groups=self.groups,
            padding_mode=self.padding_mode,
            bias=self.bias is not None,
        )

    @property
    def weight(self) -> Tensor:
        """The dense kernel ``out x in/groups x k...`` this layer represents (computed on access)."""
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        return self.dense_matrix().reshape(shape)

    @classmethod
    def from_dense(cls, conv: nn.Module, rank: int) -> _LowRankConvNd:
        """The truncated-SVD channel factorization of a convolution at ``rank`` (per group)."""
        first, second = F.truncated_svd(dense_matrices(conv), rank)
        return build_lowrank(conv, first, second)  # type: ignore[return-value]

    def with_factors(self, first: Tensor, second: Tensor) -> _LowRankConvNd:
        p = self.first.weight
        kw = self.conv_kwargs()
        kw["rank"] = int(first.shape[-2])
        kw["padding"] = kw["padding"] if isinstance(kw["padding"], str) else tuple(kw["padding"])
        mod = type(self)(**kw, device=p.device, dtype=p.dtype)
        mod.set_factors(first.to(p), second.to(p))
        if self.bias is not None:
            with torch.no_grad():
                mod.second.bias.copy_(self.bias)  # type: ignore[union-attr,operator]
        return mod.train(self.training)

    def merge(self) -> nn.Module:
        p = self.first.weight
        out = self._conv(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=p.device,
            dtype=p.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.weight)  # type: ignore[operator]
            if self.bias is not None:
                out.bias.copy_(self.bias)  # type: ignore[union-attr,operator]
        out.train(self.training)
        return out

    def conv_kwargs(self) -> dict[str, Any]:
        """The constructor arguments (without device/dtype), JSON-friendly."""
        pad = self.padding
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "rank": self.rank,
            "stride": list(self.stride),
            "padding": pad if isinstance(pad, str) else list(pad),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "bias": self.bias is not None,
            "padding_mode": self.padding_mode,
        }

    def extra_repr(self) -> str:
        g = f", groups={self.groups}" if self.groups > 1 else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}"
            f", stride={self.stride}, padding={self.padding}{g}, bias={self.bias is not None}"
        )


class LowRankConv2d(_LowRankConvNd):
    """A Conv2d factorized as ``r`` filters of its kernel (per group), then a 1x1 conv.

    Takes ``nn.Conv2d``'s arguments plus ``rank`` (per group); ``first`` carries the stride,
    padding, dilation and padding mode, ``second`` the bias.

    Example:
        >>> import torch
        >>> m = LowRankConv2d(16, 32, 3, rank=4, padding=1)
        >>> m(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 32, 8, 8])
    """

    _dims = 2
    _conv = nn.Conv2d


class LowRankConv1d(_LowRankConvNd):
    """A Conv1d factorized as ``r`` filters of its kernel (per group), then a 1x1 conv.

    Example:
        >>> import torch
        >>> m = LowRankConv1d(16, 32, 5, rank=4, padding=2)
        >>> m(torch.randn(1, 16, 20)).shape
        torch.Size([1, 32, 20])
    """

    _dims = 1
    _conv = nn.Conv1d


#: The factorized form of a dense map, by its number of spatial dimensions (0: Linear-like).
FACTORIZED: dict[int, type[LowRankModule]] = {
    0: LowRankLinear,
    1: LowRankConv1d,
    2: LowRankConv2d,
}


def build_lowrank(dense: nn.Module, first: Tensor, second: Tensor) -> LowRankModule:
    """The factorized replacement of ``dense`` with factor matrices ``first`` (``g x r x n``) and
    ``second`` (``g x m x r``); the bias is copied, device and dtype follow ``dense``'s weight.

    Raises:
        UnsupportedModuleError: ``dense`` has no factorized form (e.g. a 3-D convolution).
    """
    g = geometry(dense)
    cls = FACTORIZED.get(g.spatial_dims)
    if cls is None:
        raise UnsupportedModuleError(
            f"{type(dense).__name__} ({g.spatial_dims}-D kernel) has no factorized form; "
            "low-rank factorization supports Linear-like layers and 1-D/2-D convolutions."
        )
    w = stored_weight(dense)
    r = int(first.shape[-2])
    first = first.reshape(g.groups, r, g.n).to(device=w.device, dtype=w.dtype)
    second = second.reshape(g.groups, g.m, r).to(device=w.device, dtype=w.dtype)
    bias = dense.bias.detach() if g.bias else None  # type: ignore[union-attr,operator]
    mod = cls.from_geometry(g, r, device=w.device, dtype=w.dtype)
    mod.set_factors(first, second)
    if bias is not None:
        with torch.no_grad():
            mod.second.bias.copy_(bias)  # type: ignore[union-attr,operator]
    mod.train(dense.training)
    return mod


forms.register_recogniser("factorized", lambda m: isinstance(m, LowRankModule))
