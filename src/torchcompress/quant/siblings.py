"""Sibling Linear layers that read the same input share one GEMM (attention's q, k, v).

:func:`link_siblings` groups the dynamic integer Linear children of a module whose formats match;
a :class:`SiblingGroup` runs one GEMM on their concatenated weights when the first member is
called and hands the other members their slices when they are called with the very same tensor
(so the outputs are always exactly the separate layers').
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..layers import Geometry
from . import functional as QF
from .granularity import granularity
from .int_layer import IntLayer

__all__ = ["SiblingGroup", "link_siblings"]


_FUSABLE_KERNELS = ("fbgemm_dynamic", "token", "cuda_int_mm")


class SiblingGroup:
    """Linear layers of one parent that often read the same input (e.g. attention's q, k, v).

    When one member is called with a tensor, the group runs one GEMM with the members' weights
    concatenated (dynamic activations: the same activation quantization for all of them, so the
    result equals the separate calls) and keeps the other members' outputs until they are asked for
    with the very same tensor (same object, unmodified). A member called with another input runs the
    fused GEMM again, so the outputs are always the separate layers'. Only layers with dynamic
    activations and the same formats are grouped.
    """

    def __init__(self, members: list[IntLayer]) -> None:
        self.members = members
        self.fused: IntLayer | None = None
        self.bounds: list[tuple[int, int]] = []
        self._x: Tensor | None = None
        self._copy: Tensor | None = None
        self._version = -1
        self._outs: dict[int, Tensor] = {}
        self._starter = -1
        self.starts: dict[int, int] = {}  # fused runs each member started
        self.hits: dict[int, int] = {}  # outputs of those runs served to siblings

    def _build(self, device: torch.device) -> IntLayer | None:
        ref = self.members[0]
        rows = sum(m.out_channels for m in self.members)
        wfmt = dict(ref.wfmt)  # type: ignore[arg-type]
        wfmt["granularity"] = "channel"
        bias = any(m.bias is not None for m in self.members)
        fused = IntLayer(
            Geometry("linear", ref.in_features, rows, bias=bias),
            wfmt=wfmt,
            act=dict(ref.act),  # type: ignore[arg-type]
            bias_dtype=ref.bias.dtype if ref.bias is not None else torch.float32,
            device=device,
        )
        with torch.no_grad():
            q = torch.cat([m.int_weight() for m in self.members])
            fused.qweight.copy_(QF.pack_int(q, int(wfmt["bits"]), int(wfmt["qmin"])))
            fused.weight_scale.copy_(
                torch.cat(
                    [
                        m.weight_scale.float().reshape(-1).expand(m.out_channels)
                        for m in self.members
                    ]
                )
            )
            if fused.bias is not None:
                fused.bias.copy_(
                    torch.cat(
                        [
                            m.bias
                            if m.bias is not None
                            else torch.zeros(m.out_channels, device=device)
                            for m in self.members
                        ]
                    )
                )
        if fused.kernel_for(device).name not in _FUSABLE_KERNELS:
            return None
        self.bounds = []
        start = 0
        for m in self.members:
            self.bounds.append((start, start + m.out_channels))
            start += m.out_channels
        return fused

    def run(self, member: IntLayer, x: Tensor) -> Tensor | None:
        """The member's output from the fused GEMM, or ``None`` to run it alone."""
        i = next((k for k, m in enumerate(self.members) if m is member), -1)
        if (
            i < 0
            or len(self.members) < 2
            or member.kernel_for(x.device).name not in _FUSABLE_KERNELS
        ):
            return None
        if self._x is x and i in self._outs and self._unchanged(x):
            out = self._outs.pop(i)
            self.hits[self._starter] = self.hits.get(self._starter, 0) + 1
            if not self._outs:
                self._x = self._copy = None
            return out
        starter = (
            self.members[self._starter]
            if self._x is not None and self._starter < len(self.members)
            else None
        )
        if (
            starter is not None
            and self.starts.get(self._starter, 0) >= 3
            and not self.hits.get(self._starter, 0)
        ):
            # its fused runs never served a sibling (it reads another input): run it alone
            self.members = [m for m in self.members if m is not starter]
            self.fused, self._x, self._outs, self.starts, self.hits = None, None, {}, {}, {}
            if member is starter or len(self.members) < 2:
                return None
            i = self.members.index(member)
        if self.fused is None or self.fused.qweight.device != x.device:
            self.fused = self._build(x.device)
            if self.fused is None:
                self.members = []
                return None
        self.starts[i] = self.starts.get(i, 0) + 1
        self._starter = i
        y = self.fused(x)
        outs = {k: y[..., a:b].contiguous() for k, (a, b) in enumerate(self.bounds)}
        out = outs.pop(i)
        self._x, self._outs = x, outs
        if x.is_inference():  # no version counter: fingerprint a sample to detect in-place changes
            self._version, self._copy = -1, _fingerprint(x)
        else:
            self._version, self._copy = x._version, None
        return out

    def _unchanged(self, x: Tensor) -> bool:
        if self._copy is not None:
            return bool(torch.equal(_fingerprint(x), self._copy))
        return not x.is_inference() and x._version == self._version

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["fused"] = None
        state["_x"] = None
        state["_copy"] = None
        state["_outs"] = {}
        return state


def _fingerprint(x: Tensor, n: int = 4096) -> Tensor:
    """A strided sample of ``x`` (inference tensors have no version counter to check)."""
    flat = x.detach().reshape(-1)
    step = max(1, flat.numel() // n)
    return flat[::step].clone()


def _sibling_key(m: IntLayer) -> tuple[Any, ...] | None:
    a, w = m.act, m.wfmt
    if m.geometry.kernel_size:  # maps over the last dimension only
        return None
    if a is None or not a["dynamic"] or w is None or m.out is not None:
        return None
    if granularity(w["granularity"]).grouped_inputs:
        return None
    return (
        m.in_features,
        tuple(sorted(a.items())),
        w["bits"],
        w["qmin"],
        w["qmax"],
        w["symmetric"],
        m.unary,
        str(m.qweight.device),
    )


def link_siblings(parent: nn.Module) -> int:
    """Group the dynamic integer Linear children of ``parent`` that can share one GEMM.

    Returns:
        The number of layers grouped.
    """
    by_key: dict[tuple[Any, ...], list[IntLayer]] = {}
    for child in parent.children():
        if isinstance(child, IntLayer) and child.fuse_siblings:
            key = _sibling_key(child)
            if key is not None:
                by_key.setdefault(key, []).append(child)
    n = 0
    for members in by_key.values():
        group = SiblingGroup(members) if len(members) > 1 else None
        for m in members:
            object.__setattr__(m, "_siblings", group)
        n += len(members) if group else 0
    return n
