"""The core of the layer model: :class:`Geometry`, :class:`LayerKind`, :data:`LAYER_KINDS`.

The built-in kinds live in :mod:`torchcompress.layers.builtin`; everything is importable from
:mod:`torchcompress.layers`.

Example:
    >>> from torchcompress.layers import Geometry
    >>> Geometry("linear", 4, 3).weight_shape
    (3, 4)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, NumericalError, UnsupportedModuleError
from ..registry import Registry

__all__ = [
    "CHUNK_ELEMENTS",
    "LAYER_KINDS",
    "PADDING_MODES",
    "Geometry",
    "LayerKind",
    "canonical_weight",
    "check_finite",
    "forward",
    "geometry",
    "layer_kind",
    "stored_weight",
    "supported_types",
]

#: Largest number of input values (rows x columns) :meth:`LayerKind.input_rows` yields at once.
CHUNK_ELEMENTS = 1 << 23

#: The padding modes of torch's convolutions.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _ints(value: Any, field: str) -> tuple[int, ...]:
    out = tuple(value) if isinstance(value, list | tuple) else (value,)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ConfigError(f"Geometry.{field} must hold ints, got {value!r}.")
    return out


@dataclass(frozen=True)
class Geometry:
    """The dense linear map a weight layer computes, as data.

    A layer with this geometry multiplies each input row (a token's features, or a convolution's
    patch) by ``groups`` matrices of ``m x n``; for ``kernel_size == ()`` it is a plain
    (Linear-like) map over the last dimension.

    Attributes:
        kind: the registered :class:`LayerKind` name (``"linear"``, ``"conv"``, ...).
        in_features: input features (channels for a convolution).
        out_features: output features (channels).
        kernel_size: the kernel, one entry per spatial dimension (``()`` for Linear-like maps).
        stride: per spatial dimension.
        padding: per spatial dimension, or ``"same"`` / ``"valid"``.
        dilation: per spatial dimension.
        groups: convolution groups (1 for Linear-like maps).
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        bias: whether the layer adds a bias.

    Example:
        >>> g = Geometry("conv", 8, 16, kernel_size=(3, 3), padding="same")
        >>> g.m, g.n, g.pads, Geometry.from_dict(g.to_dict()) == g
        (16, 72, ((1, 1), (1, 1)), True)
    """

    kind: str
    in_features: int
    out_features: int
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"
    bias: bool = False

    def __post_init__(self) -> None:
        k = _ints(self.kernel_size, "kernel_size")
        nd = len(k)
        norm: dict[str, Any] = {"kernel_size": k}
        for name, default in (("stride", 1), ("dilation", 1)):
            v = _ints(getattr(self, name) or (default,) * nd, name)
            norm[name] = v * nd if len(v) == 1 and nd > 1 else v
        if isinstance(self.padding, str):
            if self.padding not in ("same", "valid"):
                raise ConfigError(
                    f"Geometry.padding={self.padding!r} must be ints, 'same' or 'valid'."
                )
            norm["padding"] = self.padding
        else:
            p = _ints(self.padding or (0,) * nd, "padding")
            norm["padding"] = p * nd if len(p) == 1 and nd > 1 else p
        for name, value in norm.items():
            object.__setattr__(self, name, value)
        for name in ("stride", "dilation") + (
            () if isinstance(self.padding, str) else ("padding",)
        ):
            if len(getattr(self, name)) != nd:
                raise ConfigError(
                    f"Geometry.{name}={getattr(self, name)!r} needs one entry per spatial "
                    f"dimension of kernel_size={k!r}."
                )
        for name in ("in_features", "out_features", "groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"Geometry.{name} must be a positive int, got {v!r}.")
        if self.in_features % self.groups or self.out_features % self.groups:
            raise ConfigError(
                f"Geometry: {self.in_features} inputs and {self.out_features} outputs are not "
                f"divisible by groups={self.groups}."
            )
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(
                f"Geometry.padding_mode={self.padding_mode!r} is not one of {PADDING_MODES}."
            )
        object.__setattr__(self, "bias", bool(self.bias))

    # -- shapes -------------------------------------------------------------------------------
    @property
    def spatial_dims(self) -> int:
        """Spatial dimensions of the kernel (0 for Linear-like maps)."""
        return len(self.kernel_size)

    @property
    def taps(self) -> int:
        """Kernel taps, ``prod(kernel_size)`` (1 for Linear-like maps)."""
        return math.prod(self.kernel_size)

    @property
    def m(self) -> int:
        """Outputs per group (rows of each group's matrix)."""
        return self.out_features // self.groups

    @property
    def n(self) -> int:
        """Inputs per group, kernel taps included (columns of each group's matrix)."""
        return self.in_features // self.groups * self.taps

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The canonical weight shape ``(out, in/groups, *kernel)``."""
        return (self.out_features, self.in_features // self.groups, *self.kernel_size)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The 2-D view of the weight, ``(out, in/groups * prod(kernel))``."""
        return (self.out_features, self.n)

    @property
    def grouped_shape(self) -> tuple[int, int, int]:
        """The weight as one matrix per group, ``(groups, m, n)``."""
        return (self.groups, self.m, self.n)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of a per-input-feature statistic: ``(in,)`` or ``(in_channels, *kernel)``."""
        return (self.in_features, *self.kernel_size)

    @property
    def params(self) -> int:
        """Parameters of the dense layer (weight and bias)."""
        return self.out_features * self.n + (self.out_features if self.bias else 0)

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        """``(before, after)`` padding per spatial dimension, as the layer applies it.

        ``"same"`` puts the odd pixel after, like torch.
        """
        if self.padding == "valid":
            return ((0, 0),) * self.spatial_dims
        if self.padding == "same":
            out = []
            for k, d in zip(self.kernel_size, self.dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        return tuple((int(p), int(p)) for p in self.padding)  # type: ignore[union-attr]

    # -- costs --------------------------------------------------------------------------------
    def macs(self, positions: int) -> int:
        """Multiply-accumulates of the dense layer at ``positions`` output positions.

        ``positions`` counts tokens for Linear-like maps and ``batch * prod(output spatial)``
        for convolutions (see :meth:`output_positions`); each costs ``out * n``.
        """
        return int(positions) * self.out_features * self.n

    def output_positions(self, output: Tensor) -> int:
        """Output positions of one forward that produced ``output`` (``numel / out_features``)."""
        return int(output.numel()) // self.out_features

    def output_size(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        """Output spatial size for an input of spatial size ``spatial``."""
        return tuple(
            (size + lo + hi - d * (k - 1) - 1) // s + 1
            for size, (lo, hi), k, s, d in zip(
                spatial, self.pads, self.kernel_size, self.stride, self.dilation
            )
        )

    # -- views ----------------------------------------------------------------------------------
    def matrices(self, weight: Tensor) -> Tensor:
        """A canonical weight as ``(groups, m, n)`` matrices (a view where possible)."""
        return weight.reshape(self.grouped_shape)

    def from_matrices(self, matrices: Tensor) -> Tensor:
        """Inverse of :meth:`matrices`: ``(groups, m, n)`` back to the canonical weight."""
        return matrices.reshape(self.weight_shape)

    def expand_features(self, stat: Tensor) -> Tensor:
        """Broadcast a per-input-feature statistic (:attr:`feature_shape`) to the weight shape."""
        g, m, k = self.groups, self.m, self.kernel_size
        per = self.in_features // g
        return stat.reshape(g, 1, per, *k).expand(g, m, per, *k).reshape(self.weight_shape)

    # -- the kind -------------------------------------------------------------------------------
    @property
    def layer_kind(self) -> LayerKind:
        """The registered :class:`LayerKind` this geometry belongs to."""
        return LAYER_KINDS.get(self.kind)

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: an unknown or missing field, or inconsistent values.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"Geometry has no field(s) {unknown}; fields: {sorted(names)}.")
        try:
            return cls(**data)
        except TypeError as e:
            raise ConfigError(f"Geometry.from_dict: {e}") from None


def stored_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """The tensor ``module.<name>`` is stored as (a parametrization's ``original`` if it has one)."""
    if parametrize.is_parametrized(module, name):
        orig = getattr(module.parametrizations[name], "original", None)  # type: ignore[index]
        if isinstance(orig, Tensor):
            return orig
    return getattr(module, name)


def _has_bias(module: nn.Module) -> bool:
    return isinstance(getattr(module, "bias", None), Tensor)


class LayerKind:
    """How one kind of weight layer exposes its weight (subclass it to add a kind).

    Subclasses implement :meth:`matches` (or set :attr:`types`) and :meth:`geometry`, and override
    :meth:`to_canonical`/:meth:`from_canonical` when the stored weight is not ``(out, in/groups,
    *kernel)``. The maths (:meth:`forward`, :meth:`input_rows`, ...) is inherited from
    :class:`LinearKind` or :class:`ConvKind`.

    Attributes:
        types: the module classes the kind covers (for selection and error messages).
        weight_axes: ``(output axis, input axis)`` of the *stored* weight.
    """

    types: ClassVar[tuple[type[nn.Module], ...]] = ()
    weight_axes: ClassVar[tuple[int, int]] = (0, 1)

    @property
    def name(self) -> str:
        """The name this kind is registered under in :data:`LAYER_KINDS`."""
        for n in LAYER_KINDS:
            if LAYER_KINDS.get(n) is self:
                return n
        return type(self).__name__

    def matches(self, module: nn.Module) -> bool:
        """Whether this kind handles ``module``."""
        return bool(self.types) and isinstance(module, self.types)

    def geometry(self, module: nn.Module) -> Geometry:
        """The :class:`Geometry` of ``module``."""
        raise NotImplementedError

    def to_canonical(self, module: nn.Module, stored: Tensor) -> Tensor:
        """The stored weight (or a tensor of its shape) seen as ``(out, in/groups, *kernel)``."""
        return stored

    def from_canonical(self, module: nn.Module, canonical: Tensor) -> Tensor:
        """Inverse of :meth:`to_canonical`."""
        return canonical

    def canonical_shape(self, module: nn.Module) -> tuple[int, ...]:
        """Shape of the canonical weight."""
        return self.geometry(module).weight_shape

    def describe(self, module: nn.Module) -> str:
        """A short description for messages: class, stored weight shape, groups."""
        shape = tuple(stored_weight(module).shape)
        groups = int(getattr(module, "groups", 1) or 1)
        return f"{type(module).__name__}, weight {shape}" + (
            f", groups={groups}" if groups != 1 else ""
        )

    # -- maths on a geometry --------------------------------------------------------------------
    def forward(
        self, geometry: Geometry, x: Tensor, weight: Tensor, bias: Tensor | None = None
    ) -> Tensor:
        """The layer's output for input ``x`` with canonical ``weight`` and ``bias``."""
        raise NotImplementedError

    def input_rows(
        self, geometry: Geometry, x: Tensor, *, max_elements: int = CHUNK_ELEMENTS
    ) -> Iterator[Tensor]:
        """The rows the weight matrices multiply, ``(groups, rows, n)``, in bounded chunks.

        For every chunk, ``rows @ geometry.matrices(weight).transpose(1, 2)`` is the layer's
        output (without bias) at those rows' positions.
        """
        raise NotImplementedError

    def feature_sums(
        self, geometry: Geometry, x: Tensor, power: int = 2, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, int]:
        """``(sum over rows of |x_j|^power per input feature (feature_shape), rows)``."""
        raise NotImplementedError

    def channel_rows(self, geometry: Geometry, x: Tensor) -> Tensor:
        """The input with its channels last, ``(rows, in_features)`` (no unfolding)."""
        raise NotImplementedError


LAYER_KINDS: Registry[LayerKind] = Registry("layer kind")


# --- module-level helpers ----------------------------------------------------------------------


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The registered :class:`LayerKind` handling ``module`` (the latest registered wins), or ``None``."""
    for name in reversed(LAYER_KINDS.names()):
        kind = LAYER_KINDS.get(name)
        if kind.matches(module):
            return kind
    return None


def _require(module: nn.Module, name: str) -> LayerKind:
    kind = layer_kind(module)
    if kind is None:
        label = f"Module {name!r} ({type(module).__name__})" if name else type(module).__name__
        raise UnsupportedModuleError(
            f"{label} is not a weight layer torchcompress knows; registered layer kinds: "
            f"{', '.join(repr(n) for n in LAYER_KINDS.names())}. Register one with "
            "torchcompress.layers.LAYER_KINDS.add(name, MyKind())."
        )
    return kind


def geometry(module: nn.Module, name: str = "") -> Geometry:
    """The :class:`Geometry` of a weight layer.

    Args:
        module: the layer.
        name: its qualified name, used in the error message.

    Raises:
        UnsupportedModuleError: no registered kind handles ``module``.
    """
    return _require(module, name).geometry(module)


def canonical_weight(module: nn.Module, weight: Tensor | None = None, name: str = "") -> Tensor:
    """``module``'s weight (the effective one, masks applied) in the canonical layout.

    Args:
        module: the layer.
        weight: a tensor in the module's stored layout to view instead of ``module.weight``.
        name: the module's qualified name, used in the error message.
    """
    kind = _require(module, name)
    return kind.to_canonical(module, module.weight if weight is None else weight)  # type: ignore[arg-type]


def forward(geometry: Geometry, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The functional forward of a layer with ``geometry`` on a canonical ``weight``."""
    return geometry.layer_kind.forward(geometry, x, weight, bias)


def check_finite(
    layers: Iterator[tuple[str, nn.Module]] | list[tuple[str, nn.Module]], what: str
) -> None:
    """Raise one :class:`~torchcompress.errors.NumericalError` naming every layer whose weight (or
    bias) holds NaN or Inf; ``what`` is the step that cannot proceed ("quantized", "pruned").

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = lin.weight.fill_(float("nan"))
        >>> try:
        ...     check_finite([("fc", lin)], "pruned")
        ... except NumericalError as e:
        ...     print(e)
        The weights of 'fc' hold NaN or Inf; they cannot be pruned. Fix or reinitialise them (a diverged training, a float16 overflow), or exclude these layers.
    """
    bad = []
    for name, module in layers:
        tensors = [getattr(module, t, None) for t in ("weight", "bias")]
        if any(
            isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
            for t in tensors
        ):
            bad.append(name)
    if bad:
        raise NumericalError(
            f"The weights of {', '.join(repr(n) for n in bad)} hold NaN or Inf; they cannot be "
            f"{what}. Fix or reinitialise them (a diverged training, a float16 overflow), or "
            "exclude these layers."
        )


def supported_types(model: nn.Module | None = None) -> tuple[type[nn.Module], ...]:
    """The module classes the registered kinds cover (plus every class in ``model`` one accepts)."""
    out: list[type[nn.Module]] = []
    for name in LAYER_KINDS.names():
        out += [t for t in LAYER_KINDS.get(name).types if t not in out]
    if model is not None:
        for m in model.modules():
            cls = type(m)
            if cls not in out and not isinstance(m, tuple(out)) and layer_kind(m) is not None:
                out.append(cls)
    return tuple(out)
