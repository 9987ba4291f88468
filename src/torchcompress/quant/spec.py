"""Typed specs of an integer format (:class:`IntSpec`) and of a quantization recipe (:class:`QuantConfig`).

Both are frozen, validated dataclasses (see :mod:`torchcompress.config`), so they round-trip through
``to_dict()`` / ``from_dict()`` and through the JSON that :func:`torchcompress.save` writes. A
config names its observers by their typed specs (:mod:`~torchcompress.quant.observers`), which
serialise with their options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import ConfigError, check_choice, check_range
from .granularity import GRANULARITY, granularity
from .observers import OBSERVERS, ObserverSpec, observer_spec

__all__ = [
    "GRANULARITIES",
    "MODES",
    "OBSERVER_OPTIONS",
    "REDUCE_RANGE",
    "IntSpec",
    "QuantConfig",
]

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
        check_choice("granularity", self.granularity, GRANULARITY.names(), owner="IntSpec")
        if granularity(self.granularity).grouped_inputs:
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
        gran = granularity(self.granularity).short(self.group_size)
        return f"{kind}{self.bits} {'sym' if self.symmetric else 'asym'} {gran}"


#: The int8 formats of the default recipe (frozen, so shared safely as defaults).
_W8 = IntSpec(bits=8, symmetric=True, signed=True, granularity="channel")
_A8 = IntSpec(bits=8, symmetric=False, signed=False, granularity="tensor")

#: Keyword options of :class:`QuantConfig` from before observer specs existed: each goes to the
#: spec of every observer of the config that takes it.
OBSERVER_OPTIONS = ("percentile", "averaging_constant", "bins")


@dataclass(frozen=True, init=False)
class QuantConfig(Config):
    """A post-training quantization recipe: what to quantize, to which format, and how ranges are set.

    Args:
        weight: the weight format (``None``: weights stay float). Default: int8, symmetric,
            per output channel.
        activation: the format of each quantized layer's input (``None``: weight-only quantization).
            Default: uint8 asymmetric per tensor, the format the CPU int8 kernels consume.
        observer: the range estimator, for activations and (unless ``weight_observer`` is given)
            weights: a registered name (``"minmax"``, ``"moving_minmax"``, ``"percentile"``,
            ``"mse"``, ``"kl"``, ``"sawb"``, see :mod:`torchcompress.quant.observers`; more can be
            registered) or its typed spec with options (``tc.quant.Percentile(99.9)``,
            ``tc.quant.MovingMinMax(averaging_constant=0.1)``, ``tc.quant.KL(bins=512)``). A name
            is stored as its spec with default options. In ``mode="dynamic"`` activation ranges are
            the min/max of each batch (what the kernels compute), so ``observer`` only sets the
            weights' ranges.
        weight_observer: the range estimator of the weights, when it should differ from ``observer``.
        mode: ``"static"`` (activation ranges calibrated offline from ``calib_data``) or
            ``"dynamic"`` (computed from each input at run time).
        percentile: shorthand for the ``percentile`` option of the observers that take it
            (``observer="percentile", percentile=99.9`` is ``observer=Percentile(99.9)``).
        averaging_constant: shorthand for the option of ``"moving_minmax"``.
        bins: shorthand for the histogram bins of ``percentile``, ``mse`` and ``kl``.
        reduce_range: how to keep 8-bit integer kernels exact on CPUs where they saturate. The int8
            instructions of AVX2 CPUs without VNNI add pairs of u8·s8 products in int16 with
            saturation, so full-range 8-bit weights with full-range 8-bit activations can be wrong by
            many steps. ``"auto"`` (default) detects the CPU and, where needed, restricts 8-bit
            weights that will run on those kernels to 7 bits (``[-64, 63]``); ``"weight"`` and
            ``"activation"`` always restrict that operand; ``"none"`` never does (the converted model
            then falls back to exact dequantized execution on such CPUs). The fake-quant model
            simulates the range chosen, so it promises what the converted model does.

    Raises:
        ConfigError: a bad field, an unknown observer, or a shorthand option that none of the
            config's observers takes (or that its spec already sets).

    Example:
        >>> import torchcompress as tc
        >>> cfg = tc.QuantConfig(mode="dynamic")
        >>> cfg.weight.short(), cfg.activation.short()
        ('int8 sym per-channel', 'uint8 asym per-tensor')
        >>> tc.QuantConfig(weight=tc.IntSpec(4, granularity="group", group_size=32), activation=None)
        ... # doctest: +ELLIPSIS
        QuantConfig(weight=IntSpec(bits=4, ...), activation=None, ...)
        >>> tc.QuantConfig(observer="percentile", percentile=99.9).observer
        Percentile(percentile=99.9, bins=2048)
    """

    weight: IntSpec | None = field(default=_W8)
    activation: IntSpec | None = field(default=_A8)
    observer: str | ObserverSpec = "minmax"
    weight_observer: str | ObserverSpec | None = None
    mode: str = "static"
    reduce_range: str = "auto"

    def __init__(
        self,
        weight: IntSpec | None = _W8,
        activation: IntSpec | None = _A8,
        observer: str | ObserverSpec = "minmax",
        weight_observer: str | ObserverSpec | None = None,
        mode: str = "static",
        percentile: float | None = None,
        averaging_constant: float | None = None,
        bins: int | None = None,
        reduce_range: str = "auto",
    ) -> None:
        options = {
            k: v
            for k, v in (
                ("percentile", percentile),
                ("averaging_constant", averaging_constant),
                ("bins", bins),
            )
            if v is not None
        }
        obs = _with_options(observer, options, "observer")
        wobs = (
            None
            if weight_observer is None
            else _with_options(weight_observer, options, "weight_observer")
        )
        _check_taken(options, [s for s in (obs, wobs) if s is not None])
        set_ = object.__setattr__
        set_(self, "weight", weight)
        set_(self, "activation", activation)
        set_(self, "observer", obs)
        set_(self, "weight_observer", wobs)
        set_(self, "mode", mode)
        set_(self, "reduce_range", reduce_range)
        self.__post_init__()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:  # type: ignore[override]
        """Build the config from a dict (also the dicts saved before observer specs existed, whose
        ``percentile``/``averaging_constant``/``bins`` go to the observers that take them).

        Raises:
            ConfigError: an unknown key, an unknown observer name, or a bad value.
        """
        if isinstance(data, dict) and any(k in data for k in OBSERVER_OPTIONS):
            data = dict(data)
            legacy = {k: data.pop(k) for k in OBSERVER_OPTIONS if k in data}
            cfg = super().from_dict(data)
            # saved dicts carry every option (defaults included): keep those the observers take
            specs = [s for s in (cfg.observer, cfg.weight_observer) if s is not None]
            used = {k: v for k, v in legacy.items() if any(k in _fields(s) for s in specs)}
            names = {f: getattr(cfg, f) for f in ("observer", "weight_observer")}
            return cls(
                cfg.weight,
                cfg.activation,
                names["observer"].name,  # type: ignore[union-attr]
                None if names["weight_observer"] is None else names["weight_observer"].name,
                cfg.mode,
                reduce_range=cfg.reduce_range,
                **used,
            )
        return super().from_dict(data)

    def replace(self, **changes: Any) -> QuantConfig:
        """A copy with ``changes`` applied (validated again); the shorthand options are accepted and
        change the observers that take them."""
        options = {k: changes.pop(k) for k in OBSERVER_OPTIONS if k in changes}
        new = super().replace(**changes) if changes else self
        specs = {}
        for f in ("observer", "weight_observer"):
            spec = getattr(new, f)
            if spec is not None:
                specs[f] = spec.replace(**{k: v for k, v in options.items() if k in _fields(spec)})
        _check_taken(options, list(specs.values()))
        return dataclasses.replace(new, **specs)

    def validate(self) -> None:
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
        if self.weight is not None and not granularity(self.weight.granularity).weights:
            raise ConfigError(
                f"QuantConfig.weight cannot use granularity={self.weight.granularity!r}; use "
                "'tensor', 'channel' or 'group'."
            )
        a = self.activation
        if a is not None:
            g = granularity(a.granularity)
            if not (g.static_activations or g.dynamic_activations):
                raise ConfigError(
                    f"QuantConfig.activation granularity={a.granularity!r} has no integer kernel "
                    "(a scale per input channel cannot be factored out of the matmul). Use 'tensor', "
                    "or 'token' with mode='dynamic'; to handle outlier channels, keep the layer in "
                    "float (exclude=) or use weight-only quantization."
                )
            if self.mode != "dynamic" and not g.static_activations:
                raise ConfigError(
                    f"QuantConfig.activation granularity={a.granularity!r} needs mode='dynamic' "
                    "(token scales are computed from each input at run time)."
                )

    @property
    def observer_name(self) -> str:
        """The registered name of the observer."""
        return self.observer_spec.name

    @property
    def observer_spec(self) -> ObserverSpec:
        """The observer's spec (activations, and weights unless ``weight_observer`` is set)."""
        return observer_spec(self.observer)

    @property
    def weight_observer_spec(self) -> ObserverSpec:
        """The spec of the observer used for weights."""
        return observer_spec(
            self.weight_observer if self.weight_observer is not None else self.observer
        )

    @property
    def weight_observer_name(self) -> str:
        """The registered name of the observer used for weights."""
        return self.weight_observer_spec.name


