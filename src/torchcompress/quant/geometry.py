"""Quantization's view of the shared layer model (:mod:`torchcompress.layers`).

Quantization handles every registered layer kind: a float layer's
:class:`~torchcompress.layers.Geometry` (``layers.geometry(module)``) is what the fake-quant,
integer and codebook modules are built from; each of them keeps it as its ``geometry`` attribute
and runs itself with :func:`torchcompress.layers.forward` (or an integer kernel that accepts the
geometry). What quantization adds on top lives here:

- :func:`geometry_of`: the geometry of a float layer or of a quantized module;
- :func:`describe`: ``"Linear 16->32"``, the type and sizes for messages;
- :func:`symmetric_padding`: the padding as integer kernels and ONNX take it (one number per spatial
  dimension; ``None`` when ``"same"`` pads one side more than the other);
- :func:`geometry_repr`: the sizes and convolution arguments as torch's layers print them;
- :func:`legacy_geometry`: the geometry of a layer saved before quantized modules carried one
  (files record ``kind`` = ``"linear"``, ``"conv1d"`` or ``"conv2d"`` and the convolution arguments).

Example:
    >>> import torch
    >>> from torchcompress import layers
    >>> from torchcompress.quant import geometry as QG
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding="same", padding_mode="reflect")
    >>> geo = QG.geometry_of(conv)
    >>> QG.describe(conv), QG.symmetric_padding(geo)
    ('Conv2d 3->8', (1, 1))
    >>> x = torch.randn(1, 3, 6, 6)
    >>> torch.allclose(layers.forward(geo, x, conv.weight, conv.bias), conv(x))
    True
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import UnsupportedModuleError
from ..layers import LAYER_KINDS, Geometry, layer_kind

__all__ = [
    "describe",
    "geometry_of",
    "geometry_repr",
    "legacy_geometry",
    "symmetric_padding",
]


def geometry_of(module: nn.Module, name: str = "") -> Geometry:
    """The geometry of a float layer (any registered kind) or of a quantized module.

    Raises:
        UnsupportedModuleError: ``module`` is neither (the message lists the registered kinds).
    """
    geo = getattr(module, "geometry", None)
    if isinstance(geo, Geometry):
        return geo
    kind = layer_kind(module)
    if kind is None:
        label = f"{name!r} ({type(module).__name__})" if name else type(module).__name__
        raise UnsupportedModuleError(
            f"{label} is not a layer quantization handles (registered layer kinds: "
            f"{', '.join(repr(n) for n in LAYER_KINDS.names())}; register one with "
            "torchcompress.layers.LAYER_KINDS.add)."
        )
    return kind.geometry(module)


def describe(module: nn.Module) -> str:
    """``"Linear 16->32"``, ``"Conv2d 3->8"``: a layer's type and sizes (just the type for any other
    module), for messages."""
    try:
        geo = geometry_of(module)
    except UnsupportedModuleError:
        return type(module).__name__
    return f"{type(module).__name__} {geo.in_features}->{geo.out_features}"


def symmetric_padding(geometry: Geometry) -> tuple[int, ...] | None:
    """The padding with one number per spatial dimension, both sides alike (``"same"`` and
    ``"valid"`` resolved), or ``None`` where ``"same"`` pads one side more (an even kernel)."""
    pads = geometry.pads
    if any(lo != hi for lo, hi in pads):
        return None
    return tuple(lo for lo, _ in pads)


def geometry_repr(geometry: Geometry) -> str:
    """The sizes and convolution arguments of a layer as its ``repr`` shows them."""
    g = geometry
    if not g.kernel_size:
        return f"in_features={g.in_features}, out_features={g.out_features}"
    out = (
        f"{g.in_features}, {g.out_features}, kernel_size={g.kernel_size}, "
        f"stride={g.stride}, padding={g.padding}"
    )
    return out + (f", groups={g.groups}" if g.groups != 1 else "")


def legacy_geometry(
    weight_shape: tuple[int, ...] | list[int],
    *,
    bias: bool,
    stride: Any = (),
    padding: Any = (),
    dilation: Any = (),
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Geometry:
    """The geometry of a quantized layer saved before quantized modules carried one.

    Such files name the kind a layer ran as (``"linear"``, ``"conv1d"`` or ``"conv2d"``) and its
    convolution arguments; the sizes follow from the canonical weight shape ``(out, in / groups,
    *kernel)``: a 2-D weight is a Linear map, a 3-D or 4-D one a convolution.
    """
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) == 2:
        return Geometry("linear", shape[1], shape[0], bias=bias)
    pad = padding if isinstance(padding, str) else tuple(padding)
    return Geometry(
        "conv",
        shape[1] * int(groups),
        shape[0],
        kernel_size=shape[2:],
        stride=tuple(stride),
        padding=pad,
        dilation=tuple(dilation),
        groups=int(groups),
        padding_mode=padding_mode,
        bias=bias,
    )
