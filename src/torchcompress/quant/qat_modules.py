"""Quantizers and layers for quantization-aware training (used by :func:`torchcompress.prepare_qat`).

Every class here honours the quantizer contract of :mod:`torchcompress.quant` (``spec``,
``quant_min`` / ``quant_max``, ``scale``, ``zero_point``, ``calibrated``, ...), so
:func:`torchcompress.convert` turns a trained model into the integer model without special cases:

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
- :class:`QuantConvBn2d` / :class:`QuantConvBn1d`: a convolution training with its BatchNorm
  folded into the quantized weight (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018,
  arXiv:1806.08342, section 3.2.1), with batch-statistics correction until the statistics are
  frozen.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as QF
from .modules import FakeQuantize, QuantConv1d, QuantConv2d, _QuantConvNd
from .observers import MinMaxObserver, MovingMinMaxObserver
from .spec import IntSpec

__all__ = [
    "QAT_QUANTIZERS",
    "LSQQuantize",
    "PACTQuantize",
    "QuantConvBn1d",
    "QuantConvBn2d",
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


class _QATMixin:
    """Shared helpers of the QAT quantizers (all subclasses of :class:`FakeQuantize`)."""

    method = ""

    def qat_state(self) -> dict[str, Any]:
        """The JSON-serialisable state :func:`torchcompress.save` records (tensors are saved apart)."""
        return {"method": self.method, "observing": bool(self.observing)}  # type: ignore[attr-defined]

    def load_qat_state(self, d: dict[str, Any]) -> None:
        """Restore :meth:`qat_state`."""
        self.observing = bool(d.get("observing", False))

    def _elements_per_scale(self, x: Tensor) -> int:
        fq: Any = self
        if fq.role == "weight":
            rows, cols = fq.shape
            if fq.granularity == "tensor":
                return rows * cols
            if fq.granularity == "channel":
                return cols
            return int(fq.group_size)
        # activations: the features of one example (Esser et al.: N_F)
        return max(1, x.numel() // max(1, x.shape[0] if x.dim() > 1 else 1))


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
        rows, cols = fq.shape  # type: ignore[misc]
        w2 = w.detach().float().reshape(rows, cols)
        s = QF.expand_qparams(fq.scale.float(), fq.granularity)
        z = QF.expand_qparams(fq.zero_point.float(), fq.granularity)
        if fq.granularity == "group":
            w2 = w2.reshape(rows, cols // fq.group_size, fq.group_size)  # type: ignore[operator]
        v = torch.round(w2 * (1.0 / s) + z)
        return ((v >= fq.quant_min) & (v <= fq.quant_max)).reshape(w.shape)


class STEQuantize(_QATMixin, FakeQuantize):
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
        >>> from torchcompress.quant.qat_modules import STEQuantize
        >>> fq = STEQuantize(IntSpec(8, symmetric=False, signed=False), observer="moving_minmax")
        >>> fq.observing = True
        >>> _ = fq.train()(torch.linspace(0, 2.55, 100))
        >>> round(float(fq.scale), 4), fq.calibrated
        (0.01, True)
    """

    method = "ste"

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
        if isinstance(obs, MinMaxObserver | MovingMinMaxObserver):
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
            elif _world() > 1 and not isinstance(
                self.observer, MinMaxObserver | MovingMinMaxObserver
            ):
                with torch.no_grad():
                    torch.distributed.all_reduce(self.scale, op=torch.distributed.ReduceOp.AVG)
                    z = self.zero_point.float()
                    torch.distributed.all_reduce(z, op=torch.distributed.ReduceOp.AVG)
                    self.zero_point.copy_(z.round().to(self.zero_point.dtype))
        if not self.enabled or not self.calibrated:
            return x
        return self._fq(x)

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
        """Recompute a weight quantizer's range from ``weight2d`` (before conversion)."""
        if self.role != "weight" or self.observer is None or not self.observing:
            return
        self.observer.observe(self._grouped(weight2d.detach()))
        self.calibrate()
        self.observer.reset()


class LSQQuantize(_QATMixin, FakeQuantize):
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
        >>> from torchcompress.quant.qat_modules import LSQQuantize
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
            from ..errors import CalibrationError

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
        g = 1.0 / math.sqrt(self._elements_per_scale(x) * self.qp)
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


