"""The observer base class, its typed options (:class:`ObserverSpec`) and the registry.

An observer is two small classes: the :class:`Observer` (an ``nn.Module`` accumulating statistics)
and its :class:`ObserverSpec` (a frozen, validated :class:`~torchcompress.config.Config` with the
observer's own options, e.g. ``Percentile(percentile=99.9, bins=2048)``), linked by the observer's
``Spec`` attribute. Registering the observer (``@OBSERVERS.register("name")``) names the spec too,
so a :class:`~torchcompress.quant.QuantConfig` can hold either the plain name or the spec, and
serialises the spec with its options. An observer without options of its own inherits its base's
spec; registration then derives a spec class carrying the new name.

Calibration on several ranks (``torch.distributed``): after the data ran, every rank calls
:meth:`Observer.all_reduce`, which combines what the ranks observed (the minimum of the minima,
the maximum of the maxima, the sum of the batch counts, and whatever :meth:`Observer.reduce_stats`
of a subclass adds). :attr:`Observer.across_ranks` says how the result compares with the statistics
of one process on all the data: ``"exact"`` (minima, maxima, integer counts), ``"rounding"``
(floating-point sums, added in another order) or ``"approximate"`` (a moving average, which depends
on the order of the batches). An observer whose statistics depend on a range
(:attr:`Observer.needs_range_pass`: a histogram) is calibrated in two passes
(:meth:`Observer.begin_range_pass` / :meth:`Observer.end_range_pass`): the first only tracks the
range, which is then all-reduced and fixed, the second accumulates over the fixed range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...calibration import is_distributed
from ...config import Config
from ...errors import CalibrationError, ConfigError
from ...registry import Registry
from .. import functional as QF

__all__ = [
    "OBSERVERS",
    "Observer",
    "ObserverSpec",
    "all_reduce_",
    "make_observer",
    "observer_spec",
]


def all_reduce_(t: Tensor, op: str) -> Tensor:
    """All-reduce ``t`` across ranks with ``op`` (``"sum"``, ``"min"`` or ``"max"``); returns the
    reduced tensor (``t`` itself when it is contiguous). Only call it under ``torch.distributed``."""
    dist = torch.distributed
    t = t.contiguous()
    dist.all_reduce(
        t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
    )
    return t


@dataclass(frozen=True)
class ObserverSpec(Config):
    """The options of one registered observer (base class: an observer with no options).

    Subclass it as a frozen dataclass with the observer's options as fields (validated in
    ``validate``), and set it as the observer class's ``Spec``.

    Attributes:
        name: the registered name of the observer it configures (set by :data:`OBSERVERS`).

    Example:
        >>> from torchcompress.quant.observers import Percentile
        >>> spec = Percentile(99.9)
        >>> spec.name, type(spec.build(0, 255, symmetric=False)).__name__
        ('percentile', 'PercentileObserver')
    """

    name: ClassVar[str] = ""

    def build(
        self,
        qmin: int,
        qmax: int,
        *,
        symmetric: bool,
        include_zero: bool = False,
        exact: bool = False,
    ) -> Observer:
        """The observer these options describe, for the integer range ``[qmin, qmax]``."""
        cls = OBSERVERS.get(self.name)
        return cls(
            qmin, qmax, symmetric=symmetric, include_zero=include_zero, exact=exact, spec=self
        )


class Observer(nn.Module):
    """Base class: accumulate statistics of ``[groups, elements]`` tensors, then give ranges.

    Statistics live in non-persistent buffers (they follow ``.to(device)`` but are not saved: once
    calibrated, a quantizer keeps only its scales and zero points).

    Args:
        qmin: smallest integer of the target format.
        qmax: largest integer of the target format.
        symmetric: the target format is symmetric (ranges are estimated on ``|x|``).
        include_zero: the quantizer widens ranges to include zero (activations).
        exact: observe exact values instead of streaming statistics (weights).
        spec: the observer's options (default: ``Spec()``).

    Attributes:
        Spec: the :class:`ObserverSpec` subclass holding this observer's options.
        uses_batch_minmax: its statistics depend on each batch only through the batch's per-group
            min and max (quantization-aware training then feeds it just those, all-reduced across
            ranks under ``torch.distributed``).
        across_ranks: how its statistics, combined across ranks by :meth:`all_reduce`, compare
            with those of one process on all the data: ``"exact"``, ``"rounding"`` (float sums)
            or ``"approximate"`` (e.g. a moving average, which depends on the order of the
            batches; calibration warns).
        range_only: during a range pass (:meth:`begin_range_pass`), only the minimum and maximum
            are tracked.
    """

    Spec: ClassVar[type[ObserverSpec]] = ObserverSpec
    uses_batch_minmax: ClassVar[bool] = False
    across_ranks: ClassVar[str] = "exact"

    def __init__(
        self,
        qmin: int,
        qmax: int,
        *,
        symmetric: bool,
        include_zero: bool = False,
        exact: bool = False,
        spec: ObserverSpec | None = None,
    ) -> None:
        super().__init__()
        if spec is None:
            spec = self.Spec()
        elif not isinstance(spec, self.Spec):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.Spec.__name__} spec, got {type(spec).__name__}."
            )
        self.spec = spec
        self.qmin = int(qmin)
        self.qmax = int(qmax)
        self.symmetric = bool(symmetric)
        self.include_zero = bool(include_zero)
        self.exact = bool(exact)
        self.register_buffer("min_val", None, persistent=False)
        self.register_buffer("max_val", None, persistent=False)
        self.batches = 0
        self.range_only = False

    @property
    def observed(self) -> bool:
        """Whether at least one tensor was observed."""
        return self.batches > 0

    @property
    def needs_range_pass(self) -> bool:
        """Whether calibration first fixes the range (a histogram over it follows); weights,
        observed exactly, never need one."""
        return False

    def reset(self) -> None:
        """Forget everything observed."""
        self.min_val = None
        self.max_val = None
        self.batches = 0
        self.range_only = False

    # -- calibration in passes and across ranks ----------------------------------------------

    def begin_range_pass(self) -> None:
        """Forget everything and track only the range of what follows (see :meth:`end_range_pass`)."""
        self.reset()
        self.range_only = True

    def end_range_pass(self, device: torch.device | None = None) -> None:
        """Fix the range seen (all-reduced across ranks under ``torch.distributed``): what is
        observed next accumulates over it (:meth:`fix_range`)."""
        if is_distributed():
            self._all_reduce_range(device)
        self.range_only = False
        if self.min_val is not None:
            self.fix_range()
        self.batches = 0

    def fix_range(self) -> None:
        """Subclass hook: statistics over the range :attr:`min_val` / :attr:`max_val` start here
        (default: nothing to fix)."""

    def all_reduce(self, device: torch.device | None = None) -> None:
        """Combine what every rank observed (a no-op in one process): ranges by min/max, batch
        counts summed, and :meth:`reduce_stats`. Every rank must call it, in the same order.

        Args:
            device: where to put the tensors of a rank that observed nothing (the quantizer's).
        """
        if not is_distributed():
            return
        groups = self._all_reduce_range(device)
        count = torch.tensor(
            [float(self.batches)], dtype=torch.float64, device=self._device(device)
        )
        self.batches = int(all_reduce_(count, "sum").item())
        if groups:
            self.reduce_stats(groups, self._device(device))

    def reduce_stats(self, groups: int, device: torch.device) -> None:
        """Subclass hook: all-reduce the statistics besides the range (``groups`` per tensor; a
        rank that observed nothing contributes neutral values)."""

    def _device(self, device: torch.device | None) -> torch.device:
        if self.min_val is not None:
            return self.min_val.device
        return device if device is not None else torch.device("cpu")

    def _all_reduce_range(self, device: torch.device | None) -> int:
        """All-reduce :attr:`min_val` / :attr:`max_val`; returns the number of groups (0: no rank
        observed anything)."""
        dev = self._device(device)
        n = 0 if self.min_val is None else int(self.min_val.numel())
        groups = int(all_reduce_(torch.tensor([n], dtype=torch.int64, device=dev), "max").item())
        if not groups:
            return 0
        lo = (
            self.min_val
            if self.min_val is not None
            else torch.full((groups,), float("inf"), device=dev)
        )
        hi = (
            self.max_val
            if self.max_val is not None
            else torch.full((groups,), float("-inf"), device=dev)
        )
        self.min_val, self.max_val = all_reduce_(lo.float(), "min"), all_reduce_(hi.float(), "max")
        return groups

    def observe(self, x: Tensor) -> None:
        """Accumulate the statistics of ``x`` (``[groups, elements]``)."""
        x = x.detach()
        if x.dim() != 2:
            x = x.reshape(1, -1)
        if x.numel() == 0:
            return
        x = x.float()
        bmin, bmax = torch.aminmax(x, dim=1)
        if self.min_val is None or self.min_val.shape != bmin.shape:
            self.min_val, self.max_val = bmin, bmax
        else:
            self.min_val = torch.minimum(self.min_val, bmin)
            self.max_val = torch.maximum(self.max_val, bmax)
        if not self.range_only:
            self._update(x, bmin, bmax)
        self.batches += 1

    def _update(self, x: Tensor, bmin: Tensor, bmax: Tensor) -> None:
        """Subclass hook: update the statistics with one ``[groups, elements]`` float tensor."""

    def compute_range(self) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` per group (``[groups]`` each)."""
        self._check()
        return self.min_val, self.max_val  # type: ignore[return-value]

    def qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` per group for the observer's integer format."""
        lo, hi = self.compute_range()
        return QF.choose_qparams(
            lo, hi, self.qmin, self.qmax, symmetric=self.symmetric, include_zero=self.include_zero
        )

    def _check(self) -> None:
        if not self.observed:
            raise CalibrationError(
                f"{type(self).__name__} has observed no data; run calibration data through the "
                "model first."
            )

    def _clip_symmetric(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """The observed range clipped to ``[-a, a]``.

        A clip read from a histogram (to one bin) may fall short of every value seen (values all of
        one sign in the top bin): the range then shrinks to the nearest value seen, never inverts.
        """
        lo = torch.maximum(self.min_val, torch.minimum(-a, self.max_val))  # type: ignore[arg-type]
        hi = torch.minimum(self.max_val, torch.maximum(a, self.min_val))  # type: ignore[arg-type]
        return lo, hi

    def _fq_error(self, values: Tensor, counts: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """Squared quantization error of weighted samples for candidate ranges.

        ``values``/``counts``: ``[G, M]``; ``lo``/``hi``: ``[G, C]``. Returns ``[G, C]``.
        """
        s, z = QF.choose_qparams(
            lo, hi, self.qmin, self.qmax, symmetric=self.symmetric, include_zero=self.include_zero
        )
        v = values.unsqueeze(1)
        q = QF.quantize(v, s.unsqueeze(-1), z.unsqueeze(-1), self.qmin, self.qmax)
        err = (QF.dequantize(q, s.unsqueeze(-1), z.unsqueeze(-1)) - v) ** 2
        return (err * counts.unsqueeze(1)).sum(-1)

    def extra_repr(self) -> str:
        return f"qmin={self.qmin}, qmax={self.qmax}, symmetric={self.symmetric}, batches={self.batches}"


class _ObserverRegistry(Registry[type[Observer]]):
    """The observer registry; registering an observer names its spec class (see the module docs)."""

    def add(self, name: str, obj: type[Observer], *, overwrite: bool = False) -> None:
        if not (isinstance(obj, type) and issubclass(obj, Observer)):
            raise ConfigError(f"An observer must be an Observer subclass, got {obj!r}.")
        super().add(name, obj, overwrite=overwrite)
        spec = obj.Spec
        if spec.name == name:
            return
        if spec.name == "" and obj.__dict__.get("Spec") is spec:  # the observer's own spec class
            spec.name = name
            return
        # an observer without options of its own: a spec class that names it
        derived = type(
            f"{obj.__name__}Spec",
            (spec,),
            {
                "name": name,
                "__module__": obj.__module__,
                "__qualname__": f"{obj.__name__}Spec",
                "__doc__": f"The options of the {name!r} observer ({spec.__name__}'s).",
            },
        )
        obj.Spec = dataclass(frozen=True)(derived)


#: name -> observer class
OBSERVERS: Registry[type[Observer]] = _ObserverRegistry("observer")


def observer_spec(observer: str | ObserverSpec, **options: Any) -> ObserverSpec:
    """The :class:`ObserverSpec` of ``observer`` (a registered name, or a spec returned as is).

    ``options`` (only with a name) set the spec's fields; options the observer does not take are
    ignored, so that one set of options can be given for several observers (as
    ``QuantConfig(percentile=..., bins=...)`` and files saved before specs existed do).

    Raises:
        ConfigError: an unknown observer name, a bad option value, or options given with a spec.
    """
    if isinstance(observer, ObserverSpec):
        if options:
            raise ConfigError(
                f"Options {sorted(options)} were given beside the spec {observer!r}; set them in "
                "the spec instead."
            )
        return observer
    if not isinstance(observer, str):
        raise ConfigError(
            f"An observer is a registered name or an ObserverSpec (e.g. tc.quant.Percentile(99.9)), "
            f"got {type(observer).__name__}."
        )
    cls = OBSERVERS.get(observer).Spec
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in fields and v is not None})


def make_observer(
    observer: str | ObserverSpec,
    *,
    qmin: int,
    qmax: int,
    symmetric: bool,
    include_zero: bool = False,
    exact: bool = False,
    **options: Any,
) -> Observer:
    """Build the observer ``observer`` (a registered name or an :class:`ObserverSpec`) for the
    integer range ``[qmin, qmax]``; see :func:`observer_spec` for ``options``.

    Raises:
        ConfigError: unknown observer name (the message lists the registered ones).
    """
    spec = observer_spec(observer, **options)
    return spec.build(qmin, qmax, symmetric=symmetric, include_zero=include_zero, exact=exact)
