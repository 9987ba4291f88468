"""Quantizers for quantization-aware training (built by the methods of :func:`torchcompress.prepare_qat`).

Every class here honours the quantizer contract of :mod:`torchcompress.quant` (``spec``,
``quant_min`` / ``quant_max``, ``scale``, ``zero_point``, ``calibrated``, ...), so
:func:`torchcompress.convert` turns a trained model into the integer model without special cases,
and carries its own training behaviour (how it starts training, whether its range follows the data,
how it changes bit width in :func:`~torchcompress.quant.qat.requantize`):

- :class:`STEQuantize`: ranges from an observer fed at every training step (weights: re-observed
  exactly; activations: a moving min/max by default), straight-through gradients (Bengio et al.
  2013; Jacob et al. 2018). Under ``torch.distributed`` the batch statistics are all-reduced, so
  every rank holds the same ranges.
- :class:`LSQQuantize`: Learned Step Size Quantization (Esser et al., ICLR 2020,
  arXiv:1902.08153): the step size is an ``nn.Parameter`` trained with the gradient scaled by
  ``g = 1 / sqrt(N * Qp)``; asymmetric formats also learn the offset (LSQ+, Bhalgat et al. 2020,
  arXiv:2004.09576).
- :class:`PACTQuantize`: PACT (Choi et al. 2018, arXiv:1805.06085): a learned clipping value
  ``alpha`` for ReLU activations, ``y = clip(x, 0, alpha)`` quantized with ``alpha / (2^b - 1)``
  steps, and the paper's gradient ``dy/dalpha = 1[x >= alpha]``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...calibration import is_distributed
from ...errors import CalibrationError, ConfigError
from .. import functional as QF
from ..modules import FakeQuantize
from ..observers import all_reduce_
from ..spec import IntSpec

__all__ = [
    "LSQQuantize",
    "PACTQuantize",
    "QATQuantizer",
    "STEQuantize",
    "grad_scale",
]


def grad_scale(x: Tensor, g: float) -> Tensor:
    """``x`` in the forward pass, ``g * grad`` in the backward pass (LSQ's gradient scaling)."""
    y = x * g
    return (x - y).detach() + y


def _world() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _qp(quant_min: int, quant_max: int) -> int:
    """LSQ's ``Qp``: the number of positive levels (``2^(b-1) - 1`` signed, ``2^b - 1`` unsigned)."""
    return quant_max if quant_min < 0 else quant_max - quant_min


class QATQuantizer(FakeQuantize):
    """Base of the quantization-aware training quantizers: their training behaviour.

    Attributes:
        method: the name saved with the quantizer (a :data:`~torchcompress.quant.qat.QAT_METHODS`
            entry whose ``quantizer`` is this class), so loading rebuilds the same class.
        tracks_ranges: the range follows the data while ``observing`` (frozen with
            :func:`~torchcompress.quant.qat.freeze_observers`).
        requantize_keeps: the ``IntSpec`` fields :func:`~torchcompress.quant.qat.requantize` must
            not change.
    """

    method: ClassVar[str] = ""
    tracks_ranges: ClassVar[bool] = False
    requantize_keeps: ClassVar[tuple[str, ...]] = (
        "symmetric",
        "signed",
        "granularity",
        "group_size",
    )

    def qat_state(self) -> dict[str, Any]:
        """The JSON-serialisable state :func:`torchcompress.save` records (tensors are saved apart)."""
        return {"method": self.method, "observing": bool(self.observing)}

    def load_qat_state(self, d: dict[str, Any]) -> None:
        """Restore :meth:`qat_state`."""
        self.observing = bool(d.get("observing", False))

    def start_training(self, calibrated: bool) -> None:
        """Called by :func:`~torchcompress.prepare_qat` once the quantizer is in place (after
        calibration when ``calibrated``): enabled, and observing if its range follows the data."""
        self.enabled = True
        self.observing = self.tracks_ranges
        if calibrated and self.tracks_ranges:
            self.reseed()

    def reseed(self) -> None:
        """Start the step-wise statistics from the current range."""
        if self.observer is None or not self.calibrated:
            return
        self.observer.reset()
        s = self.scale.detach().float().reshape(-1)
        z = self.zero_point.detach().float().reshape(-1)
        lo = (self.quant_min - z) * s
        hi = (self.quant_max - z) * s
        self.observer.observe(torch.stack([lo, hi], dim=1).reshape(-1, 2))

    def requantized_range(
        self, spec: IntSpec, rng: tuple[int, int] | None
    ) -> tuple[IntSpec, int, int]:
        """The format and integer range after :func:`~torchcompress.quant.qat.requantize` to
        ``spec`` (``rng``: the range ``reduce_range`` gives, if any)."""
        lo, hi = rng if rng is not None else (spec.qmin, spec.qmax)
        return spec, lo, hi

    def rescale(self, qmin: int, qmax: int) -> None:
        """Keep the real range ``[(qmin - z) s, (qmax - z) s]`` on the new integer range."""
        with torch.no_grad():
            s = self.scale.detach().double()
            z = self.zero_point.detach().double()
            lo = (self.quant_min - z) * s
            hi = (self.quant_max - z) * s
            if bool((z == 0).all()) and self.spec.symmetric:
                new_s = s * (self.quant_max / max(qmax, 1))
                new_z = z
            else:
                new_s = (hi - lo) / (qmax - qmin)
                new_z = qmin - lo / new_s
                if self.role == "activation":
                    new_z = new_z.clamp(qmin, qmax)
            self.scale.copy_(new_s.clamp(min=QF.SCALE_EPS).to(self.scale.dtype))
            self.zero_point.copy_(new_z.round().to(self.zero_point.dtype))

    def requantize(self, spec: IntSpec, qmin: int, qmax: int) -> None:
        """Move to the format ``spec`` on ``[qmin, qmax]``, keeping the learned real range."""
        self.rescale(qmin, qmax)
        self.spec = spec
        self.quant_min, self.quant_max = qmin, qmax
        if self.observer is not None:
            self.observer = self.make_observer()
            if self.tracks_ranges and self.role == "activation":
                self.reseed()


class _STE(torch.autograd.Function):
    """``out`` in the forward; the incoming gradient (times ``mask`` if given) in the backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, out: Tensor, mask: Tensor | None) -> Tensor:
        ctx.save_for_backward(mask if mask is not None else torch.empty(0))
        ctx.has_mask = mask is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        if not ctx.has_mask:
            return grad, None, None
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None


def _mask(w: Tensor, fq: FakeQuantize) -> Tensor:
    """Where a weight lies inside its (frozen) integer range, in the weight's shape."""
    with torch.no_grad():
        inside = QF.weight_in_range(
            w.detach().reshape(fq.shape),  # type: ignore[arg-type]
            fq.scale,
            fq.zero_point,
            fq.quant_min,
            fq.quant_max,
            fq.granularity,
            fq.group_size,
        )
        return inside.reshape(w.shape)


class STEQuantize(QATQuantizer):
    """Fake quantization with ranges re-estimated at every training step (straight-through gradients).

    In training mode with ``observing`` set, every forward feeds the observer and recalibrates
    (weights: their exact current range; activations: the configured observer, a moving min/max by
    default) and then fake-quantizes with the new range; in eval mode, or once frozen
    (``observing = False``, see :func:`~torchcompress.quant.qat.freeze_observers`), the stored range
    is used. While observing, a weight's gradient is purely straight-through (its range follows the
    weight, so no weight is really clipped); activations get zero gradient where clipped. Under
    ``torch.distributed`` each batch's min/max is all-reduced (min and max) before
    it reaches the observer, so all ranks keep identical ranges; for histogram observers the
    resulting scales are averaged instead.

    Takes the arguments of :class:`FakeQuantize`.

    Example:
        >>> import torch
        >>> from torchcompress.quant import IntSpec
        >>> from torchcompress.quant.qat import STEQuantize
        >>> fq = STEQuantize(IntSpec(8, symmetric=False, signed=False), observer="moving_minmax")
        >>> fq.observing = True
        >>> _ = fq.train()(torch.linspace(0, 2.55, 100))
        >>> round(float(fq.scale), 4), fq.calibrated
        (0.01, True)
    """

    method = "ste"
    tracks_ranges = True

    def __init__(self, spec: IntSpec, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.observing = True

    def _observe_synced(self, x: Tensor) -> None:
        obs = self.observer
        if obs is None:
            return
        g = self._grouped(x.detach())
        if self.observe_relu:
            g = g.clamp(min=0)
        if obs.uses_batch_minmax:
            # one pass over the data: the observer only needs each group's min and max
            lo, hi = torch.aminmax(g.float(), dim=1)
            if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
                super().observe(x)  # raises the NumericalError naming the layer
            if self.role == "activation" and _world() > 1:
                both = torch.stack([-lo, hi])
                torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
                lo, hi = -both[0], both[1]
            obs.observe(torch.stack([lo, hi], dim=1))
            return
        if not bool(torch.isfinite(g).all()):
            super().observe(x)
        obs.observe(g)

    def forward(self, x: Tensor) -> Tensor:
        # weights: their exact range at every call (deterministic, so eval mode too); activations:
        # statistics accumulate in training mode only
        if self.observing and self.observer is not None and not self.enabled:
            self._observe_synced(x)  # a calibration pass: accumulate only
            return x
        if (
            self.observing
            and self.observer is not None
            and (self.training or self.role == "weight")
        ):
            self._observe_synced(x)
            self.calibrate()
            if self.role == "weight":
                self.observer.reset()
            elif _world() > 1 and not self.observer.uses_batch_minmax:
                with torch.no_grad():
                    torch.distributed.all_reduce(self.scale, op=torch.distributed.ReduceOp.AVG)
                    z = self.zero_point.float()
                    torch.distributed.all_reduce(z, op=torch.distributed.ReduceOp.AVG)
                    self.zero_point.copy_(z.round().to(self.zero_point.dtype))
        if not self.enabled or not self.calibrated:
            return x
        return self._fq(x)

    def all_reduce(self) -> None:
        """Combine the ranks' statistics; an observer fed each batch's min/max is already
        identical on every rank (those are all-reduced at every batch)."""
        if (
            self.observer is not None
            and self.observer.uses_batch_minmax
            and self.role == "activation"
        ):
            return
        super().all_reduce()

    def _fq(self, x: Tensor) -> Tensor:
        # the range is a constant of the step: one fused autograd node instead of five
        # (weights while observing: a pure straight-through gradient, since their range follows
        # them and none is really clipped; activations: zero gradient where clipped)
        if self.dynamic:
            return FakeQuantize.forward(self, x)
        if self.role == "weight":
            with torch.no_grad():
                out = QF.fake_quantize_weight(
                    x.detach(),
                    self.scale,
                    self.zero_point,
                    self.quant_min,
                    self.quant_max,
                    self.granularity,
                    self.group_size,
                )
            return (
                _STE.apply(x, out, None) if self.observing else _STE.apply(x, out, _mask(x, self))
            )
        with torch.no_grad():
            xf = x.detach().float()
            z = self.zero_point.float()
            v = torch.round(xf * (1.0 / self.scale.float()) + z)
            mask = (v >= self.quant_min) & (v <= self.quant_max)
            out = ((v.clamp_(self.quant_min, self.quant_max) - z) * self.scale.float()).to(x.dtype)
        return _STE.apply(x, out, mask)

    def refresh(self, weight2d: Tensor) -> None:
        """Recompute a weight quantizer's range from ``weight2d`` (while it follows the weight)."""
        if self.role != "weight" or self.observer is None or not self.observing:
            return
        self.observer.observe(self._grouped(weight2d.detach()))
        self.calibrate()
        self.observer.reset()


class LSQQuantize(QATQuantizer):
    """Learned Step Size Quantization (Esser et al. 2020), with a learned offset for asymmetric formats.

    ``scale`` is an ``nn.Parameter``; the forward is
    ``x̂ = (clamp(round(x / s + z), qmin, qmax) - z) * s`` with the straight-through estimator for
    the rounding, which gives the paper's step-size gradient
    (``-x/s + round(x/s)`` inside the range, ``qmin - z`` / ``qmax - z`` outside), multiplied by
    ``g = 1 / sqrt(N * Qp)`` where ``N`` is the number of elements sharing one step size (the
    whole weight, one output channel or one group; for activations the features of one example)
    and ``Qp`` the number of positive levels. With an asymmetric spec the zero point ``z`` is a float
    parameter too (LSQ+, Bhalgat et al. 2020), rounded with a straight-through estimator (and, for
    activations, clamped to the integer range) so that the trained model is the integer one.

    The step sizes are initialised by :meth:`init_from_observer` (any registered observer) or by
    :meth:`init_lsq` (the paper's ``2 * mean(|x|) / sqrt(Qp)``).

    Example:
        >>> import torch
        >>> from torchcompress.quant import IntSpec
        >>> from torchcompress.quant.qat import LSQQuantize
        >>> fq = LSQQuantize(IntSpec(4), role="weight", shape=(1, 4))
        >>> fq.init_lsq(torch.tensor([[0.1, -0.2, 0.3, -0.4]]))
        >>> round(fq.scale.item(), 4)  # 2 * 0.25 / sqrt(7)
        0.189
        >>> fq(torch.tensor([[0.1, -0.2, 0.3, -0.4]])).sum().backward()
        >>> fq.scale.grad is not None
        True
    """

    method = "lsq"

    def __init__(self, spec: IntSpec, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.learnable_scale()
        self.learn_offset = not spec.symmetric
        if self.learn_offset:
            z = self.zero_point.detach().float().clone()
            del self._buffers["zero_point"]
            self.zero_point = nn.Parameter(z)  # type: ignore[assignment]
        self.register_buffer("_abs_sum", None, persistent=False)
        self._abs_count = 0
        #: how :meth:`calibrate` initialises the step size: ``"observer"`` or ``"lsq"`` (the paper's)
        self.init = "observer"

    def qat_state(self) -> dict[str, Any]:
        return {**super().qat_state(), "init": self.init}

    def load_qat_state(self, d: dict[str, Any]) -> None:
        super().load_qat_state(d)
        self.init = str(d.get("init", "observer"))

    def observe(self, x: Tensor) -> None:
        """Feed the observer and, for the paper's initialisation, accumulate ``|x|``."""
        super().observe(x)
        if self.init == "lsq":
            self.accumulate_abs(x)

    def end_range_pass(self) -> None:
        """Fix the observer's range; ``|x|`` is accumulated again by the next pass."""
        super().end_range_pass()
        self._abs_sum, self._abs_count = None, 0

    def all_reduce(self) -> None:
        """Combine the ranks' statistics, the ``|x|`` sums of the paper's initialisation too."""
        super().all_reduce()
        if self.init != "lsq" or not is_distributed():
            return
        groups = self.scale.numel()
        s = self._abs_sum if self._abs_sum is not None else self.scale.new_zeros(groups)
        both = all_reduce_(
            torch.cat([s.detach().double().reshape(-1), s.new_tensor([self._abs_count]).double()]),
            "sum",
        )
        self._abs_sum, self._abs_count = both[:groups].float(), int(both[-1].item())
        if self._abs_count == 0:
            self._abs_sum = None

    def calibrate(self) -> None:
        """Initialise the step size (and offset) from what was observed (see ``init``)."""
        if self.init == "lsq":
            self.init_lsq()
        else:
            self.init_from_observer()

    def _apply(self, fn: Any, recurse: bool = True) -> LSQQuantize:
        super()._apply(fn, recurse)
        z = self.zero_point
        if isinstance(z, nn.Parameter) and z.dtype != torch.float32:
            z.data = z.data.float()
        return self

    @property
    def qp(self) -> int:
        """LSQ's ``Qp`` for this quantizer's integer range."""
        return _qp(self.quant_min, self.quant_max)

    def init_from_observer(self) -> None:
        """Set the step size (and offset) from what the observer saw."""
        scale, zp = self.observer.qparams()  # type: ignore[union-attr]
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape).to(self.scale))
            self.zero_point.copy_(zp.reshape(self.zero_point.shape).to(self.zero_point))
        self.calibrated = True

    def accumulate_abs(self, x: Tensor) -> None:
        """Accumulate ``|x|`` per step size for :meth:`init_lsq` from several batches."""
        g = self._grouped(x.detach()).float().abs()
        s = g.sum(1)
        self._abs_sum = s if self._abs_sum is None else self._abs_sum + s
        self._abs_count += g.shape[1]

    def init_lsq(self, x: Tensor | None = None) -> None:
        """The paper's initialisation ``s = 2 * mean(|x|) / sqrt(Qp)`` (from ``x``, or accumulated)."""
        if x is not None:
            self._abs_sum, self._abs_count = None, 0
            self.accumulate_abs(x)
        if self._abs_sum is None or self._abs_count == 0:
            raise CalibrationError(
                f"{self.name or 'LSQ quantizer'}: nothing observed to initialise from."
            )
        mean = self._abs_sum / self._abs_count
        s = (2.0 * mean / math.sqrt(self.qp)).clamp(min=QF.SCALE_EPS)
        with torch.no_grad():
            self.scale.copy_(s.reshape(self.scale.shape).to(self.scale))
            if self.learn_offset and self.observer is not None and self.observer.observed:
                lo, _ = self.observer.compute_range()
                if self.include_zero:
                    lo = lo.clamp(max=0)
                z = self.quant_min - lo.reshape(self.scale.shape).to(self.scale) / self.scale
                if self.role == "activation":
                    z = z.clamp(self.quant_min, self.quant_max)
                self.zero_point.copy_(z.round().to(self.zero_point))
        self._abs_sum, self._abs_count = None, 0
        self.calibrated = True

    def _qparams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        g = 1.0 / math.sqrt(self.elements_per_scale(x) * self.qp)
        s = grad_scale(self.scale, g).abs().clamp(min=QF.SCALE_EPS)
        z = self.zero_point
        if self.learn_offset:
            z = QF.round_ste(grad_scale(z, g))
            if self.role == "activation":
                z = z.clamp(self.quant_min, self.quant_max)
        return s, z

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observe(x)
        if not self.enabled or not self.calibrated:
            return x
        s, z = self._qparams(x)
        if self.role == "weight":
            return QF.fake_quantize_weight(
                x, s, z, self.quant_min, self.quant_max, self.granularity, self.group_size
            )
        return QF.fake_quantize(x, s, z, self.quant_min, self.quant_max)


class PACTQuantize(QATQuantizer):
    """PACT (Choi et al. 2018): ``y = clip(x, 0, alpha)``, quantized with ``alpha / (2^b - 1)`` steps.

    ``alpha`` is an ``nn.Parameter`` (one per tensor). The forward computes
    ``y = where(x >= alpha, alpha, x)`` on the (ReLU'd) input and the quantized value
    ``y + (fq(y) - y).detach()``, so the gradient is the paper's: ``1`` to ``x`` below ``alpha``,
    and ``dy_q/dalpha = 1[x >= alpha]``. The integer range is unsigned ``[0, 2^b - 1]`` with zero
    point 0; ``scale`` is derived from ``alpha`` (``alpha / quant_max``) whenever it is read, so
    conversion always uses the trained value. Use :func:`~torchcompress.quant.qat.pact_regularizer`
    for the paper's L2 penalty on the alphas.

    Example:
        >>> import torch
        >>> from torchcompress.quant import IntSpec
        >>> from torchcompress.quant.qat import PACTQuantize
        >>> fq = PACTQuantize(IntSpec(4, signed=False), alpha=1.5)
        >>> y = fq(torch.tensor([0.2, 1.0, 3.0]))
        >>> y.tolist()  # 3.0 clipped at alpha, steps of 0.1
        [0.20000000298023224, 1.0, 1.5]
    """

    method = "pact"
    requantize_keeps = ("granularity",)

    def __init__(self, spec: IntSpec, *, alpha: float = 10.0, **kwargs: Any) -> None:
        kwargs.pop("role", None)
        super().__init__(spec, role="activation", **kwargs)
        if self.quant_min != 0:
            raise ConfigError(
                f"PACT quantizes ReLU outputs to an unsigned range [0, 2^b - 1]; got "
                f"[{self.quant_min}, {self.quant_max}] for {self.name or 'a layer'}. Use an "
                "unsigned activation IntSpec (signed=False)."
            )
        del self._buffers["scale"]
        self.alpha = nn.Parameter(torch.tensor([float(alpha)]))
        self.alpha._tc_keep_dtype = True  # type: ignore[attr-defined]
        self.calibrated = True  # alpha has a value from the start (the paper's constant)

    def __getattr__(self, name: str) -> Any:
        if name == "scale" and "alpha" in self.__dict__.get("_parameters", {}):
            a = self.alpha.detach().float().abs().clamp(min=QF.ACT_MIN_SCALE * self.quant_max)
            return a / self.quant_max
        return super().__getattr__(name)

    def _apply(self, fn: Any, recurse: bool = True) -> PACTQuantize:
        nn.Module._apply(self, fn, recurse)
        if self.alpha.dtype != torch.float32:
            self.alpha.data = self.alpha.data.float()
        return self

    def calibrate(self) -> None:
        """Initialise ``alpha`` from the observer (the top of the observed range)."""
        if self.observer is None or not self.observer.observed:
            return
        _, hi = self.observer.compute_range()
        with torch.no_grad():
            self.alpha.fill_(max(float(hi.max()), QF.ACT_MIN_SCALE * self.quant_max))
            self.zero_point.zero_()
        self.calibrated = True

    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observe(x)
        if not self.enabled:
            return x
        xf = x.float()
        a = self.alpha.abs().clamp(min=QF.ACT_MIN_SCALE * self.quant_max)
        y = torch.where(xf >= a, a, xf).clamp(min=0)
        with torch.no_grad():
            s = a.detach() / self.quant_max
            yq = QF.fake_quantize(y.detach(), s, self.zero_point, self.quant_min, self.quant_max)
        out = y + (yq - y.detach())
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def requantized_range(
        self, spec: IntSpec, rng: tuple[int, int] | None
    ) -> tuple[IntSpec, int, int]:
        """PACT keeps its unsigned format and ``alpha``: ``[0, 2^b - 1]`` at the new width."""
        return self.spec.replace(bits=spec.bits), 0, 2**spec.bits - 1

    def rescale(self, qmin: int, qmax: int) -> None:
        """Nothing to rescale: the steps are ``alpha / qmax`` at any width."""

    def extra_repr(self) -> str:
        return f"{self.spec.short()}, PACT alpha={self.alpha.item():.4g}"