class PACTQuantize(_QATMixin, FakeQuantize):
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
        >>> from torchcompress.quant.qat_modules import PACTQuantize
        >>> fq = PACTQuantize(IntSpec(4, signed=False), alpha=1.5)
        >>> y = fq(torch.tensor([0.2, 1.0, 3.0]))
        >>> y.tolist()  # 3.0 clipped at alpha, steps of 0.1
        [0.20000000298023224, 1.0, 1.5]
    """

    method = "pact"

    def __init__(self, spec: IntSpec, *, alpha: float = 10.0, **kwargs: Any) -> None:
        kwargs.pop("role", None)
        super().__init__(spec, role="activation", **kwargs)
        if self.quant_min != 0:
            from ..errors import ConfigError

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

    def extra_repr(self) -> str:
        return f"{self.spec.short()}, PACT alpha={self.alpha.item():.4g}"


#: class name -> class, for loading
QAT_QUANTIZERS: dict[str, type[FakeQuantize]] = {
    "ste": STEQuantize,
    "lsq": LSQQuantize,
    "pact": PACTQuantize,
}


# --- BatchNorm folded into the quantized convolution ------------------------------------------


class _QuantConvBnNd(_QuantConvNd):
    """A fake-quant convolution training with its BatchNorm folded into the quantized weight.

    With ``sigma = sqrt(running_var + eps)`` and ``gamma``, ``beta`` the BN's affine parameters,
    the weight that is quantized is the folded ``W * gamma / sigma`` (what the integer model
    stores). In training mode, until the statistics are frozen, the output is corrected to batch
    normalisation (Krishnamoorthi 2018, fig. 8): ``conv(x, q(W gamma / sigma)) * sigma / sigma_B +
    beta - gamma mu_B / sigma_B``, where ``mu_B``, ``sigma_B`` are the batch statistics of the
    unfolded output ``conv(x, q(W gamma / sigma)) / (gamma / sigma)``, and the running statistics
    are updated as BatchNorm does. With frozen statistics, and always in eval mode, the output is
    ``conv(x, q(W gamma / sigma)) + beta + (b - mu) gamma / sigma``, exactly the converted layer.

    Attributes:
        bn: the original BatchNorm (its parameters train, its running statistics are used).
        stats_frozen: a bool buffer; see :func:`~torchcompress.quant.qat.freeze_bn_stats`.
    """

    bn: nn.modules.batchnorm._BatchNorm

    def _init_bn(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        self.bn = bn
        self.register_buffer(
            "stats_frozen", torch.zeros((), dtype=torch.bool, device=bn.running_mean.device)
        )

    def _bn_factor(self) -> Tensor:
        bn = self.bn
        var = bn.running_var.float()  # type: ignore[union-attr]
        gamma = bn.weight.float() if bn.weight is not None else torch.ones_like(var)
        return gamma * torch.rsqrt(var + bn.eps)

    def folded_weight(self) -> Tensor:
        """``W * gamma / sqrt(running_var + eps)`` (differentiable)."""
        f = self._bn_factor()
        shape = [-1] + [1] * (self.weight.dim() - 1)
        return (self.weight.float() * f.reshape(shape)).to(self.weight.dtype)

    def folded_bias(self) -> Tensor:
        """``beta + (b - running_mean) * gamma / sqrt(running_var + eps)``."""
        bn = self.bn
        f = self._bn_factor()
        mean = bn.running_mean.float()  # type: ignore[union-attr]
        b = self.bias.float() if self.bias is not None else torch.zeros_like(mean)
        beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(mean)
        return beta + (b - mean) * f

    def quantized_weight(self) -> Tensor:
        w = self.folded_weight()
        if self.weight_quant is None:
            return w
        return self.weight_quant(w.reshape(self.weight_shape2d)).reshape(w.shape)

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        conv = F.conv2d if self._nd == 2 else F.conv1d
        w = w.to(x.dtype)
        b = None if b is None else b.to(x.dtype)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding(), mode=self.padding_mode)
            return conv(x, w, b, self.stride, 0, self.dilation, self.groups)
        return conv(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        bn = self.bn
        if not self.training or bool(self.stats_frozen):
            y = self._conv(x, self.quantized_weight(), self.folded_bias())
        else:
            # The folding factor is a constant of this step (detached): gamma then receives exactly
            # BatchNorm's gradient, and the unfolding division never amplifies the weight's
            # quantization error by 1 / factor^2. A vanishing factor (gamma = 0) is kept tiny.
            f = self._bn_factor().detach()
            f = torch.where(f.abs() < 1e-8, torch.full_like(f, 1e-8), f)
            wshape = [-1] + [1] * (self.weight.dim() - 1)
            w = (self.weight.float() * f.reshape(wshape)).to(self.weight.dtype)
            if self.weight_quant is not None:
                w = self.weight_quant(w.reshape(self.weight_shape2d)).reshape(w.shape)
            y0 = self._conv(x, w, None).float()
            shape = [1, -1] + [1] * (y0.dim() - 2)
            # the unfolded output (conv with the original weight, plus the conv's own bias)
            z = y0 / f.reshape(shape)
            if self.bias is not None:
                z = z + self.bias.float().reshape(shape)
            y = F.batch_norm(
                z,
                bn.running_mean,
                bn.running_var,
                bn.weight,
                bn.bias,
                True,
                self._momentum(),
                bn.eps,
            ).to(x.dtype)
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y

    def _momentum(self) -> float:
        bn = self.bn
        if bn.momentum is None:  # cumulative moving average
            bn.num_batches_tracked += 1  # type: ignore[operator]
            return 1.0 / float(bn.num_batches_tracked)
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked += 1
        return float(bn.momentum)

    def to_quant_layer(self) -> _QuantConvNd:
        """The plain fake-quant convolution with the folded weight and bias (what converts)."""
        cls = QuantConv2d if self._nd == 2 else QuantConv1d
        new = cls(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            True,
            self.padding_mode,
            device="meta",
        )
        with torch.no_grad():
            new.weight = nn.Parameter(self.folded_weight().detach().clone())
            new.bias = nn.Parameter(self.folded_bias().detach().to(self.weight.dtype).clone())
        if isinstance(self.weight_quant, STEQuantize):
            self.weight_quant.refresh(new.weight.reshape(self.weight_shape2d))
        new.weight_quant = self.weight_quant
        new.input_quant = self.input_quant
        new.output_quant = self.output_quant
        new.train(self.training)
        return new

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", bn folded{' (stats frozen)' if bool(self.stats_frozen) else ''}"
        )


class QuantConvBn2d(_QuantConvBnNd, QuantConv2d):
    """``Conv2d`` + ``BatchNorm2d`` training folded (see :class:`_QuantConvBnNd`)."""

    _nd = 2


class QuantConvBn1d(_QuantConvBnNd, QuantConv1d):
    """``Conv1d`` + ``BatchNorm1d`` training folded (see :class:`_QuantConvBnNd`)."""

    _nd = 1
