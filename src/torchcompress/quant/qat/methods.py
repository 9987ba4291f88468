"""The quantization-aware training methods: one class each, in a registry (:data:`QAT_METHODS`).

A method builds the training quantizers that replace the post-training ones
:func:`~torchcompress.prepare_qat` planned (same format, same integer range), checks what it can
train, and says whether it needs to know which activations are ReLU outputs. Built in:

- ``"ste"`` (:class:`STE`): ranges re-estimated at every step, straight-through gradients
  (Jacob et al. 2018).
- ``"lsq"`` (:class:`LSQ`): Learned Step Size Quantization (Esser et al., ICLR 2020), learned
  offsets for asymmetric formats (LSQ+, Bhalgat et al. 2020).
- ``"pact"`` (:class:`PACT`): learned clipping of ReLU activations (Choi et al. 2018); weights as
  in STE.

Add one by subclassing :class:`QATMethod` (usually with a quantizer class of its own, a
:class:`~torchcompress.quant.qat.quantizers.QATQuantizer`) and registering it::

    @QAT_METHODS.register("my_method")
    class MyMethod(STE):
        quantizer = MyQuantize

        def make_activation(self, fq, origin, what):
            return MyQuantize(fq.spec, **self.activation_args(fq)).to(fq.zero_point.device)

    tc.prepare_qat(model, config, method="my_method")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from ...config import Config
from ...errors import ConfigError, DataError, check_choice
from ...registry import Registry
from ..modules import FakeQuantize
from ..observers import MinMax, MovingMinMax, ObserverSpec, observer_spec
from ..spec import QuantConfig
from .quantizers import LSQQuantize, PACTQuantize, QATQuantizer, STEQuantize

__all__ = ["LSQ", "LSQ_INITS", "PACT", "QAT_METHODS", "STE", "QATMethod", "QATOptions"]

#: how LSQ initialises its step sizes: from the config's observers, or the paper's formula
LSQ_INITS = ("observer", "lsq")


@dataclass(frozen=True)
class QATOptions(Config):
    """The method options of :func:`~torchcompress.prepare_qat` (see there), validated once.

    Args:
        observer: the activation observer of ``"ste"`` (a name or a spec; default: the config's
            observer if it is not the plain ``"minmax"``, else ``"moving_minmax"``).
        lsq_init: ``"observer"`` or ``"lsq"``.
        pact_alpha: PACT's initial clipping value without calibration data.
        pact_fallback: ``"error"`` or another method's name: how PACT quantizes an activation that is
            not a ReLU output.

    Example:
        >>> from torchcompress.quant.qat import QATOptions
        >>> QATOptions(lsq_init="lsq").pact_fallback
        'error'
    """

    observer: str | ObserverSpec | None = None
    lsq_init: str = "observer"
    pact_alpha: float = 10.0
    pact_fallback: str = "error"

    def validate(self) -> None:
        if self.observer is not None:
            observer_spec(self.observer)  # raises ConfigError listing the registered observers
        check_choice("lsq_init", self.lsq_init, LSQ_INITS, owner="prepare_qat")
        fallbacks = ("error", *(n for n in QAT_METHODS if n != "pact"))
        check_choice("pact_fallback", self.pact_fallback, fallbacks, owner="prepare_qat")
        a = self.pact_alpha
        if isinstance(a, bool) or not (isinstance(a, int | float) and a > 0):
            raise ConfigError(f"prepare_qat: pact_alpha must be a positive number, got {a!r}.")


class QATMethod:
    """One quantization-aware training method (see the module docs).

    Args:
        config: the formats being trained.
        options: the method options of :func:`~torchcompress.prepare_qat`.

    Attributes:
        name: the registered name.
        quantizer: the class of the method's activation quantizers.
        supports_dynamic: it trains ``QuantConfig(mode="dynamic")`` models.
        needs_origins: it must know which quantized activations are ReLU outputs
            (:mod:`~torchcompress.quant.qat.origins`).

    Example:
        >>> import torchcompress as tc
        >>> from torchcompress.quant.qat import QAT_METHODS, QATOptions
        >>> lsq = QAT_METHODS.get("lsq")(tc.QuantConfig(), QATOptions())
        >>> lsq.quantizer.__name__, lsq.supports_dynamic
        ('LSQQuantize', False)
    """

    name: ClassVar[str] = ""
    quantizer: ClassVar[type[QATQuantizer]] = QATQuantizer
    supports_dynamic: ClassVar[bool] = False
    needs_origins: ClassVar[bool] = False

    def __init__(self, config: QuantConfig, options: QATOptions) -> None:
        self.config = config
        self.options = options

    def check(self, calib_data: Any) -> None:
        """Raise if the method cannot train :attr:`config` (called before the model changes).

        Raises:
            ConfigError: e.g. dynamic activations with a method that learns static ranges.
            DataError: calibration data the method needs is missing.
        """
        c = self.config
        if c.activation is not None and c.mode == "dynamic" and not self.supports_dynamic:
            raise ConfigError(
                f"method={self.name!r} learns static activation ranges; QuantConfig(mode='dynamic') "
                "computes them from each input. Use mode='static', or method='ste'."
            )

    @staticmethod
    def weight_args(fq: FakeQuantize) -> dict[str, Any]:
        """Keyword arguments of a weight quantizer with ``fq``'s integer range and shape."""
        return {
            "role": "weight",
            "quant_min": fq.quant_min,
            "quant_max": fq.quant_max,
            "shape": fq.shape,
            "name": fq.name,
        }

    @staticmethod
    def activation_args(fq: FakeQuantize) -> dict[str, Any]:
        """Keyword arguments of an activation quantizer with ``fq``'s integer range."""
        return {
            "role": "activation",
            "quant_min": fq.quant_min,
            "quant_max": fq.quant_max,
            "name": fq.name,
        }

    def weight_quantizer(self, fq: FakeQuantize, w2d: Tensor) -> FakeQuantize:
        """The training quantizer replacing the weight quantizer ``fq`` of the 2-D weight ``w2d``."""
        raise NotImplementedError

    def activation_quantizer(
        self, fq: FakeQuantize, origin: str = "other", what: str = ""
    ) -> FakeQuantize:
        """The training quantizer replacing the activation quantizer ``fq``.

        Args:
            fq: the post-training quantizer (dynamic ones are kept).
            origin: what the activation is: ``"relu"`` (a ReLU output), ``"input"`` (the model's
                own input), ``"residual"`` (a residual operand) or ``"other"``.
            what: the activation, described for error messages.
        """
        if fq.dynamic:
            return fq
        new = self.make_activation(fq, origin, what)
        new.observe_relu = fq.observe_relu
        return new.to(fq.zero_point.device)

    def make_activation(self, fq: FakeQuantize, origin: str, what: str) -> FakeQuantize:
        """Build the activation quantizer (see :meth:`activation_quantizer`)."""
        raise NotImplementedError

    def history(self) -> dict[str, Any]:
        """What :func:`torchcompress.io.history` records about the method."""
        return {"method": self.name, "lsq_init": self.options.lsq_init}


