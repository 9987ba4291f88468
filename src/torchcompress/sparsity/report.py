"""``tc.sparsity_report``: how sparse each layer really is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..layers import layer_kind
from ..select import matches
from .costs import describe_structure
from .masking import get_mask, original

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report"]


@dataclass
class LayerSparsity:
    """Sparsity of one layer's weight.

    Attributes:
        name: qualified module name.
        type: module class (``Linear``, ``Conv2d``, ...).
        shape: weight shape as stored.
        params: weight elements.
        zeros: weight elements that are exactly zero in the forward.
        masked: whether the layer carries a pruning mask.
        structure: ``"2:4"``, ``"unstructured, fits 2:4"``, ``"channel"``, ``"unstructured"`` or
            ``"dense"``.
        zero_channels: output channels whose weights are all zero.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    params: int
    zeros: int
    masked: bool
    structure: str
    zero_channels: int

    @property
    def sparsity(self) -> float:
        """Fraction of the weight that is zero."""
        return self.zeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "name": self.name,
            "type": self.type,
            "shape": list(self.shape),
            "params": self.params,
            "zeros": self.zeros,
            "sparsity": self.sparsity,
            "masked": self.masked,
            "structure": self.structure,
            "zero_channels": self.zero_channels,
        }


@dataclass
class SparsityReport:
    """Per-layer and overall sparsity of a model (print it for a table).

    Attributes:
        layers: one :class:`LayerSparsity` per prunable or masked layer.
        model_params: every parameter element of the model (masked weights counted once).
        model_zeros: parameter elements that are exactly zero in the forward.
    """

    layers: list[LayerSparsity] = field(default_factory=list)
    model_params: int = 0
    model_zeros: int = 0

    @property
    def params(self) -> int:
        """Weight elements of the reported layers."""
        return sum(r.params for r in self.layers)

    @property
    def zeros(self) -> int:
        """Zero weight elements of the reported layers."""
        return sum(r.zeros for r in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over the reported layers' weights."""
        return self.zeros / self.params if self.params else 0.0

    @property
    def model_sparsity(self) -> float:
        """Fraction of zeros over all of the model's parameters."""
        return self.model_zeros / self.model_params if self.model_params else 0.0

    def __getitem__(self, name: str) -> LayerSparsity:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with the layers and the totals."""
        return {
            "layers": [r.to_dict() for r in self.layers],
            "params": self.params,
            "zeros": self.zeros,
            "sparsity": self.sparsity,
            "model_params": self.model_params,
            "model_zeros": self.model_zeros,
            "model_sparsity": self.model_sparsity,
        }

    def _rows(self) -> list[list[str]]:
        rows = [
            [
                r.name,
                r.type,
                "x".join(str(s) for s in r.shape),
                f"{r.params:,}",
                f"{r.params - r.zeros:,}",
                f"{r.sparsity:.2%}",
                r.structure,
                "yes" if r.masked else "no",
            ]
            for r in self.layers
        ]
        rows.append(
            [
                "total (these layers)",
                "",
                "",
                f"{self.params:,}",
                f"{self.params - self.zeros:,}",
                f"{self.sparsity:.2%}",
                "",
                "",
            ]
        )
        rows.append(
            [
                "whole model",
                "",
                "",
                f"{self.model_params:,}",
                f"{self.model_params - self.model_zeros:,}",
                f"{self.model_sparsity:.2%}",
                "",
                "",
            ]
        )
        return rows

    _HEAD = ("layer", "type", "shape", "params", "nonzero", "sparsity", "structure", "masked")

    def to_markdown(self) -> str:
        """The table in Markdown."""
        lines = [
            "| " + " | ".join(self._HEAD) + " |",
            "|" + "|".join("---" for _ in self._HEAD) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in self._rows()]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        rows = [list(self._HEAD), *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        out = []
        for i, r in enumerate(rows):
            out.append(
                "  ".join(
                    c.ljust(w) if j < 3 or j == 6 else c.rjust(w)
                    for j, (c, w) in enumerate(zip(r, widths))
                ).rstrip()
            )
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        out.append(
            "Zeros in dense kernels save no time: unstructured and N:M masks do not speed up stock "
            "kernels (2:4 can on CUDA: tc.finalize(model, semi_structured=True)); "
            "tc.prune_channels removes channels for real."
        )
        return "\n".join(out)

    def __repr__(self) -> str:
        return (
            f"SparsityReport({len(self.layers)} layers, sparsity={self.sparsity:.4f}, "
            f"model_sparsity={self.model_sparsity:.4f})"
        )


def sparsity_report(
    model: nn.Module, *, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> SparsityReport:
    """Per-layer and overall sparsity of ``model``'s prunable layers (masked or not).

    Counts the zeros the forward sees (masked weights, and zeros already baked in by
    :func:`~torchcompress.finalize`), and detects each layer's structure (2:4, whole channels).

    Args:
        model: any model.
        include: glob patterns of layers to report (default: every Linear/conv/masked layer).
        exclude: glob patterns of layers to leave out.

    Example:
        >>> import torchcompress as tc
        >>> from torch import nn
        >>> m = tc.prune(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), tc.PruneConfig(pattern="2:4"))
        >>> r = tc.sparsity_report(m)
        >>> r.sparsity, r["0"].structure
        (0.5, '2:4')
    """
    inc, exc = list(include or []), list(exclude or [])
    rep = SparsityReport()
    for name, m in model.named_modules():
        if not name:
            continue
        kind = layer_kind(m)
        mask = get_mask(m)
        if kind is None and mask is None:
            continue
        if inc and not matches(name, inc):
            continue
        if exc and matches(name, exc):
            continue
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.layout != torch.strided:
            continue
        w = w.detach()
        zeros = int((w == 0).sum())
        canon = kind.to_canonical(m, w) if kind is not None else w
        rows = canon.reshape(canon.shape[0], -1) if canon.dim() > 1 else canon.reshape(-1, 1)
        rep.layers.append(
            LayerSparsity(
                name=name,
                type=type(m).__mro__[1].__name__ if mask is not None else type(m).__name__,
                shape=tuple(w.shape),
                params=w.numel(),
                zeros=zeros,
                masked=mask is not None,
                structure=describe_structure(canon) if canon.dim() > 1 else "unstructured",
                zero_channels=int((rows == 0).all(1).sum()),
            )
        )
    seen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, parametrize.ParametrizationList):
            continue  # its "original" is counted through the module it parametrizes
        names = [n for n, p in mod._parameters.items() if p is not None]
        if parametrize.is_parametrized(mod):
            names += list(mod.parametrizations)  # type: ignore[arg-type]
        for n in names:
            t = getattr(mod, n)
            key = id(original(mod, n))
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided or key in seen:
                continue
            seen.add(key)
            rep.model_params += t.numel()
            rep.model_zeros += int((t == 0).sum())
    return rep
