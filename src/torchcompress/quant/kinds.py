"""The layer kinds quantization replaces, in one place: which module is which kind, its geometry,
its weight in the canonical layout, its functional forward and a description.

A :class:`LayerKind` per kind of dense layer (:data:`LAYER_KINDS`): ``linear`` (``nn.Linear``),
``hf_conv1d`` (Hugging Face's ``Conv1D``, a linear map storing its weight transposed; detected
without importing ``transformers``), ``conv1d`` and ``conv2d`` (grouped and depthwise included).
Every quantized module (fake-quant, integer, codebook) records the kind it runs as (``"linear"``,
``"conv1d"`` or ``"conv2d"``) in its ``kind`` attribute and calls :func:`forward` instead of
switching on it; the verbs build layers from :func:`geometry`. This module is quant's only switch
on layer types: the shared layer model (:mod:`torchcompress.layers`) replaces it.

Example:
    >>> import torch
    >>> from torchcompress.quant import kinds
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding="same", padding_mode="reflect")
    >>> k = kinds.kind_of(conv)
    >>> k.name, kinds.describe(conv)
    ('conv2d', 'Conv2d 3->8')
    >>> x = torch.randn(1, 3, 6, 6)
    >>> y = kinds.forward("conv2d", x, conv.weight, conv.bias, kinds.geometry(conv))
    >>> torch.allclose(y, conv(x))
    True
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UnsupportedModuleError
from ..registry import Registry

__all__ = [
    "LAYER_KINDS",
    "LayerKind",
    "conv_padding",
    "describe",
    "forward",
    "geometry",
    "geometry_repr",
    "hf_conv1d",
    "kind_of",
    "quantizable_types",
    "reversed_padding",
    "runs_as",
]


def hf_conv1d() -> type[nn.Module] | None:
    """transformers' ``Conv1D`` if transformers is imported (never imports it just to check)."""
    if "transformers" not in sys.modules:
        return None
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