#: name -> :class:`QATMethod` subclass
QAT_METHODS: Registry[type[QATMethod]] = Registry("QAT method")


@QAT_METHODS.register("ste")
class STE(QATMethod):
    """Ranges re-estimated at every training step, straight-through gradients (Jacob et al. 2018).

    Weights are re-observed exactly at every step; activations go through an observer updated at
    every training step (``QATOptions.observer``).
    """

    name = "ste"
    quantizer = STEQuantize
    supports_dynamic = True

    @property
    def activation_observer(self) -> ObserverSpec:
        """The observer of the activations: the option, or the config's observer unless it is the
        plain min/max (all-time extremes never follow training), whose moving average is used."""
        if self.options.observer is not None:
            return observer_spec(self.options.observer)
        spec = self.config.observer_spec
        return MovingMinMax() if spec.name == MinMax.name else spec

    def weight_quantizer(self, fq: FakeQuantize, w2d: Tensor) -> FakeQuantize:
        new = STEQuantize(
            fq.spec, observer=self.config.weight_observer_spec, **self.weight_args(fq)
        ).to(w2d.device)
        new.refresh(w2d)
        return new

    def make_activation(self, fq: FakeQuantize, origin: str, what: str) -> FakeQuantize:
        return STEQuantize(fq.spec, observer=self.activation_observer, **self.activation_args(fq))

    def history(self) -> dict[str, Any]:
        spec = self.activation_observer
        return {**super().history(), "observer": spec.name, "observer_options": spec.to_dict()}


