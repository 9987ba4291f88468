"""Which layers can be pruned, and how their weights look to patterns and criteria.

Each prunable module kind is a small registered :class:`LayerKind` that presents the weight in a
*canonical* layout ``(out, in, *kernel)`` (dimension 1 is the input dimension that N:M runs along)
and accumulates the per-input-feature statistics Wanda needs. Built in:

- ``linear``: :class:`torch.nn.Linear` (weight ``(out, in)``);
- ``conv``: :class:`torch.nn.Conv1d`/``Conv2d``/``Conv3d`` (weight ``(out, in/groups, *k)``; the input
  statistics follow the convolution's padding, stride, dilation and groups exactly);
- ``hf_conv1d``: Hugging Face's ``Conv1D`` (GPT-2 style, weight stored ``(in, out)``; seen transposed).

Registering a new kind is one class and ``LAYER_KINDS.add("name", MyKind())``.

Example:
    >>> from torch import nn
    >>> from torchcompress.sparsity.layers import layer_kind
    >>> kind = layer_kind(nn.Conv2d(4, 8, 3, groups=2))
    >>> kind.canonical_shape(nn.Conv2d(4, 8, 3, groups=2))
    (8, 2, 3, 3)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry
from .masking import original

__all__ = ["LAYER_KINDS", "LayerKind", "conv_input_sq", "layer_kind", "supported_types"]


class LayerKind:
    """How one kind of module exposes its weight to pruning.

    Subclasses implement :meth:`matches`, and override the layout helpers when the stored weight is
    not already ``(out, in, *kernel)``.
    """

    #: the module classes this kind covers (for include/exclude type checks and error messages)
    types: tuple[type[nn.Module], ...] = ()

    def matches(self, module: nn.Module) -> bool:
        """Whether this kind handles ``module``."""
        return isinstance(module, self.types)

    # layout ---------------------------------------------------------------------------------
    def to_canonical(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        """The stored weight (or a tensor of its shape) seen as ``(out, in, *kernel)``."""
        return t

    def from_canonical(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_canonical`."""
        return t

    def canonical_shape(self, module: nn.Module) -> tuple[int, ...]:
        """Shape of the canonical weight."""
        return tuple(self.to_canonical(module, original(module, "weight")).shape)

    def groups(self, module: nn.Module) -> int:
        """Convolution groups (1 for dense layers)."""
        return 1

    def describe(self, module: nn.Module) -> str:
        """A short description used in error messages."""
        return f"{type(module).__name__}, weight {tuple(original(module, 'weight').shape)}"

    # statistics -----------------------------------------------------------------------------
    def input_stat_shape(self, module: nn.Module) -> tuple[int, ...]:
        """Shape of the per-input-feature statistic (``(in,)``, or ``(in_channels, *kernel)``)."""
        raise NotImplementedError

    def accumulate_input_sq(self, module: nn.Module, x: torch.Tensor, acc: torch.Tensor) -> int:
        """Add the sum of squares of each input feature of ``x`` to ``acc``; return the rows seen."""
        raise NotImplementedError

    def expand_input_stat(self, module: nn.Module, stat: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-input-feature statistic to the canonical weight shape."""
        raise NotImplementedError

    def macs(self, module: nn.Module, output: torch.Tensor) -> tuple[int, int]:
        """``(dense MACs, MACs per weight element)`` of one forward that produced ``output``."""
        raise NotImplementedError


LAYER_KINDS: Registry[LayerKind] = Registry("prunable layer kind")


class LinearKind(LayerKind):
    """:class:`torch.nn.Linear` and subclasses."""

    types = (nn.Linear,)

    def input_stat_shape(self, module: nn.Module) -> tuple[int, ...]:
        return (int(original(module, "weight").shape[1]),)

    def accumulate_input_sq(self, module: nn.Module, x: torch.Tensor, acc: torch.Tensor) -> int:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        acc += x2.pow(2).sum(0)
        return int(x2.shape[0])

    def expand_input_stat(self, module: nn.Module, stat: torch.Tensor) -> torch.Tensor:
        return stat.reshape(1, -1)

    def macs(self, module: nn.Module, output: torch.Tensor) -> tuple[int, int]:
        shape = self.canonical_shape(module)
        rows = output.numel() // max(shape[0], 1)
        return rows * shape[0] * shape[1], rows


class HFConv1DKind(LinearKind):
    """Hugging Face's ``Conv1D`` (a Linear with the weight stored ``(in, out)``)."""

    types = ()

    def matches(self, module: nn.Module) -> bool:
        return (
            type(module).__name__ in ("Conv1D", "ParametrizedConv1D")
            and type(module).__module__.startswith(("transformers", "torch.nn.utils.parametrize"))
            and hasattr(module, "nf")
        )

    def to_canonical(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return t.t()

    def from_canonical(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return t.t()

    def input_stat_shape(self, module: nn.Module) -> tuple[int, ...]:
        return (int(original(module, "weight").shape[0]),)


def _conv_pads(module: nn.modules.conv._ConvNd) -> list[tuple[int, int]]:
    """(left, right) padding per spatial dimension, as the convolution applies it."""
    k, d = module.kernel_size, module.dilation
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [(0, 0)] * len(k)
        out = []
        for kk, dd in zip(k, d):  # 'same': extra padding goes to the right, as torch does
            total = dd * (kk - 1)
            out.append((total // 2, total - total // 2))
        return out
    return [(int(p), int(p)) for p in module.padding]  # type: ignore[union-attr]


def conv_input_sq(
    x: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    pads: Sequence[tuple[int, int]],
    dilation: Sequence[int],
    padding_mode: str = "zeros",
) -> tuple[torch.Tensor, int]:
    """Sum of squares of the input each kernel tap of a convolution sees, without unfolding.

    For a convolution with the given geometry, entry ``[c, i, j]`` is the sum over the batch and all
    output positions of ``x_pad[c, s*p + d*i, s*q + d*j] ** 2``, i.e. the squared L2 norm of row
    ``(c, i, j)`` of the im2col matrix, computed from strided slices of ``x_pad ** 2`` in
    ``O(C * H * W)`` memory.

    Args:
        x: input ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``.
        kernel_size, stride, dilation: per spatial dimension.
        pads: ``(left, right)`` padding per spatial dimension.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.

    Returns:
        ``(sum_sq of shape (C, *kernel_size), rows)`` where rows = N * number of output positions.
    """
    nd = len(kernel_size)
    if x.dim() == nd + 1:
        x = x.unsqueeze(0)
    x = x.detach().float()
    flat: list[int] = []
    for left, right in reversed(list(pads)):
        flat += [left, right]
    if any(flat):
        if padding_mode == "zeros":
            x = F.pad(x, flat)
        else:
            x = F.pad(x, flat, mode=padding_mode)
    sq = x.pow(2).sum(0)  # (C, *padded)
    out_sizes = [
        (sq.shape[1 + i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1
        for i in range(nd)
    ]
    result = sq.new_zeros((sq.shape[0], *kernel_size))
    if any(o <= 0 for o in out_sizes):
        return result, 0
    dims = tuple(range(1, nd + 1))
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        sl = tuple(
            slice(
                dilation[i] * offset[i],
                dilation[i] * offset[i] + stride[i] * (out_sizes[i] - 1) + 1,
                stride[i],
            )
            for i in range(nd)
        )
        result[(slice(None), *offset)] = sq[(slice(None), *sl)].sum(dims)
    return result, int(x.shape[0]) * math.prod(out_sizes)


class ConvKind(LayerKind):
    """:class:`torch.nn.Conv1d`, ``Conv2d`` and ``Conv3d`` (not transposed convolutions)."""

    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def groups(self, module: nn.Module) -> int:
        return int(module.groups)  # type: ignore[arg-type]

    def describe(self, module: nn.Module) -> str:
        g = f", groups={module.groups}" if module.groups != 1 else ""  # type: ignore[attr-defined]
        return f"{type(module).__name__}, weight {tuple(original(module, 'weight').shape)}{g}"

    def input_stat_shape(self, module: nn.Module) -> tuple[int, ...]:
        return (int(module.in_channels), *module.kernel_size)  # type: ignore[attr-defined]

    def accumulate_input_sq(self, module: nn.Module, x: torch.Tensor, acc: torch.Tensor) -> int:
        m: nn.modules.conv._ConvNd = module  # type: ignore[assignment]
        sq, rows = conv_input_sq(
            x, m.kernel_size, m.stride, _conv_pads(m), m.dilation, m.padding_mode
        )
        acc += sq
        return rows

    def expand_input_stat(self, module: nn.Module, stat: torch.Tensor) -> torch.Tensor:
        g = self.groups(module)
        out_c = int(module.out_channels)  # type: ignore[arg-type]
        per = stat.shape[0] // g
        k = stat.shape[1:]
        return stat.reshape(g, 1, per, *k).expand(g, out_c // g, per, *k).reshape(out_c, per, *k)

    def macs(self, module: nn.Module, output: torch.Tensor) -> tuple[int, int]:
        out_c = int(module.out_channels)  # type: ignore[arg-type]
        positions = output.numel() // max(out_c, 1)
        per_output = math.prod(self.canonical_shape(module)[1:])
        return positions * out_c * per_output, positions


LAYER_KINDS.add("linear", LinearKind())
LAYER_KINDS.add("hf_conv1d", HFConv1DKind())
LAYER_KINDS.add("conv", ConvKind())


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The registered :class:`LayerKind` handling ``module`` (the latest registered wins), or ``None``."""
    for name in reversed(LAYER_KINDS.names()):
        kind = LAYER_KINDS.get(name)
        if kind.matches(module):
            return kind
    return None


def supported_types(model: nn.Module | None = None) -> tuple[type[nn.Module], ...]:
    """Module classes that can be pruned (plus any class in ``model`` a layer kind accepts)."""
    out: list[type[nn.Module]] = []
    for name in LAYER_KINDS.names():
        kind = LAYER_KINDS.get(name)
        out += [t for t in getattr(kind, "types", ()) if t not in out]
    if model is not None:
        for m in model.modules():
            cls = type(m)
            if cls not in out and not isinstance(m, tuple(out)) and layer_kind(m) is not None:
                out.append(cls)
    return tuple(out)
