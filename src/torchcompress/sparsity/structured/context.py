"""What module handlers and op rules see while the dependency graph is built: :class:`Context`.

A :class:`Context` wraps the :class:`~torchcompress.sparsity.structured.graph.ChannelGraph` with the
labels of the tensors of the recorded forward (dimension -> ids), and knows which tensors are
parameters or buffers of the model (their dimensions are bound to ids under their qualified names).

Example:
    >>> import torch
    >>> from torch import nn
    >>> ctx = Context(nn.Linear(2, 3))
    >>> x = torch.zeros(4, 3)
    >>> ctx.set_labels(x, {1: ctx.graph.fresh(3)})
    >>> ctx.label(x, -1).tolist(), ctx.label(x, 0)
    ([0, 1, 2], None)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor, nn

from .graph import ChannelGraph, Ids

__all__ = ["Context", "Labels"]

#: dimension (non-negative) -> ids along it
Labels = dict[int, Ids]


class Context:
    """Tensor labels of one recorded forward, on top of a :class:`ChannelGraph`.

    Args:
        model: the model being recorded (its parameters and buffers get keys).

    Attributes:
        graph: the channel graph.
        where: the module running the current op or handler (for reasons in messages).
        produced: ids created since :meth:`start_call` (a protected module's units are fixed).
    """

    def __init__(self, model: nn.Module) -> None:
        self.graph = ChannelGraph()
        self.where = ""
        self._labels: dict[int, tuple[Tensor, Labels]] = {}
        self._names: dict[int, tuple[Tensor, str]] = {}
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            self._names.setdefault(id(t), (t, name))
        self._mark = 0
        self.costs: list[tuple[int, list[Ids]]] = []

    # -- parameters ------------------------------------------------------------------------------
    def param_name(self, t: Any) -> str | None:
        """The qualified name of ``t`` if it is a parameter or buffer of the model."""
        entry = self._names.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def key(self, module: nn.Module, name: str, attr: str) -> str:
        """The key of ``module.<attr>`` (qualified ``name``): a tensor's name in the model (tied
        tensors have one), else ``"name.attr"`` (``"name#attr"`` for pseudo-attributes)."""
        if attr.startswith("#"):
            return f"{name}{attr}"
        found = self.param_name(getattr(module, attr, None))
        if found is not None:
            return found
        return f"{name}.{attr}" if name else attr

    # -- labels ------------------------------------------------------------------------------------
    def labels(self, t: Any) -> Labels:
        """The labels of tensor ``t`` (for a parameter or buffer: its bound or passive ids)."""
        if not isinstance(t, Tensor):
            return {}
        name = self.param_name(t)
        if name is not None:
            return {
                d: self.graph.passive(name, d, int(n)) for d, n in enumerate(t.shape) if int(n) > 1
            }
        entry = self._labels.get(id(t))
        if entry is None or entry[0] is not t:
            return {}
        return dict(entry[1])

    def label(self, t: Any, dim: int) -> Ids | None:
        """The ids along ``dim`` of ``t`` (negative dims count from the end), or ``None``."""
        if not isinstance(t, Tensor) or t.dim() == 0:
            return None
        d = dim % t.dim()
        return self.labels(t).get(d)

    def set_labels(self, t: Any, labels: Labels) -> None:
        """Give tensor ``t`` these labels (dims may be negative); parameters keep their bindings."""
        if not isinstance(t, Tensor) or self.param_name(t) is not None:
            return
        nd = t.dim()
        clean: Labels = {}
        for d, ids in labels.items():
            if ids is None or nd == 0:
                continue
            d = d % nd
            if len(ids) != t.shape[d]:
                raise ValueError(
                    f"label of {len(ids)} ids for dimension {d} of size {t.shape[d]} ({self.where})"
                )
            clean[d] = np.asarray(ids, dtype=np.int64)
        if clean:
            self._labels[id(t)] = (t, clean)
        else:
            self._labels.pop(id(t), None)

    def set_label(self, t: Any, dim: int, ids: Ids | None) -> None:
        """Set the ids of one dimension of ``t`` (``None``: no label there)."""
        if not isinstance(t, Tensor) or t.dim() == 0:
            return
        labels = self.labels(t) if self.param_name(t) is None else {}
        d = dim % t.dim()
        if ids is None:
            labels.pop(d, None)
        else:
            labels[d] = ids
        self.set_labels(t, labels)

    def labeled(self, tensors: list[Any]) -> list[Ids]:
        """Every label of the given tensors (for fixing what an unknown op touches)."""
        out: list[Ids] = []
        for t in tensors:
            if isinstance(t, Tensor) and self.param_name(t) is None:
                out.extend(self.labels(t).values())
            elif isinstance(t, Tensor):
                name = self.param_name(t)
                out.extend(
                    ids
                    for d in range(t.dim())
                    if (ids := self.graph.bound(name, d)) is not None  # type: ignore[arg-type]
                )
        return out

    # -- protected modules -----------------------------------------------------------------------
    def start_call(self) -> None:
        """Remember where the ids created by the next handler call start."""
        self._mark = len(self.graph)

    def produced(self) -> Ids:
        """The ids created since :meth:`start_call`."""
        return np.arange(self._mark, len(self.graph), dtype=np.int64)

    # -- costs -----------------------------------------------------------------------------------
    def add_cost(self, macs: int, factors: list[Ids]) -> None:
        """Record ``macs`` that scale with the kept fraction of each of ``factors``."""
        if macs:
            self.costs.append((int(macs), [f for f in factors if f is not None]))

    # -- shorthands ------------------------------------------------------------------------------
    def reason(self, what: str) -> str:
        """``what`` with the current module, for fixed-id reasons."""
        return f"{what} (in {self.where!r})" if self.where else f"{what} (in the model's forward)"
