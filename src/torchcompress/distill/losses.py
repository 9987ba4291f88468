"""The distillation losses as modules, one registered class each: :data:`DISTILL_LOSSES`.

Each class wraps a function of :mod:`torchcompress.distill.functional` and is one term between one
student output and one teacher output (the logits, or the output of a named module):

=================  ===========================================  ===================================
name               class                                        compares
=================  ===========================================  ===================================
``"kd"``           :class:`KDLoss` (Hinton et al. 2015)         logits; with the labels if alpha<1
``"ce"``           :class:`CrossEntropyLoss`                    the student's logits and the labels
``"logit_mse"``    :class:`LogitMSELoss` (Ba & Caruana 2014)    logits
``"hint"``         :class:`HintLoss` (FitNets, Romero 2015)     features (learned adapter)
``"at"``           :class:`AttentionTransferLoss` (Zagoruyko &  feature maps
                   Komodakis 2017)
``"rkd"``          :class:`RKDLoss` (Park et al. 2019)          embeddings (default: logits)
``"dkd"``          :class:`DKDLoss` (Zhao et al. 2022)          logits and the labels
=================  ===========================================  ===================================

A new loss is one class: subclass :class:`DistillLoss`, implement ``forward(student, teacher,
target)`` (and ``prepare`` if it learns a part whose shape depends on the features), and
register it with ``@DISTILL_LOSSES.register("name")``; :class:`~torchcompress.distill.Distiller`
and the configs then accept the name.

Example:
    >>> import torch
    >>> from torchcompress.distill import DISTILL_LOSSES
    >>> kd = DISTILL_LOSSES.get("kd")(temperature=4.0, alpha=1.0)
    >>> t = torch.randn(8, 10)
    >>> kd(t, t).item()
    0.0
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from torch import Tensor, nn

from ..errors import ConfigError, DataError, ShapeError, check_range, did_you_mean
from ..registry import Registry
from ..train.losses import default_loss, shift_for_next_token
from . import functional as DF

__all__ = [
    "DISTILL_LOSSES",
    "AttentionTransferLoss",
    "CrossEntropyLoss",
    "DKDLoss",
    "DistillLoss",
    "HintLoss",
    "KDLoss",
    "LogitMSELoss",
    "RKDLoss",
    "build_loss",
]

#: name -> :class:`DistillLoss` subclass.
DISTILL_LOSSES: Registry[type[DistillLoss]] = Registry("distillation loss")


class DistillLoss(nn.Module):
    """One distillation term between a student output and a teacher output.

    Class attributes a subclass sets:

    - ``default_input``: what it compares when the term names no module: ``"logits"`` (the models'
      logits), or ``None`` when module names are required (feature losses).
    - ``needs_target``: whether it reads the labels (may depend on the options: see
      :meth:`uses_target`).
    - ``needs_teacher``: ``False`` for a term on the student alone (the hard-label loss).

    Attributes:
        causal: set by the distiller for a Hugging Face causal language model: the label of the
            logits at position ``t`` is the token at ``t + 1``.
    """

    default_input: ClassVar[str | None] = "logits"
    needs_target: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.causal = False
        self.prepared = False

    def uses_target(self) -> bool:
        """Whether this instance reads the labels."""
        return self.needs_target

    def prepare(self, student: Tensor, teacher: Tensor) -> None:
        """Called once with an example pair before training: check the shapes, build learned parts.

        Raises:
            ShapeError: the pair cannot be compared (the message says why).
        """
        self.prepared = True

    def forward(self, student: Tensor, teacher: Tensor, target: Any = None) -> Tensor:
        """The loss (a scalar) of ``student`` against ``teacher`` (and ``target`` when used)."""
        raise NotImplementedError

    def _aligned(self, student: Tensor, teacher: Tensor, target: Any) -> tuple[Tensor, Tensor, Any]:
        """Shift causal-LM logits and labels by one position (as the model's own loss does)."""
        if not self.causal or not isinstance(target, Tensor):
            return student, teacher, target
        s, y = shift_for_next_token(student, target)
        if s is student:
            return student, teacher, target
        return s, teacher[..., :-1, :], y


def _check_weight(owner: str, field: str, value: float) -> None:
    check_range(field, value, 0.0, owner=owner)
    if value != value or value == float("inf"):
        raise ConfigError(f"{owner}.{field}={value!r} must be finite.")


@DISTILL_LOSSES.register("kd")
class KDLoss(DistillLoss):
    """Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network", arXiv:1503.02531).

    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``: ``alpha``
    weighs the distillation term, ``1 - alpha`` the hard labels; the KL is summed over the classes
    and averaged over the rows (``batchmean``); ``T^2`` stays whatever ``alpha`` is. See
    :func:`~torchcompress.distill.functional.hinton_loss`.

    Args:
        temperature: ``T > 0`` (4 is the usual CIFAR setting).
        alpha: the weight of the soft-target term in ``[0, 1]`` (``1``: no labels needed).

    Example:
        >>> import torch
        >>> s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
        >>> KDLoss(temperature=1.0, alpha=1.0)(t, t).item()
        0.0
        >>> KDLoss(alpha=0.5)(s, t, y) > 0
        tensor(True)
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        DF.check_temperature(temperature, owner="KDLoss")
        check_range("alpha", alpha, 0.0, 1.0, owner="KDLoss")
        self.temperature, self.alpha = float(temperature), float(alpha)

    def uses_target(self) -> bool:
        """The labels are read unless ``alpha == 1``."""
        return self.alpha < 1

    def forward(self, student: Tensor, teacher: Tensor, target: Any = None) -> Tensor:
        """See the class."""
        s, t, y = self._aligned(student, teacher, target)
        if self.alpha < 1 and y is None:
            raise DataError(
                f"The 'kd' term with alpha={self.alpha:g} weighs the labels by "
                f"{1 - self.alpha:g}, but the batch has no target; pass (inputs, targets) "
                "batches, or alpha=1 to distil from the teacher alone."
            )
        return DF.hinton_loss(s, t, y, self.temperature, self.alpha)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, alpha={self.alpha:g}"


@DISTILL_LOSSES.register("ce")
class CrossEntropyLoss(DistillLoss):
    """The hard-label term on its own: the student's cross-entropy with the labels.

    The same loss :func:`torchcompress.finetune` trains with by default (rows labelled ``-100``
    ignored, class-last or class-second logits, causal language models shifted by one).

    Example:
        >>> import torch
        >>> s, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
        >>> round(CrossEntropyLoss()(s, None, y).item(), 4)
        0.1269
    """

    needs_target = True
    needs_teacher = False

    def forward(self, student: Tensor, teacher: Any = None, target: Any = None) -> Tensor:
        """See the class."""
        if target is None:
            raise DataError(
                "The 'ce' term needs labels, but the batch has no target; pass (inputs, targets) "
                "batches or dict batches with 'labels'."
            )
        return default_loss(student, target, causal=self.causal)


@DISTILL_LOSSES.register("logit_mse")
class LogitMSELoss(DistillLoss):
    """Regression on the teacher's logits (Ba & Caruana 2014, "Do Deep Nets Really Need to be
    Deep?"): the mean squared difference (see :func:`~torchcompress.distill.functional.logit_mse`).

    Example:
        >>> import torch
        >>> LogitMSELoss()(torch.ones(2, 3), torch.zeros(2, 3)).item()
        1.0
    """

    def forward(self, student: Tensor, teacher: Tensor, target: Any = None) -> Tensor:
        """See the class."""
        return DF.logit_mse(student, teacher)


def _adapter(student: Tensor, teacher: Tensor) -> nn.Module:
    """A learned map from the student's feature shape to the teacher's (channels or last dim)."""
    s, t = tuple(student.shape), tuple(teacher.shape)
    if len(s) == len(t) and s[0] == t[0] and len(s) >= 2:
        if s[2:] == t[2:] and len(s) <= 5:  # differ in the channels (dim 1): a 1x1 convolution
            if len(s) == 2:
                return nn.Linear(s[1], t[1])
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(s) - 3]
            return conv(s[1], t[1], kernel_size=1)
        if s[:-1] == t[:-1]:  # differ in the last dimension (hidden states (N, L, D))
            return nn.Linear(s[-1], t[-1])
    raise ShapeError(
        f"student features {s} cannot be mapped to teacher features {t} by a 1x1 convolution or a "
        "linear layer (they may differ in the channels, dim 1, or in the last dimension only); "
        "pair layers of the same spatial size."
    )


@DISTILL_LOSSES.register("hint")
class HintLoss(DistillLoss):
    """FitNets hints (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", ICLR).

    The mean squared difference between the student's features, mapped by a learned adapter
    (the paper's regressor) when the shapes differ, and the teacher's (see
    :func:`~torchcompress.distill.functional.hint_loss`). The adapter is a 1x1 convolution when
    the channels differ (``(N, C, H, W)`` features) and a linear layer when the last dimension
    differs (``(N, D)`` or ``(N, L, D)``); it is built by :meth:`prepare` on the student's device
    and dtype and trained with the student (the distiller hands it to the optimizer). The paper's
    two-stage schedule (hints first, then KD) is not reproduced: the terms train together.

    Args:
        adapter: ``"auto"`` (an adapter only when the shapes differ), ``"always"`` (also for equal
            shapes), or ``"never"`` (the shapes must match).

    Example:
        >>> import torch
        >>> loss = HintLoss()
        >>> s, t = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4)
        >>> loss.prepare(s, t)
        >>> loss.adapter
        Conv2d(8, 16, kernel_size=(1, 1), stride=(1, 1))
        >>> loss(s, t).shape
        torch.Size([])
    """

    default_input = None

    def __init__(self, adapter: str = "auto") -> None:
        super().__init__()
        if adapter not in ("auto", "always", "never"):
            raise ConfigError(
                f"HintLoss.adapter={adapter!r} is not one of: 'auto', 'always', 'never'."
                f"{did_you_mean(str(adapter), ['auto', 'always', 'never'])}"
            )
        self.mode = adapter
        self.adapter: nn.Module | None = None

    def prepare(self, student: Tensor, teacher: Tensor) -> None:
        """Build the adapter when the shapes differ (or always, as asked)."""
        if self.adapter is None and (
            self.mode == "always" or (self.mode == "auto" and student.shape != teacher.shape)
        ):
            self.adapter = _adapter(student, teacher).to(student.device, student.dtype)
        elif self.mode == "never":
            DF.hint_loss(student[:1], teacher[:1])  # the shape check
        super().prepare(student, teacher)

    def forward(self, student: Tensor, teacher: Tensor, target: Any = None) -> Tensor:
        """See the class."""
        if self.adapter is not None:
            student = self.adapter(student)
        return DF.hint_loss(student, teacher)


@DISTILL_LOSSES.register("at")
class AttentionTransferLoss(DistillLoss):
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR).

    The squared difference of the L2-normalised spatial attention maps ``mean_c |A_c|^p``, averaged
    over the batch and the positions (see :func:`~torchcompress.distill.functional.at_loss`); the
    paper's ``beta = 1000`` (the term's weight) goes with this form. Channel counts may differ;
    spatial sizes must match.

    Args:
        p: the exponent (2 in the paper).

    Example:
        >>> import torch
        >>> x = torch.randn(2, 4, 8, 8)
        >>> AttentionTransferLoss()(x, x).item()
        0.0
    """

    default_input = None

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        check_range("p", p, 0.0, low_inclusive=False, owner="AttentionTransferLoss")
        self.p = float(p)

    def prepare(self, student: Tensor, teacher: Tensor) -> None:
        """Check that the maps can be compared."""
        DF.at_loss(student[:1], teacher[:1], self.p)
        super().prepare(student, teacher)

    def forward(self, student: Tensor, teacher: Tensor, target: Any = None) -> Tensor:
        """See the class."""
        return DF.at_loss(student, teacher, self.p)


@DISTILL_LOSSES.register("rkd")
class RKDLoss(DistillLoss):
    """Relational KD (Park et al. 2019, "Relational Knowledge Distillation", CVPR).

    ``distance_weight * RKD-D + angle_weight * RKD-A`` on embeddings flattened per sample (see
    :func:`~torchcompress.distill.functional.rkd_loss`); the sizes of the two embeddings may
    differ. Without a module name it relates the logits; the paper uses the last embedding (name
    the penultimate module, e.g. ``"flatten"`` of a CIFAR ResNet).

    Args:
        distance_weight: weight of the distance term (25 in the paper).
        angle_weight: weight of the angle term (50 in the paper).

    Example:
        >>> import torch
        >>> e = torch.randn(8, 16)
        >>> RKDLoss()(e, e).item()
        0.0
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        _check_weight("RKDLoss", "distance_weight", distance_weight)
        _check_weight("RKDLoss", "angle_weight", angle_weight)
        if distance_weight == 0 and angle_weight == 0:
            raise ConfigError("RKDLoss: distance_weight and angle_weight are both 0.")
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def prepare(self, student: Tensor, teacher: Tensor) -> None:
        """Check that both sides have the same batch."""
        if student.shape[0] != teacher.shape[0]:
            raise ShapeError(
                f"RKD needs the same batch on both sides, got {student.shape[0]} and "
                f"{teacher.shape[0]}."
            )
        super().prepare(student, teacher)

    def forward(self, student: Tensor, teacher: Tensor, target: Any = None) -> Tensor:
        """See the class."""
        return DF.rkd_loss(student, teacher, self.distance_weight, self.angle_weight)


@DISTILL_LOSSES.register("dkd")
class DKDLoss(DistillLoss):
    """Decoupled KD (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR).

    ``alpha * TCKD + beta * NCKD``, both ``T^2``-scaled (see
    :func:`~torchcompress.distill.functional.dkd_terms`); ``alpha`` and ``beta`` keep the paper's
    names. The hard-label term is not included: add a ``"ce"`` term (the paper trains with
    ``CE + DKD``, the DKD term warmed up linearly over the first 20 epochs: a term's
    ``warmup_steps``).

    Args:
        alpha: weight of TCKD (1 in the paper).
        beta: weight of NCKD (8 on CIFAR-100 in the paper).
        temperature: ``T > 0`` (4 in the paper).

    Example:
        >>> import torch
        >>> z, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
        >>> round(DKDLoss()(z, z, y).item(), 6)
        0.0
    """

    needs_target = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        _check_weight("DKDLoss", "alpha", alpha)
        _check_weight("DKDLoss", "beta", beta)
        DF.check_temperature(temperature, owner="DKDLoss")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def forward(self, student: Tensor, teacher: Tensor, target: Any = None) -> Tensor:
        """See the class."""
        s, t, y = self._aligned(student, teacher, target)
        return DF.dkd_loss(s, t, y, self.alpha, self.beta, self.temperature)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, temperature={self.temperature:g}"


def build_loss(name: str, options: dict[str, Any] | None = None) -> DistillLoss:
    """An instance of the registered loss ``name`` with ``options`` as keyword arguments.

    Raises:
        ConfigError: an unknown loss name or option (both with the closest names).

    Example:
        >>> build_loss("kd", {"temperature": 2.0})
        KDLoss(temperature=2, alpha=0.9)
    """
    cls = DISTILL_LOSSES.get(name)
    options = dict(options or {})
    params = [
        p.name
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in options:
        if key not in params:
            raise ConfigError(
                f"The {name!r} distillation loss has no option {key!r} (options: "
                f"{', '.join(params) or 'none'}).{did_you_mean(str(key), params)}"
            )
    loss = cls(**options)
    if not isinstance(loss, DistillLoss):
        raise ConfigError(
            f"DISTILL_LOSSES[{name!r}] must build a DistillLoss, got {type(loss).__name__}."
        )
    return loss