class LayerKind:
    """One kind of dense layer. Subclass it and add an instance to :data:`LAYER_KINDS`.

    Attributes:
        name: the registry name.
        runs_as: the kind quantized layers run it as (``"linear"``, ``"conv1d"``, ``"conv2d"``).
        source: the class name quantized layers record (``"Linear"``, ``"Conv1D"``, ...).
        token_inputs: its input's last dimension holds features (per-token scales apply).
        fuses_residual: its integer kernel can add a residual operand (and apply a ReLU) before
            re-quantizing its output (oneDNN's int8 Conv2d).
        channels_first: its input features are dimension 1 (channels), not the last one.
    """

    name: ClassVar[str] = ""
    runs_as: ClassVar[str] = ""
    source: ClassVar[str] = ""
    token_inputs: ClassVar[bool] = False
    fuses_residual: ClassVar[bool] = False
    channels_first: ClassVar[bool] = False

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` (a float layer) is of this kind."""
        raise NotImplementedError

    def geometry(self, module: nn.Module) -> dict[str, Any]:
        """The constructor arguments of the quantized layer (sizes, and conv arguments)."""
        raise NotImplementedError

    def canonical_weight(self, module: nn.Module) -> nn.Parameter:
        """The weight in the layout ``(out, in / groups, *kernel)`` (the module's own parameter
        when it is stored that way)."""
        return module.weight  # type: ignore[return-value]

    def forward(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Mapping[str, Any]
    ) -> Tensor:
        """The layer's output for a weight in the canonical layout."""
        raise NotImplementedError

    def describe(self, module: nn.Module) -> str:
        """``"Linear 16->32"``: the type and sizes, for messages."""
        g = self.geometry(module)
        cin = g.get("in_features", g.get("in_channels"))
        cout = g.get("out_features", g.get("out_channels"))
        return f"{type(module).__name__} {cin}->{cout}"


class _Linear(LayerKind):
    name = "linear"
    runs_as = "linear"
    source = "Linear"
    token_inputs = True

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def geometry(self, module: nn.Module) -> dict[str, Any]:
        return {"in_features": int(module.in_features), "out_features": int(module.out_features)}

    def forward(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Mapping[str, Any]
    ) -> Tensor:
        return F.linear(x, weight, bias)


class _HFConv1D(_Linear):
    """Hugging Face's ``Conv1D``: ``y = x @ W + b`` with ``W`` stored ``[in, out]``."""

    name = "hf_conv1d"
    source = "Conv1D"

    def matches(self, module: nn.Module) -> bool:
        hf = hf_conv1d()
        return hf is not None and isinstance(module, hf)

    def geometry(self, module: nn.Module) -> dict[str, Any]:
        w = module.weight
        return {"in_features": int(w.shape[0]), "out_features": int(w.shape[1])}

    def canonical_weight(self, module: nn.Module) -> nn.Parameter:
        w = module.weight
        return nn.Parameter(w.detach().t().contiguous(), requires_grad=w.requires_grad)


class _Conv(LayerKind):
    channels_first = True
    nd: ClassVar[int] = 2
    module_type: ClassVar[type[nn.Module]] = nn.Conv2d

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_type)

    def geometry(self, module: nn.Module) -> dict[str, Any]:
        pad = module.padding
        return {
            "in_channels": int(module.in_channels),
            "out_channels": int(module.out_channels),
            "kernel_size": tuple(int(k) for k in module.kernel_size),
            "stride": tuple(int(s) for s in module.stride),
            "padding": pad if isinstance(pad, str) else tuple(int(p) for p in pad),
            "dilation": tuple(int(d) for d in module.dilation),
            "groups": int(module.groups),
            "padding_mode": str(module.padding_mode),
        }

    def forward(
        self, x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Mapping[str, Any]
    ) -> Tensor:
        conv = F.conv2d if self.nd == 2 else F.conv1d
        g = geometry
        if g["padding_mode"] != "zeros":
            kernel = tuple(weight.shape[2:])
            x = F.pad(
                x, reversed_padding(g["padding"], kernel, g["dilation"]), mode=g["padding_mode"]
            )
            return conv(x, weight, bias, g["stride"], 0, g["dilation"], g["groups"])
        return conv(x, weight, bias, g["stride"], g["padding"], g["dilation"], g["groups"])


class _Conv1d(_Conv):
    name = "conv1d"
    runs_as = "conv1d"
    source = "Conv1d"
    nd = 1
    module_type = nn.Conv1d


class _Conv2d(_Conv):
    name = "conv2d"
    runs_as = "conv2d"
    source = "Conv2d"
    fuses_residual = True
    nd = 2
    module_type = nn.Conv2d


#: name -> :class:`LayerKind` (tried in registration order by :func:`kind_of`)
LAYER_KINDS: Registry[LayerKind] = Registry("layer kind")
for _k in (_Linear(), _HFConv1D(), _Conv1d(), _Conv2d()):
    LAYER_KINDS.add(_k.name, _k)

#: the geometry keys of convolutions (what a quantized conv stores besides its sizes)
CONV_KEYS = ("stride", "padding", "dilation", "groups", "padding_mode")


def kind_of(module: nn.Module) -> LayerKind | None:
    """The :class:`LayerKind` of a float layer, or ``None`` if quantization does not handle it."""
    for name in LAYER_KINDS:
        k = LAYER_KINDS.get(name)
        if k.matches(module):
            return k
    return None


def quantizable_types() -> tuple[type[nn.Module], ...]:
    """The layer types the quantization verbs handle: Linear, Conv1d, Conv2d and (if loaded) HF
    ``Conv1D``."""
    types: list[type[nn.Module]] = [nn.Linear, nn.Conv1d, nn.Conv2d]
    hf = hf_conv1d()
    if hf is not None:
        types.append(hf)
    return tuple(types)


def geometry(module: nn.Module) -> dict[str, Any]:
    """The geometry of a float layer or of a quantized one (anything with the layer attributes).

    Raises:
        UnsupportedModuleError: the module is not a layer of a known kind.
    """
    k = kind_of(module)
    if k is not None:
        return k.geometry(module)
    kind = getattr(module, "kind", None)
    if not kind:
        raise UnsupportedModuleError(
            f"{type(module).__name__} is not a layer quantization handles (known kinds: "
            f"{', '.join(LAYER_KINDS.names())})."
        )
    return {key: getattr(module, key) for key in CONV_KEYS} if kind != "linear" else {}


def runs_as(kind: str) -> LayerKind:
    """The :class:`LayerKind` a quantized layer of ``kind`` runs as."""
    return LAYER_KINDS.get(kind)


def forward(
    kind: str, x: Tensor, weight: Tensor, bias: Tensor | None, geometry: Mapping[str, Any]
) -> Tensor:
    """Run a layer of ``kind`` (``"linear"``, ``"conv1d"``, ``"conv2d"``) functionally.

    ``geometry`` holds the convolution arguments (``stride``, ``padding`` (numbers, ``"same"`` or
    ``"valid"``), ``dilation``, ``groups``, ``padding_mode``, every mode honoured); Linear layers
    ignore it.
    """
    return LAYER_KINDS.get(kind).forward(x, weight, bias, geometry)


def geometry_repr(
    in_features: int, out_features: int, weight_shape: tuple[int, ...], geometry: Mapping[str, Any]
) -> str:
    """The sizes and convolution arguments of a layer as its ``repr`` shows them."""
    if not geometry:
        return f"in_features={in_features}, out_features={out_features}"
    groups = geometry["groups"]
    out = (
        f"{weight_shape[1] * groups}, {out_features}, kernel_size={tuple(weight_shape[2:])}, "
        f"stride={geometry['stride']}, padding={geometry['padding']}"
    )
    return out + (f", groups={groups}" if groups != 1 else "")


def describe(module: nn.Module) -> str:
    """``"Linear 16->32"``, ``"Conv2d 3->8"``: a float layer's type and sizes, for messages."""
    k = kind_of(module)
    return k.describe(module) if k is not None else type(module).__name__


def reversed_padding(
    padding: tuple[int, ...] | str, kernel_size: tuple[int, ...], dilation: tuple[int, ...]
) -> list[int]:
    """The padding as ``F.pad`` takes it (last dimension first, both sides), as ``nn.Conv`` does for
    non-zero padding modes (``"same"`` puts the odd element on the right)."""
    if isinstance(padding, str):
        out = [0, 0] * len(kernel_size)
        if padding == "same":
            for d, k, i in zip(dilation, kernel_size, range(len(kernel_size) - 1, -1, -1)):
                total = d * (k - 1)
                out[2 * i] = total // 2
                out[2 * i + 1] = total - total // 2
        return out
    return [int(p) for p in reversed(padding) for _ in range(2)]


def conv_padding(
    padding: tuple[int, ...] | str, kernel_size: tuple[int, ...], dilation: tuple[int, ...]
) -> tuple[int, ...] | None:
    """Numeric symmetric padding (``"same"``/``"valid"`` resolved), or ``None`` if it is asymmetric."""
    if not isinstance(padding, str):
        return tuple(padding)
    if padding == "valid":
        return tuple(0 for _ in dilation)
    out = []
    for d, k in zip(dilation, kernel_size):
        total = d * (k - 1)
        if total % 2:
            return None
        out.append(total // 2)
    return tuple(out)
