"""``tc.save``/``tc.load`` of channel-pruned models: the new shapes are part of the file.

Every module whose shapes :func:`~torchcompress.prune_channels` changed is marked; for each,
:class:`ResizedCodec` records the shapes of its own parameters and buffers and the attributes its
handler names (``out_features``, ``groups``, a head count, ...). Loading into a freshly built,
unpruned model resizes those tensors (their values come from the file's tensors right after) and
restores the attributes, so the loaded model has the pruned architecture. No pickle is involved.

A module that is also masked by ``tc.prune`` is left to the mask codec, which rebuilds plain
layers from their current shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ...errors import CompressionStateError
from ...io import ModuleCodec, register_codec
from .handlers import handler_for
from .surgery import RESIZED_ATTR

__all__ = ["ResizedCodec"]


class ResizedCodec(ModuleCodec):
    """Codec of a module resized by channel pruning (see the module docstring)."""

    name = "sparsity.structured.resized"

    def matches(self, module: nn.Module) -> bool:
        return bool(module.__dict__.get(RESIZED_ATTR)) and not parametrize.is_parametrized(module)

    def encode(self, module: nn.Module) -> dict[str, Any]:
        tensors = {
            n: list(t.shape)
            for n, t in [*module._parameters.items(), *module._buffers.items()]
            if t is not None
        }
        h = handler_for(module)
        return {
            "class": type(module).__name__,
            "tensors": tensors,
            "attributes": h.saved_attributes(module) if h is not None else {},
        }

    def decode(self, spec: dict[str, Any], current: nn.Module) -> nn.Module:
        if type(current).__name__ != spec["class"]:
            raise CompressionStateError(
                f"The file holds a pruned {spec['class']} where this model has a "
                f"{type(current).__name__}; pass a fresh model of the architecture that was saved."
            )
        for name, shape in spec["tensors"].items():
            is_param = name in current._parameters
            t = current._parameters.get(name) if is_param else current._buffers.get(name)
            if t is None:
                raise CompressionStateError(
                    f"The saved {spec['class']} has a tensor {name!r} the fresh module lacks; pass a "
                    "fresh model of the architecture that was saved."
                )
            if list(t.shape) == list(shape):
                continue
            new = torch.empty(shape, dtype=t.dtype, device=t.device)
            if is_param:
                current._parameters[name] = nn.Parameter(new, requires_grad=t.requires_grad)
            else:
                current._buffers[name] = new
        h = handler_for(current)
        if h is not None and spec.get("attributes"):
            h.restore(current, dict(spec["attributes"]))
        current.__dict__[RESIZED_ATTR] = True
        return current


register_codec(ResizedCodec())
