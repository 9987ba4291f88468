"""Where one scale (and zero point) applies: one small strategy object per granularity.

A :class:`Granularity` knows, for its way of sharing scales, the shape of a weight's scales, the
``[groups, elements]`` view an observer sees, how stored scales broadcast against the weight, how
many elements share one scale, and (for activations) how a dynamic quantizer computes scales at run
time. Everything that used to compare ``granularity == "..."`` asks the strategy instead.

Registered (:data:`GRANULARITY`): ``"tensor"`` (one scale), ``"channel"`` (one per output channel,
i.e. per row of the canonical 2-D weight), ``"group"`` (one per ``group_size`` consecutive inputs of
a row) and ``"token"`` (activations only: one per row of the last dimension, computed at run time).

Example:
    >>> import torch
    >>> from torchcompress.quant.granularity import granularity
    >>> g = granularity("group")
    >>> g.qparam_shape(4, 8, group_size=2)
    (4, 4)
    >>> g.to_groups(torch.zeros(4, 8), 2).shape
    torch.Size([16, 2])
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ShapeError
from ..registry import Registry

__all__ = ["GRANULARITY", "Granularity", "granularity"]


class Granularity:
    """How scales are shared. Subclass it and add an instance to :data:`GRANULARITY`.

    Attributes:
        name: the ``IntSpec.granularity`` string.
        weights: usable for weights (a fixed scale shape per weight).
        static_activations: usable for calibrated (static) activations.
        dynamic_activations: usable for activations quantized from each input at run time.
        grouped_inputs: scales apply to groups of ``group_size`` inputs (needs ``group_size``).
    """

    name: ClassVar[str] = ""
    grouped_inputs: ClassVar[bool] = False
    weights: ClassVar[bool] = True
    static_activations: ClassVar[bool] = False
    dynamic_activations: ClassVar[bool] = False

    def qparam_shape(self, rows: int, cols: int, group_size: int | None = None) -> tuple[int, ...]:
        """Shape of the scales of a ``[rows, cols]`` weight."""
        raise ShapeError(f"granularity {self.name!r} has no fixed scale shape for weights.")

    def to_groups(self, w2d: Tensor, group_size: int | None = None) -> Tensor:
        """A ``[groups, elements]`` view of a ``[rows, cols]`` weight (one row per scale)."""
        raise ShapeError(f"granularity {self.name!r} does not apply to weights.")

    def expand(self, p: Tensor) -> Tensor:
        """Stored scales/zero points reshaped to broadcast against :meth:`grouped` weights."""
        return p.reshape(-1, 1)

    def grouped(self, w2d: Tensor, group_size: int | None = None) -> Tensor:
        """The weight shaped so that :meth:`expand` ed parameters broadcast against it."""
        return w2d

    def elements_per_scale(self, rows: int, cols: int, group_size: int | None = None) -> int:
        """How many weight elements share one scale (LSQ's ``N``)."""
        raise ShapeError(f"granularity {self.name!r} does not apply to weights.")

    def dynamic_range(self, x: Tensor, *, symmetric_signed: bool) -> tuple[Tensor, Tensor]:
        """The real range ``(lo, hi)`` a dynamic activation quantizer reads from ``x`` itself.

        Shaped to broadcast against ``x`` (``[1]`` for one scale, ``[..., 1]`` per token);
        :func:`~torchcompress.quant.functional.dynamic_qparams` turns it into scales.
        """
        raise ShapeError(f"granularity {self.name!r} has no dynamic activation scales.")

    def short(self, group_size: int | None = None) -> str:
        """A compact description (``"per-channel"``, ``"group 32"``)."""
        return f"per-{self.name}"


class _Tensor(Granularity):
    name = "tensor"
    static_activations = True
    dynamic_activations = True

    def qparam_shape(self, rows: int, cols: int, group_size: int | None = None) -> tuple[int, ...]:
        return (1,)

    def to_groups(self, w2d: Tensor, group_size: int | None = None) -> Tensor:
        return w2d.reshape(1, -1)

    def expand(self, p: Tensor) -> Tensor:
        return p.reshape(1, 1)

    def elements_per_scale(self, rows: int, cols: int, group_size: int | None = None) -> int:
        return rows * cols

    def dynamic_range(self, x: Tensor, *, symmetric_signed: bool) -> tuple[Tensor, Tensor]:
        # the min/max of the whole tensor, as fbgemm's dynamic kernels compute it
        lo, hi = torch.aminmax(x.detach())
        return lo.reshape(1), hi.reshape(1)


class _Channel(Granularity):
    name = "channel"

    def qparam_shape(self, rows: int, cols: int, group_size: int | None = None) -> tuple[int, ...]:
        return (rows,)

    def to_groups(self, w2d: Tensor, group_size: int | None = None) -> Tensor:
        return w2d

    def elements_per_scale(self, rows: int, cols: int, group_size: int | None = None) -> int:
        return cols


class _Group(Granularity):
    name = "group"
    grouped_inputs = True

    def qparam_shape(self, rows: int, cols: int, group_size: int | None = None) -> tuple[int, ...]:
        if group_size is None or cols % group_size:
            raise ShapeError(f"group_size={group_size} does not divide the input dimension {cols}.")
        return (rows, cols // group_size)

    def to_groups(self, w2d: Tensor, group_size: int | None = None) -> Tensor:
        self.qparam_shape(*w2d.shape, group_size)
        return w2d.reshape(-1, group_size)  # type: ignore[arg-type]

    def expand(self, p: Tensor) -> Tensor:
        return p.unsqueeze(-1)

    def grouped(self, w2d: Tensor, group_size: int | None = None) -> Tensor:
        rows, cols = w2d.shape
        return w2d.reshape(rows, cols // group_size, group_size)  # type: ignore[operator]

    def elements_per_scale(self, rows: int, cols: int, group_size: int | None = None) -> int:
        return int(group_size)  # type: ignore[arg-type]

    def short(self, group_size: int | None = None) -> str:
        return f"group {group_size}"


class _Token(Granularity):
    name = "token"
    weights = False
    dynamic_activations = True

    def dynamic_range(self, x: Tensor, *, symmetric_signed: bool) -> tuple[Tensor, Tensor]:
        lo, hi = torch.aminmax(x.detach().float(), dim=-1, keepdim=True)
        if symmetric_signed:  # one scale per token from its largest magnitude
            a = torch.maximum(lo.abs(), hi.abs())
            lo, hi = -a, a
        return lo, hi


#: name -> :class:`Granularity`
GRANULARITY: Registry[Granularity] = Registry("granularity")
for _g in (_Tensor(), _Channel(), _Group(), _Token()):
    GRANULARITY.add(_g.name, _g)


def granularity(name: str) -> Granularity:
    """The registered :class:`Granularity` called ``name``.

    Raises:
        ConfigError: no such granularity (the message lists the registered ones).
    """
    return GRANULARITY.get(name)