@QAT_METHODS.register("lsq")
class LSQ(QATMethod):
    """Learned Step Size Quantization (Esser et al., ICLR 2020) of weights and activations.

    Step sizes start from calibration: ``lsq_init="observer"`` (the config's observers) or
    ``"lsq"`` (the paper's ``2 * mean|x| / sqrt(Qp)``); asymmetric formats also learn the offset
    (LSQ+, Bhalgat et al. 2020).
    """

    name = "lsq"
    quantizer = LSQQuantize

    def check(self, calib_data: Any) -> None:
        super().check(calib_data)
        if self.config.activation is not None and calib_data is None:
            raise DataError(
                "method='lsq' initialises the activation step sizes from calibration data (Esser "
                "et al. 2020), but calib_data is None. Pass a few batches of training inputs as "
                "calib_data=..., or use activation=None (weight-only), or method='ste'."
            )

    def weight_quantizer(self, fq: FakeQuantize, w2d: Tensor) -> FakeQuantize:
        new = LSQQuantize(
            fq.spec, observer=self.config.weight_observer_spec, **self.weight_args(fq)
        ).to(w2d.device)
        if self.options.lsq_init == "lsq":
            new.observer.observe(new._grouped(w2d.detach()))  # type: ignore[union-attr]
            new.init_lsq(w2d)
        else:
            new.observe(w2d.detach())
            new.calibrate()
        new.observer.reset()  # type: ignore[union-attr]
        return new

    def make_activation(self, fq: FakeQuantize, origin: str, what: str) -> FakeQuantize:
        new = LSQQuantize(fq.spec, observer=self.config.observer_spec, **self.activation_args(fq))
        new.init = self.options.lsq_init
        return new


@QAT_METHODS.register("pact")
class PACT(STE):
    """PACT (Choi et al. 2018): a learned clipping value ``alpha`` for each ReLU output.

    Each quantizer reading a ReLU / ReLU6 output gets an unsigned ``[0, 2^b - 1]`` range of
    ``alpha / (2^b - 1)`` steps, ``alpha`` initialised from calibration data if given, else
    ``pact_alpha``. The model's own inputs and residual operands are quantized as in STE; any other
    activation is an error unless ``pact_fallback`` names the method to quantize it with. Weights
    are quantized as in STE.
    """

    name = "pact"
    quantizer = PACTQuantize
    supports_dynamic = False
    needs_origins = True

    def check(self, calib_data: Any) -> None:
        super().check(calib_data)
        if self.config.activation is None:
            raise ConfigError(
                "method='pact' learns activation clipping, but config.activation is None; use "
                "method='ste' or 'lsq' for weight-only QAT."
            )

    def make_activation(self, fq: FakeQuantize, origin: str, what: str) -> FakeQuantize:
        if origin != "relu":
            fallback = self.options.pact_fallback
            if origin == "input":  # the model's own inputs: data, not an activation
                other = "ste"
            elif origin == "residual":  # a residual operand (e.g. a shortcut)
                other = "ste" if fallback == "error" else fallback
            elif fallback == "error":
                raise ConfigError(
                    f"method='pact' clips ReLU activations, but {what} is not the output of a ReLU "
                    "(or ReLU6). Exclude that layer (exclude=[...]), or pass pact_fallback='lsq' "
                    "or 'ste' to quantize such activations with that method."
                )
            else:
                other = fallback
            method = QAT_METHODS.get(other)(self.config, self.options)
            return method.make_activation(fq, origin, what)
        a = fq.spec
        bits = a.bits if fq.quant_max - fq.quant_min >= 2**a.bits - 1 else a.bits - 1
        args = {**self.activation_args(fq), "quant_min": 0, "quant_max": 2**bits - 1}
        spec = a.replace(signed=False, symmetric=True)
        return PACTQuantize(spec, alpha=self.options.pact_alpha, observer="minmax", **args)