def _fields(spec: ObserverSpec) -> set[str]:
    return {f.name for f in dataclasses.fields(spec)}


def _check_taken(options: dict[str, Any], specs: list[ObserverSpec]) -> None:
    """Every shorthand option must go to one of the config's observers (never silently ignored)."""
    for k, v in options.items():
        if not any(k in _fields(s) for s in specs):
            takers = [n for n in OBSERVERS if k in _fields(OBSERVERS.get(n).Spec())]
            raise ConfigError(
                f"QuantConfig({k}={v!r}): no observer of this config takes {k!r} (it uses "
                f"{' and '.join(repr(s.name) for s in specs)}); {k!r} is an option of "
                f"{', '.join(repr(n) for n in takers)}. Choose one of those observers, or give "
                "the options in its spec (e.g. observer=tc.quant.Percentile(99.9))."
            )


def _with_options(obs: Any, options: dict[str, Any], what: str) -> ObserverSpec:
    """``obs`` (a name or a spec) as a spec, with the shorthand ``options`` it takes."""
    if isinstance(obs, ObserverSpec):
        clash = sorted(set(options) & _fields(obs))
        if clash:
            raise ConfigError(
                f"QuantConfig.{what} is the spec {obs!r}, which sets {clash[0]!r} itself; drop "
                f"QuantConfig({clash[0]}=...) or set it in the spec."
            )
        return obs
    if not isinstance(obs, str):
        raise ConfigError(
            f"QuantConfig.{what} must be an observer name or an ObserverSpec (e.g. "
            f"tc.quant.Percentile(99.9)), got {type(obs).__name__}."
        )
    return observer_spec(obs, **options)
