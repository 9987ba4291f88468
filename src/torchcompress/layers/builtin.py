"""The built-in layer kinds: ``linear``, ``hf_conv1d`` and ``conv`` (registered on import).

- :class:`LinearKind`: ``nn.Linear``, and the base of any kind whose module is a map over the last
  dimension (a new kind sets ``types`` and, if its weight is not stored ``(out, in)``, the layout
  helpers);
- :class:`HFConv1DKind`: Hugging Face's ``Conv1D`` (weight stored ``(in, out)``), recognised by
  :func:`is_hf_conv1d` without importing transformers;
- :class:`ConvKind`: ``nn.Conv1d/2d/3d``, grouped and depthwise, every padding and padding mode;
  its per-``(channel, tap)`` statistics come from strided slices (:func:`conv_input_sq`).

Example:
    >>> import torch
    >>> from torchcompress.layers.builtin import conv_input_sq
    >>> sq, rows = conv_input_sq(torch.ones(1, 2, 4), (3,), (1,), [(1, 1)], (1,))
    >>> sq.tolist(), rows  # the first and last taps see one padded zero each
    ([[3.0, 4.0, 3.0], [3.0, 4.0, 3.0]], 4)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShapeError
from .base import CHUNK_ELEMENTS, LAYER_KINDS, Geometry, LayerKind, _has_bias, stored_weight

__all__ = ["ConvKind", "HFConv1DKind", "LinearKind", "conv_input_sq", "is_hf_conv1d"]


def _power(x: Tensor, power: int) -> Tensor:
    """``|x| ** power`` without a needless copy for the common powers."""
    if power == 2:
        return x.pow(2)
    return x.abs() if power == 1 else x.abs().pow(power)


def _chunks(rows: Tensor, max_elements: int) -> Iterator[Tensor]:
    step = max(1, max_elements // max(1, rows.shape[-1]))
    for i in range(0, rows.shape[0], step):
        yield rows[i : i + step]


class LinearKind(LayerKind):
    """A Linear-like map over the last dimension; the base of any kind with a 2-D weight.

    :meth:`geometry` reads the features from the canonical weight shape, so a new kind whose
    module stores ``weight`` as ``(out, in)`` only sets :attr:`types` (or :meth:`matches`).
    """

    types = (nn.Linear,)

    def geometry(self, module: nn.Module) -> Geometry:
        out, inp = self.to_canonical(module, stored_weight(module)).shape
        return Geometry(self.name, int(inp), int(out), bias=_has_bias(module))

    def forward(
        self, geometry: Geometry, x: Tensor, weight: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        return F.linear(x, weight, bias)

    def input_rows(
        self, geometry: Geometry, x: Tensor, *, max_elements: int = CHUNK_ELEMENTS
    ) -> Iterator[Tensor]:
        for chunk in _chunks(self.channel_rows(geometry, x), max_elements):
            yield chunk.unsqueeze(0)

    def feature_sums(
        self, geometry: Geometry, x: Tensor, power: int = 2, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, int]:
        rows = self.channel_rows(geometry, x).detach().to(dtype)
        v = _power(rows, power)
        return v.sum(0), int(rows.shape[0])

    def channel_rows(self, geometry: Geometry, x: Tensor) -> Tensor:
        return x.reshape(-1, geometry.in_features)


def is_hf_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is (a subclass of) Hugging Face's ``Conv1D`` (never imports transformers).

    Parametrized copies (``ParametrizedConv1D``, made by pruning masks) are recognised through
    their class hierarchy.
    """
    return any(
        c.__name__ == "Conv1D" and c.__module__.startswith("transformers")
        for c in type(module).__mro__
    )


class HFConv1DKind(LinearKind):
    """Hugging Face's ``Conv1D`` (GPT-2 style): a Linear with the weight stored ``(in, out)``."""

    types = ()
    weight_axes = (1, 0)

    def matches(self, module: nn.Module) -> bool:
        return is_hf_conv1d(module)

    def to_canonical(self, module: nn.Module, stored: Tensor) -> Tensor:
        return stored.t()

    def from_canonical(self, module: nn.Module, canonical: Tensor) -> Tensor:
        return canonical.t()


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _pad(x: Tensor, geometry: Geometry) -> Tensor:
    flat: list[int] = []
    for lo, hi in reversed(geometry.pads):
        flat += [lo, hi]
    if not any(flat):
        return x
    if geometry.padding_mode == "zeros":
        return F.pad(x, flat)
    return F.pad(x, flat, mode=geometry.padding_mode)


def _batched(x: Tensor, geometry: Geometry) -> Tensor:
    return x.unsqueeze(0) if x.dim() == geometry.spatial_dims + 1 else x


