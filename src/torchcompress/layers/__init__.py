"""One model of layer kinds: which modules are weight layers, and how their weights look.

Every module a compression family can target is a *weighted linear map*: an ``nn.Linear``, a
convolution, Hugging Face's ``Conv1D``, or anything registered here. A :class:`LayerKind` says, for
the modules it matches:

- :meth:`LayerKind.geometry`: a frozen, serialisable :class:`Geometry` (features, kernel, stride,
  padding, dilation, groups, padding mode, bias) from which the canonical weight shape
  ``(out, in/groups, *kernel)``, its 2-D matrix ``(out, in/groups * prod(kernel))`` and the MACs
  follow;
- :meth:`LayerKind.to_canonical` / :meth:`LayerKind.from_canonical`: the stored weight seen in the
  canonical layout and back (Hugging Face's ``Conv1D`` stores ``(in, out)``);
- :meth:`LayerKind.forward`: the functional forward on a canonical weight, honouring every
  ``padding_mode`` (what a compressed wrapper calls instead of switching on the kind);
- :meth:`LayerKind.input_rows`: the rows the weight matrix multiplies, ``(groups, rows, n)``, in
  bounded chunks (a Linear's last dimension; a convolution's patches);
- :meth:`LayerKind.feature_sums` and :meth:`LayerKind.channel_rows`: per-input-feature sums of
  ``|x|^p`` (for a convolution per ``(channel, kernel tap)``, from strided slices, never an
  unfolded copy) and the input with its channels last.

Built in: ``linear`` (``nn.Linear``), ``conv`` (``nn.Conv1d/2d/3d``, grouped and depthwise) and
``hf_conv1d`` (transformers' ``Conv1D``, recognised without importing transformers). A new kind is
one class registered with ``LAYER_KINDS.add("name", MyKind())``; the latest registered kind that
matches a module wins, so a registration may also specialise a built-in class.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress import layers
    >>> conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    >>> geo = layers.geometry(conv)
    >>> geo.weight_shape, geo.matrix_shape, geo.grouped_shape
    ((8, 2, 3, 3), (8, 18), (2, 4, 18))
    >>> x = torch.randn(1, 4, 5, 5)
    >>> y = layers.forward(geo, x, conv.weight, conv.bias)
    >>> torch.equal(y, conv(x)), geo.macs(geo.output_positions(y))
    (True, 3600)
"""

from __future__ import annotations

from .base import (
    CHUNK_ELEMENTS,
    LAYER_KINDS,
    PADDING_MODES,
    Geometry,
    LayerKind,
    canonical_weight,
    check_finite,
    forward,
    geometry,
    layer_kind,
    stored_weight,
    supported_types,
)
from .builtin import ConvKind, HFConv1DKind, LinearKind, conv_input_sq, is_hf_conv1d

__all__ = [
    "CHUNK_ELEMENTS",
    "LAYER_KINDS",
    "PADDING_MODES",
    "ConvKind",
    "Geometry",
    "HFConv1DKind",
    "LayerKind",
    "LinearKind",
    "canonical_weight",
    "check_finite",
    "conv_input_sq",
    "forward",
    "geometry",
    "is_hf_conv1d",
    "layer_kind",
    "stored_weight",
    "supported_types",
]
