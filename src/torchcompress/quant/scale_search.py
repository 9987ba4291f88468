"""Ranking candidate input scales by the block's output error (AWQ and SmoothQuant).

A candidate scale ``s`` of a group of layers reading one tensor is tried by putting a :class:`Trial`
in place of each layer: ``x -> act(x / s) -> (Q(W s))^T`` with the group's weights fake-quantized
as the target format will quantize them (``Q``: :func:`fake_weight`) and, for W8A8, the scaled
input fake-quantized (:func:`static_activation` or :func:`dynamic_activation`). The block then runs
on its calibration inputs and :func:`output_error` compares its outputs with the float block's. The
identity scale is always a candidate, so a method never picks a scale that does worse than none.

Example:
    >>> import torch
    >>> from torchcompress.quant import IntSpec, QuantConfig
    >>> from torchcompress.quant.scale_search import fake_weight
    >>> w = torch.tensor([[0.5, -1.0, 0.25, 0.1]])
    >>> fake_weight(w, QuantConfig(weight=IntSpec(4), activation=None), (-8, 7)).tolist()
    [[0.5, -1.0, 0.25, 0.125]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..calibration import Block
from ..errors import ConfigError
from ..layers import Geometry, forward, layer_kind, stored_weight
from . import functional as QF
from .blockwise import relative_error
from .spec import IntSpec, QuantConfig

__all__ = [
    "Trial",
    "dynamic_activation",
    "fake_weight",
    "output_error",
    "static_activation",
    "trial_of",
]

Act = Callable[[Tensor], Tensor]


def fake_weight(
    w2d: Tensor, config: QuantConfig, wrange: tuple[int, int], name: str = ""
) -> Tensor:
    """``w2d`` (``(out, n)``) fake-quantized as ``config.weight`` with its weight observer.

    Raises:
        ConfigError: the group size does not divide ``n``.
    """
    spec = config.weight
    if spec is None:
        return w2d
    rows, cols = w2d.shape
    if spec.group_size is not None and cols % spec.group_size:
        raise ConfigError(
            f"IntSpec.group_size={spec.group_size} does not divide the {cols} inputs of "
            f"{name or 'a layer'}. Pick a divisor of {cols}, or exclude the layer."
        )
    qmin, qmax = wrange
    obs = config.weight_observer_spec.build(qmin, qmax, symmetric=spec.symmetric, exact=True)
    obs.observe(QF.to_groups(w2d.detach().float(), spec.granularity, spec.group_size))
    s, z = obs.qparams()
    shape = QF.qparam_shape(rows, cols, spec.granularity, spec.group_size)
    out = QF.fake_quantize_weight(
        w2d.float(),
        s.reshape(shape),
        z.reshape(shape),
        qmin,
        qmax,
        spec.granularity,
        spec.group_size,
    )
    return out.to(w2d.dtype)


def static_activation(
    lo: Tensor, hi: Tensor, inv_scale: Tensor, spec: IntSpec, arange: tuple[int, int]
) -> Act:
    """Per-tensor static fake quantization of ``x * inv_scale`` for inputs whose channels ranged
    over ``[lo, hi]`` (per channel) in calibration: the min/max range of the scaled input."""
    lo_s = (lo.double() * inv_scale.double()).min()
    hi_s = (hi.double() * inv_scale.double()).max()
    s, z = QF.choose_qparams(
        lo_s, hi_s, arange[0], arange[1], symmetric=spec.symmetric, include_zero=True
    )
    s, z = s.reshape(1), z.reshape(1)

    def act(x: Tensor) -> Tensor:
        return QF.fake_quantize(x, s.to(x.device), z.to(x.device), arange[0], arange[1])

    return act


def dynamic_activation(spec: IntSpec, arange: tuple[int, int]) -> Act:
    """Dynamic fake quantization (ranges from each input), as ``mode="dynamic"`` runs it."""

    def act(x: Tensor) -> Tensor:
        s, z = QF.dynamic_qparams(
            x, spec.granularity, arange[0], arange[1], symmetric=spec.symmetric
        )
        return QF.fake_quantize(x, s, z, arange[0], arange[1])

    return act


class Trial(nn.Module):
    """A stand-in for a Linear-like layer while a scale is tried: ``act(x * inv) @ weight^T + bias``.

    Args:
        geometry: the layer's geometry.
        weight: the canonical weight to use (already scaled and fake-quantized).
        bias: the bias.
        inv_scale: ``1 / s`` per input channel (``None``: unscaled).
        act: fake quantization of the (scaled) input (``None``: float).
    """

    def __init__(
        self,
        geometry: Geometry,
        weight: Tensor,
        bias: Tensor | None,
        inv_scale: Tensor | None,
        act: Act | None,
    ) -> None:
        super().__init__()
        self.geometry = geometry
        self.weight = weight
        self.bias = bias
        self.inv_scale = inv_scale
        self.act = act

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.inv_scale is not None:
            x = x * self.inv_scale.to(x.dtype)
        if self.act is not None:
            x = self.act(x)
        return forward(self.geometry, x, self.weight.to(x.dtype), self.bias)


def trial_of(
    module: nn.Module,
    scale: Tensor | None,
    config: QuantConfig | None,
    wrange: tuple[int, int] | None,
    act: Act | None = None,
    name: str = "",
) -> Trial:
    """A :class:`Trial` for ``module`` with input scale ``scale`` (``None``: identity) and its
    weights fake-quantized as ``config`` (``None``: float)."""
    kind = layer_kind(module)
    if kind is None:
        raise ConfigError(f"{name or type(module).__name__} is not a weight layer.")
    geo = kind.geometry(module)
    w = kind.to_canonical(module, module.weight).detach()  # type: ignore[arg-type]
    if scale is not None:
        w = w * scale.to(w).reshape(1, -1)
    if config is not None and wrange is not None:
        w = fake_weight(w.reshape(geo.out_features, geo.n), config, wrange, name).reshape(w.shape)
    bias = getattr(module, "bias", None)
    inv = None if scale is None else (1.0 / scale).to(stored_weight(module))
    return Trial(geo, w, bias.detach() if isinstance(bias, Tensor) else None, inv, act)


def output_error(block: Block, reference: Sequence[Tensor]) -> float:
    """The block's relative output error on its inputs against ``reference`` (float outputs)."""
    with torch.no_grad():
        return relative_error(block.run(), reference)