def conv_input_sq(
    x: Tensor,
    kernel_size: tuple[int, ...] | list[int],
    stride: tuple[int, ...] | list[int],
    pads: tuple[tuple[int, int], ...] | list[tuple[int, int]],
    dilation: tuple[int, ...] | list[int],
    padding_mode: str = "zeros",
    *,
    power: int = 2,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, int]:
    """Sum of ``|x|^power`` of the input each kernel tap of a convolution sees, without unfolding.

    Entry ``[c, i, j]`` is the sum over the batch and every output position ``(p, q)`` of
    ``|x_pad[c, s*p + d*i, s*q + d*j]| ** power``: the ``power``-norm of row ``(c, i, j)`` of the
    im2col matrix (squared for the default ``power=2``), from strided slices of ``|x_pad|^power``
    in ``O(C * prod(spatial))`` memory.

    Args:
        x: input ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``.
        kernel_size: per spatial dimension.
        stride: per spatial dimension.
        pads: ``(before, after)`` padding per spatial dimension.
        dilation: per spatial dimension.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        power: the exponent (2: squares, 1: absolute values).
        dtype: the precision of the sums.

    Returns:
        ``(sums of shape (C, *kernel_size), rows)`` where rows = N * number of output positions.
    """
    nd = len(kernel_size)
    geo = Geometry(
        "conv",
        int(x.shape[-nd - 1]),
        1,
        kernel_size=tuple(kernel_size),
        stride=tuple(stride),
        padding=tuple(int(lo) for lo, _ in pads),
        dilation=tuple(dilation),
        padding_mode=padding_mode,
    )
    return _tap_sums(geo, x, tuple(tuple(p) for p in pads), power, dtype)


def _tap_sums(
    geo: Geometry,
    x: Tensor,
    pads: tuple[tuple[int, ...], ...],
    power: int,
    dtype: torch.dtype,
) -> tuple[Tensor, int]:
    nd = geo.spatial_dims
    x = _batched(x, geo).detach().to(dtype)
    flat: list[int] = []
    for lo, hi in reversed(pads):
        flat += [lo, hi]
    if any(flat):
        x = F.pad(x, flat) if geo.padding_mode == "zeros" else F.pad(x, flat, mode=geo.padding_mode)
    v = _power(x, power).sum(0)  # (C, *padded)
    k, s, d = geo.kernel_size, geo.stride, geo.dilation
    out_sizes = [(v.shape[1 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd)]
    result = v.new_zeros((v.shape[0], *k))
    if any(o <= 0 for o in out_sizes):
        return result, 0
    dims = tuple(range(1, nd + 1))
    for offset in itertools.product(*(range(kk) for kk in k)):
        sl = tuple(
            slice(d[i] * offset[i], d[i] * offset[i] + s[i] * (out_sizes[i] - 1) + 1, s[i])
            for i in range(nd)
        )
        result[(slice(None), *offset)] = v[(slice(None), *sl)].sum(dims)
    return result, int(x.shape[0]) * math.prod(out_sizes)


class ConvKind(LayerKind):
    """``nn.Conv1d``, ``Conv2d`` and ``Conv3d`` (grouped and depthwise; not transposed)."""

    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def geometry(self, module: nn.Module) -> Geometry:
        m: nn.modules.conv._ConvNd = module  # type: ignore[assignment]
        return Geometry(
            self.name,
            int(m.in_channels),
            int(m.out_channels),
            kernel_size=tuple(m.kernel_size),
            stride=tuple(m.stride),
            padding=m.padding if isinstance(m.padding, str) else tuple(m.padding),
            dilation=tuple(m.dilation),
            groups=int(m.groups),
            padding_mode=str(m.padding_mode),
            bias=_has_bias(m),
        )

    def forward(
        self, geometry: Geometry, x: Tensor, weight: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        conv = _CONV.get(geometry.spatial_dims)
        if conv is None:
            raise ShapeError(f"No {geometry.spatial_dims}-D convolution in torch.")
        g = geometry
        if g.padding_mode != "zeros":
            return conv(_pad(x, g), weight, bias, g.stride, 0, g.dilation, g.groups)
        return conv(x, weight, bias, g.stride, g.padding, g.dilation, g.groups)

    def input_rows(
        self, geometry: Geometry, x: Tensor, *, max_elements: int = CHUNK_ELEMENTS
    ) -> Iterator[Tensor]:
        g = geometry
        x = _batched(x, g)
        out = g.output_size(tuple(x.shape[2:]))
        per_sample = max(1, math.prod(out) * g.in_features * g.taps)
        step = max(1, max_elements // per_sample)
        for i in range(0, x.shape[0], step):
            p = _pad(x[i : i + step], g)
            for dim, (k, s, d) in enumerate(zip(g.kernel_size, g.stride, g.dilation)):
                p = p.unfold(2 + dim, d * (k - 1) + 1, s)[..., ::d]
            # (b, C, *out, *kernel) -> (b * positions, C * taps), columns like weight.reshape(out, -1)
            nd = g.spatial_dims
            perm = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
            rows = p.permute(perm).reshape(-1, g.in_features * g.taps)
            yield rows.reshape(rows.shape[0], g.groups, g.n).transpose(0, 1)

    def feature_sums(
        self, geometry: Geometry, x: Tensor, power: int = 2, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, int]:
        return _tap_sums(geometry, x, geometry.pads, power, dtype)

    def channel_rows(self, geometry: Geometry, x: Tensor) -> Tensor:
        x = _batched(x, geometry)
        return x.movedim(1, -1).reshape(-1, geometry.in_features)


LAYER_KINDS.add("linear", LinearKind())
LAYER_KINDS.add("hf_conv1d", HFConv1DKind())
LAYER_KINDS.add("conv", ConvKind())
