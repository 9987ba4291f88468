"""Typed specs of an integer format (:class:`IntSpec`) and of a quantization recipe (:class:`QuantConfig`).

Both are frozen, validated dataclasses (see :mod:`torchcompress.config`), so they round-trip through
``to_dict()`` / ``from_dict()`` and through the JSON that :func:`torchcompress.save` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config
from ..errors import ConfigError, check_choice, check_range

__all__ = ["GRANULARITIES", "MODES", "REDUCE_RANGE", "IntSpec", "QuantConfig"]

#: Where one scale (and zero point) applies: the whole tensor, one output channel (row of the
#: weight), a group of ``group_size`` consecutive input elements of one row, or one token (the last
#: dimension of an activation, computed at run time).
GRANULARITIES = ("tensor", "channel", "group", "token")
MODES = ("static", "dynamic")
#: How to keep int8 kernels exact on CPUs whose int8 instructions saturate (AVX2 without VNNI).
REDUCE_RANGE = ("auto", "weight", "activation", "none")


@dataclass(frozen=True)
class IntSpec(Config):
    """An affine integer format: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``.

    The integer range is the full range of the bit width: ``[-2^(b-1), 2^(b-1) - 1]`` when signed,
    ``[0, 2^b - 1]`` when unsigned. How a real range ``[lo, hi]`` maps onto it:

    - symmetric, signed: ``zero_point = 0``, ``scale = max(|lo| / -qmin, hi / qmax)``, the finest
      step that clips neither end (``-max|x|`` lands on ``qmin`` or ``+max|x|`` on ``qmax``);
    - symmetric, unsigned: for one-sided data (``lo >= 0``, e.g. after a ReLU) ``zero_point = 0``
      and ``scale = hi / qmax``, so ``[0, hi]`` uses all ``2^b`` levels; for two-sided data the zero
      point sits in the middle of the range (``2^(b-1)``);
    - asymmetric: ``scale = (hi - lo) / (qmax - qmin)`` and ``zero_point = qmin - round(lo / scale)``,
      so ``[lo, hi]`` covers the whole integer range even when it excludes zero (the zero point then
      lies outside ``[qmin, qmax]`` and is stored as int32). Activation quantizers widen their range
      to include zero, because integer kernels pad with the zero point.

    A zero scale never divides: scales are floored at a tiny positive value.

    Args:
        bits: 2 to 8, or 16.
        symmetric: a zero point fixed at zero (or mid-range for unsigned two-sided data).
        signed: signed or unsigned integers.
        granularity: ``"tensor"``, ``"channel"`` (one scale per output channel of a weight),
            ``"group"`` (one scale per ``group_size`` consecutive elements along the input dimension of
            each output channel; for a convolution the input dimension is
            ``in_channels / groups * kernel elements``, flattened in PyTorch's order), or ``"token"``
            (activations only: one scale per token, i.e. per row of the last dimension, computed at
            run time).
        group_size: elements per group (``granularity="group"`` only).

    Example:
        >>> import torchcompress as tc
        >>> tc.IntSpec(bits=4, granularity="group", group_size=64).qmin
        -8
        >>> tc.IntSpec(bits=8, signed=False).qmax
        255
    """

    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    granularity: str = "tensor"
    group_size: int | None = None

    def validate(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ConfigError(f"IntSpec.bits must be an int, got {self.bits!r}.")
        if not (2 <= self.bits <= 8 or self.bits == 16):
            raise ConfigError(f"IntSpec.bits={self.bits} is not supported; use 2 to 8 bits, or 16.")
        for f in ("symmetric", "signed"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(f"IntSpec.{f} must be True or False, got {getattr(self, f)!r}.")
        check_choice("granularity", self.granularity, GRANULARITIES, owner="IntSpec")
        if self.granularity == "group":
            if self.group_size is None:
                raise ConfigError(
                    "IntSpec(granularity='group') needs group_size (e.g. 32, 64 or 128)."
                )
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int):
                raise ConfigError(f"IntSpec.group_size must be an int, got {self.group_size!r}.")
            check_range("group_size", self.group_size, 1, owner="IntSpec")
        elif self.group_size is not None:
            raise ConfigError(
                f"IntSpec.group_size={self.group_size} only applies to granularity='group' "
                f"(granularity is {self.granularity!r})."
            )

    @property
    def qmin(self) -> int:
        """Smallest integer of the full range."""
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest integer of the full range."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def short(self) -> str:
        """A compact description, e.g. ``"int8 sym per-channel"``."""
        kind = "int" if self.signed else "uint"
        gran = {
            "tensor": "per-tensor",
            "channel": "per-channel",
            "group": f"group {self.group_size}",
            "token": "per-token",
        }[self.granularity]
        return f"{kind}{self.bits} {'sym' if self.symmetric else 'asym'} {gran}"


def _default_weight() -> IntSpec:
    return IntSpec(bits=8, symmetric=True, signed=True, granularity="channel")


def _default_activation() -> IntSpec:
    return IntSpec(bits=8, symmetric=False, signed=False, granularity="tensor")


@dataclass(frozen=True)
class QuantConfig(Config):
    """A post-training quantization recipe: what to quantize, to which format, and how ranges are set.

    Args:
        weight: the weight format (``None``: weights stay float). Default: int8, symmetric,
            per output channel.
        activation: the format of each quantized layer's input (``None``: weight-only quantization).
            Default: uint8 asymmetric per tensor, the format the CPU int8 kernels consume.
        observer: the range estimator, for activations and (unless ``weight_observer`` is given)
            weights: ``"minmax"``, ``"moving_minmax"``, ``"percentile"``, ``"mse"``, ``"kl"``,
            ``"sawb"`` (see :mod:`torchcompress.quant.observers`; more can be registered). In
            ``mode="dynamic"`` activation ranges are the min/max of each batch (what the kernels
            compute), so ``observer`` only sets the weights' ranges.
        weight_observer: the range estimator of the weights, when it should differ from ``observer``.
        mode: ``"static"`` (activation ranges calibrated offline from ``calib_data``) or
            ``"dynamic"`` (computed from each input at run time).
        percentile: for the ``"percentile"`` observer, the percentile of the values (of ``|x|`` for
            symmetric formats) kept inside the range, in ``(0, 100]``.
        averaging_constant: for ``"moving_minmax"``, the weight of each new batch.
        bins: histogram bins of the histogram-based observers (``percentile``, ``mse``, ``kl``).
        reduce_range: how to keep 8-bit integer kernels exact on CPUs where they saturate. The int8
            instructions of AVX2 CPUs without VNNI add pairs of u8·s8 products in int16 with
            saturation, so full-range 8-bit weights with full-range 8-bit activations can be wrong by
            many steps. ``"auto"`` (default) detects the CPU and, where needed, restricts 8-bit
            weights that will run on those kernels to 7 bits (``[-64, 63]``); ``"weight"`` and
            ``"activation"`` always restrict that operand; ``"none"`` never does (the converted model
            then falls back to exact dequantized execution on such CPUs). The fake-quant model
            simulates the range chosen, so it promises what the converted model does.

    Example:
        >>> import torchcompress as tc
        >>> cfg = tc.QuantConfig(mode="dynamic")
        >>> cfg.weight.short(), cfg.activation.short()
        ('int8 sym per-channel', 'uint8 asym per-tensor')
        >>> tc.QuantConfig(weight=tc.IntSpec(4, granularity="group", group_size=32), activation=None)
        ... # doctest: +ELLIPSIS
        QuantConfig(weight=IntSpec(bits=4, ...), activation=None, ...)
    """

    weight: IntSpec | None = field(default_factory=_default_weight)
    activation: IntSpec | None = field(default_factory=_default_activation)
    observer: str = "minmax"
    weight_observer: str | None = None
    mode: str = "static"
    percentile: float = 99.99
    averaging_constant: float = 0.01
    bins: int = 2048
    reduce_range: str = "auto"

    def validate(self) -> None:
        from .observers import OBSERVERS

        for f in ("weight", "activation"):
            v = getattr(self, f)
            if v is not None and not isinstance(v, IntSpec):
                raise ConfigError(
                    f"QuantConfig.{f} must be an IntSpec or None, got {type(v).__name__}."
                )
        if self.weight is None and self.activation is None:
            raise ConfigError(
                "QuantConfig has neither weight nor activation quantization; set at least one."
            )
        check_choice("mode", self.mode, MODES, owner="QuantConfig")
        check_choice("reduce_range", self.reduce_range, REDUCE_RANGE, owner="QuantConfig")
        OBSERVERS.get(self.observer)  # raises ConfigError listing the registered names
        if self.weight_observer is not None:
            OBSERVERS.get(self.weight_observer)
        check_range(
            "percentile", self.percentile, 0.0, 100.0, low_inclusive=False, owner="QuantConfig"
        )
        check_range(
            "averaging_constant",
            self.averaging_constant,
            0.0,
            1.0,
            low_inclusive=False,
            owner="QuantConfig",
        )
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 16:
            raise ConfigError(f"QuantConfig.bins must be an int >= 16, got {self.bins!r}.")
        if self.weight is not None and self.weight.granularity == "token":
            raise ConfigError(
                "QuantConfig.weight cannot use granularity='token'; use 'tensor', 'channel' or 'group'."
            )
        a = self.activation
        if a is not None:
            if a.granularity in ("channel", "group"):
                raise ConfigError(
                    f"QuantConfig.activation granularity={a.granularity!r} has no integer kernel "
                    "(a scale per input channel cannot be factored out of the matmul). Use 'tensor', "
                    "or 'token' with mode='dynamic'; to handle outlier channels, keep the layer in "
                    "float (exclude=) or use weight-only quantization."
                )
            if a.granularity == "token" and self.mode != "dynamic":
                raise ConfigError(
                    "QuantConfig.activation granularity='token' needs mode='dynamic' (token scales "
                    "are computed from each input at run time)."
                )

    @property
    def weight_observer_name(self) -> str:
        """The observer used for weights."""
        return self.weight_observer or self.observer

    @property
    def observer_options(self) -> dict[str, float | int]:
        """Keyword options passed to every observer."""
        return {
            "percentile": self.percentile,
            "averaging_constant": self.averaging_constant,
            "bins": self.bins,
        }
