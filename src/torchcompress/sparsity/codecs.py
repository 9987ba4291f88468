"""``tc.save``/``tc.load`` support for masked layers.

A masked layer is described by its plain layer (so a layer resized by structured pruning is rebuilt
too) and the names of its masked tensors; loading rebuilds the layer, registers masks of the right
shape, and the strict state-dict load then fills in the originals and the masks. The codec is an
overlay (:attr:`torchcompress.io.ModuleCodec.overlay`): on a module another family's codec rebuilds
(a fake-quant layer that kept the mask of the layer it replaced), the masks are added after it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import CompressionStateError
from ..io import ModuleCodec, decode_plain, encode_plain, register_codec
from .masking import apply_mask, ensure_cost_registered, masked_tensor_names, original

__all__ = ["MaskedCodec"]


class MaskedCodec(ModuleCodec):
    """Codec for any module with pruning masks (``weight``, and ``bias`` for filter pruning)."""

    name = "sparsity.mask"
    overlay = True  # masks lie over a layer another family's codec may rebuild

    def matches(self, module: nn.Module) -> bool:
        return bool(masked_tensor_names(module))

    def encode(self, module: nn.Module) -> dict[str, Any]:
        try:
            layer: dict[str, Any] | None = encode_plain(module)
        except TypeError:  # not a plain layer (e.g. HF Conv1D): the fresh model's module is reused
            layer = None
        return {
            "layer": layer,
            "class": type(module).__mro__[1].__name__,
            "masked": {n: list(original(module, n).shape) for n in masked_tensor_names(module)},
        }

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        module = decode_plain(spec["layer"], current) if spec.get("layer") else current
        for name, shape in spec["masked"].items():
            t = original(module, name) if hasattr(module, name) else None
            if not isinstance(t, torch.Tensor) or list(t.shape) != list(shape):
                raise CompressionStateError(
                    f"The saved mask of {name!r} has shape {shape}, but the fresh "
                    f"{type(module).__name__} has "
                    f"{None if t is None else list(t.shape)}; pass a fresh model of the saved "
                    "architecture."
                )
            apply_mask(module, name, torch.ones(shape, dtype=torch.bool, device=t.device))
        return module

    def after_load(self, module: nn.Module) -> None:
        ensure_cost_registered(module)


register_codec(MaskedCodec())
