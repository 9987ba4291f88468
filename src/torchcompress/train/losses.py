"""Logits, the default loss and top-k correctness: the one place the package finds them.

- :func:`extract_logits`: the logits in any model output (tensor, tuple, ``ModelOutput``, dict).
- :func:`default_loss`: the cross-entropy a criterion or a loop uses when the user gives no loss
  (or the loss a Hugging Face model returned when the batch has no target).
- :func:`is_causal_lm`: whether a model is a Hugging Face causal language model, whose labels are
  the input tokens and are shifted by one position before the loss (as the model's own loss does).

Targets follow Hugging Face's conventions: integer labels, ``-100`` marks positions to ignore;
class-last logits ``(N, ..., C)`` against labels ``(N, ...)``, or class-second logits
``(N, C, ...)`` (the torch convention, e.g. segmentation); soft labels ``(N, C)`` for ``(N, C)``
logits.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> round(default_loss(logits, torch.tensor([0, 1])).item(), 4)
    0.1269
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, TorchCompressError

__all__ = ["IGNORE_INDEX", "default_loss", "extract_logits", "is_causal_lm"]

#: Label of positions that count neither in the loss nor in the accuracy (as in Hugging Face).
IGNORE_INDEX = -100

LossFn = Callable[[Any, Any], torch.Tensor]

# Hugging Face model types listed as causal LMs whose own loss does not shift the labels (XLNet's
# permutation LM predicts the labels at their own positions).
_UNSHIFTED_CAUSAL_TYPES = frozenset({"xlnet"})


def extract_logits(output: Any) -> torch.Tensor | None:
    """The logits in a model output: the tensor itself, ``output.logits`` (Hugging Face
    ``ModelOutput``), ``output["logits"]``, or the first element of a tuple/list; else ``None``.

    Example:
        >>> import torch
        >>> extract_logits((torch.zeros(2, 3), "aux")).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping):
        v = output.get("logits")
        return v if isinstance(v, torch.Tensor) else None
    if isinstance(output, tuple | list) and output:
        return extract_logits(output[0])
    return None


def describe(x: Any) -> str:
    """A short description of a value for error messages (``"float32 tensor (2, 3)"``)."""
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).replace('torch.', '')} tensor {tuple(x.shape)}"
    return type(x).__name__


# --- causal language models ----------------------------------------------------------------------


def _hf_causal_lm_classes() -> frozenset[str]:
    """Class names Hugging Face's ``AutoModelForCausalLM`` builds (empty without transformers)."""
    if "transformers" not in sys.modules:  # an HF model implies transformers is imported
        return frozenset()
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - an old or partial transformers
        return frozenset()
    names: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    return frozenset(names)


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face causal language model (its labels are shifted by one).

    Hugging Face's own notion: the model's class (or a base class) is one that
    ``AutoModelForCausalLM`` builds, or the loss it selected for itself (``model.loss_type``) is
    ``"ForCausalLM"``; encoder-decoder models (whose decoder inputs are shifted, not the labels)
    and models whose own loss does not shift (XLNet) are not. Such a model's loss predicts token
    ``t + 1`` from the logits at position ``t``, so the default loss and accuracy of
    :func:`~torchcompress.train.evaluate` and :func:`~torchcompress.train.finetune` shift the same
    way. DDP and DataParallel wrappers are looked through.

    Example:
        >>> import torch
        >>> is_causal_lm(torch.nn.Linear(2, 2))
        False
    """
    while isinstance(getattr(model, "module", None), nn.Module) and not hasattr(model, "config"):
        model = model.module  # DDP / DataParallel
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "model_type", None) in _UNSHIFTED_CAUSAL_TYPES:
        return False
    if getattr(model, "loss_type", None) == "ForCausalLM":
        return True
    causal = _hf_causal_lm_classes()
    return any(cls.__name__ in causal for cls in type(model).__mro__)


def shift_for_next_token(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Align causal-LM logits ``(N, L, C)`` with labels ``(N, L)``: position ``t`` predicts ``t+1``.

    Other shapes are returned unchanged (the layout check then reports them).
    """
    if (
        isinstance(target, torch.Tensor)
        and logits.dim() >= 3
        and target.dim() == logits.dim() - 1
        and tuple(target.shape) == tuple(logits.shape[:-1])
    ):
        return logits[..., :-1, :], target[..., 1:]
    return logits, target


# --- layouts, labels ------------------------------------------------------------------------------


def class_layout(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Flatten (scores, labels) to ``(M, C)`` and ``(M,)`` for integer labels, or ``None``.

    Accepts class-last logits ``(N, ..., C)`` with labels ``(N, ...)`` (classification, and token
    classification / language modelling as in Hugging Face) and class-second logits ``(N, C, ...)``
    with labels ``(N, ...)`` (the torch convention, e.g. segmentation).
    """
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.is_complex():
        return None
    if logits.dim() < 2 or not logits.is_floating_point():
        return None
    if tuple(target.shape) == tuple(logits.shape[:-1]):
        if logits.dim() == 2:  # the common case: nothing to reshape
            return logits, target
        return logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    if logits.dim() > 2 and tuple(target.shape) == (logits.shape[0], *logits.shape[2:]):
        return logits.movedim(1, -1).reshape(-1, logits.shape[1]), target.reshape(-1)
    return None


def label_error(where: str, label: int, classes: int) -> DataError:
    """The error for a label outside ``0..classes-1`` (``where``: e.g. ``"Batch 3 of data"``)."""
    return DataError(
        f"{where} has the label {label}, but the model's output has {classes} classes: labels "
        f"must be in 0..{classes - 1}, or {IGNORE_INDEX} for positions to ignore. Check the labels "
        "(or the model's output size), or pass loss_fn=... for another kind of target."
    )


class LabelCheck(NamedTuple):
    """Labels out of range in a batch on an accelerator, found without a host synchronisation.

    On CPU the cross-entropy checks its labels itself (and the error is raised at once); on other
    devices it would fail with an unrecoverable device-side assertion, so the offending labels are
    left out of the loss and counted here, and the caller raises :meth:`error` once it
    synchronises anyway.

    Attributes:
        bad: int64 scalar tensor: how many labelled positions are out of range.
        label: the largest offending label (meaningful when ``bad > 0``).
        classes: the number of classes the logits have.
    """

    bad: torch.Tensor
    label: torch.Tensor
    classes: int

    def error(self, where: str) -> DataError:
        """The :class:`DataError` naming ``where``, an offending label and the classes."""
        return label_error(where, int(self.label), self.classes)


def _checks_its_labels(device: torch.device) -> bool:
    """Whether the cross-entropy on ``device`` raises a catchable error for a bad label."""
    return device.type == "cpu"


def _bad_labels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return (labels >= classes) | ((labels < 0) & (labels != IGNORE_INDEX))


def cross_entropy(
    scores: torch.Tensor, labels: torch.Tensor, *, where: str, reduction: str = "mean"
) -> tuple[torch.Tensor, LabelCheck | None]:
    """``F.cross_entropy(scores.float(), labels)`` (``-100`` ignored) with labels checked.

    Returns the loss and, off the CPU, a :class:`LabelCheck` (``None`` on CPU, where a label out of
    range raises the :class:`DataError` naming ``where`` at once).
    """
    classes = scores.shape[-1]
    if _checks_its_labels(labels.device):
        try:
            loss = F.cross_entropy(
                scores.float(), labels, ignore_index=IGNORE_INDEX, reduction=reduction
            )
        except IndexError as e:  # "Target ... is out of bounds"
            bad = _bad_labels(labels, classes)
            if not bool(bad.any()):
                raise
            raise label_error(where, int(labels[bad].max()), classes) from e
        return loss, None
    bad = _bad_labels(labels, classes)
    lowest = torch.iinfo(labels.dtype).min
    check = LabelCheck(bad.sum(), torch.where(bad, labels, lowest).max(), classes)
    safe = labels.masked_fill(bad, IGNORE_INDEX)
    return F.cross_entropy(
        scores.float(), safe, ignore_index=IGNORE_INDEX, reduction=reduction
    ), check


# --- losses ----------------------------------------------------------------------------------------


def _no_logits(index: int, what: str, output: Any) -> DataError:
    return DataError(
        f"Batch {index} of {what}: the model returned {describe(output)}, which holds no logits "
        "(a tensor, a tuple starting with one, or an object with .logits). Pass loss_fn=..."
    )


def _no_target(index: int, what: str, target: Any) -> DataError:
    return DataError(
        f"Batch {index} of {what} has no target tensor (got {describe(target)}); the default "
        "cross-entropy needs (inputs, targets) batches or dict batches with 'labels' (a single "
        "(inputs, targets) tuple passed as the data is iterated element by element: wrap it in "
        "a list). Pass loss_fn=... for another kind of target."
    )


def task_loss(
    logits: torch.Tensor | None,
    target: Any,
    *,
    index: int,
    what: str,
    output: Any,
    mean: bool = False,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, LabelCheck | None]:
    """The default cross-entropy of one batch, for the trainer.

    Returns ``(loss, count, check)``: with ``mean`` (training) the mean over the labelled positions
    and ``count`` ``None``; else (evaluation) the sum and the number of labelled positions it sums
    over. ``check``: see :func:`cross_entropy` (``None`` on CPU and for soft labels). With ``causal``
    the logits at position ``t`` are scored against the label at ``t + 1``.
    """
    if logits is None:
        raise _no_logits(index, what, output)
    if not isinstance(target, torch.Tensor):
        raise _no_target(index, what, target)
    target = target.to(logits.device)
    if causal:
        logits, target = shift_for_next_token(logits, target)
    layout = class_layout(logits, target)
    if layout is not None:
        scores, labels = layout
        where = f"Batch {index} of {what}"
        if mean and scores is logits:  # (N, C): the plain call, as a hand-written loop makes it
            loss, check = cross_entropy(scores, labels, where=where)
            return loss, None, check
        loss, check = cross_entropy(scores, labels, where=where, reduction="sum")
        count = (labels != IGNORE_INDEX).sum()
        if mean:  # a batch whose positions are all -100 contributes 0, not NaN
            return loss / count.clamp_min(1), None, check
        return loss, count, check
    if target.is_floating_point() and target.shape == logits.shape and logits.dim() == 2:
        if mean:  # soft labels
            return F.cross_entropy(logits.float(), target.float()), None, None
        loss = F.cross_entropy(logits.float(), target.float(), reduction="sum")
        return loss, torch.tensor(logits.shape[0], device=logits.device), None
    raise DataError(
        f"Batch {index} of {what}: cannot take the cross-entropy of the model output "
        f"({describe(logits)}) against the target ({describe(target)}); expected logits (N, C) "
        "with integer labels (N,) (or (N, ..., C) with (N, ...)). Pass loss_fn=... for other tasks."
    )


def model_loss(output: Any, *, index: int, what: str) -> torch.Tensor:
    """The ``.loss`` (or ``["loss"]``) a model returned, for ``loss_fn="model"``."""
    loss = model_loss_or_none(output)
    if loss is None:
        raise DataError(
            f"Batch {index} of {what}: loss_fn='model' uses the loss the model returns, but its output "
            f"({describe(output)}) has no .loss; pass dict batches with 'labels' to a model that "
            "computes its loss (e.g. a Hugging Face *For... model)."
        )
    return loss


def user_loss(loss_fn: LossFn, output: Any, target: Any, *, index: int, what: str) -> torch.Tensor:
    """``loss_fn(output, target)``, its failures turned into a :class:`DataError` naming the batch."""
    try:
        loss = loss_fn(output, target)
    except TorchCompressError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        raise DataError(
            f"Batch {index} of {what}: loss_fn failed on the model output ({describe(output)}) and "
            f"target ({describe(target)}): {e}"
        ) from e
    if not isinstance(loss, torch.Tensor):
        raise DataError(
            f"Batch {index} of {what}: loss_fn returned {describe(loss)}; it must return a tensor."
        )
    return loss


def default_loss(output: Any, target: Any, *, causal: bool = False) -> torch.Tensor:
    """The default scalar loss of a model output: cross-entropy, or the model's own loss.

    With a target: the cross-entropy of the output's logits (see :func:`extract_logits`) against
    it, averaged over the labelled positions (``-100`` ignored); class-last ``(N, ..., C)`` and
    class-second ``(N, C, ...)`` logits and soft ``(N, C)`` targets are accepted; ``causal`` scores
    position ``t`` against the label at ``t + 1`` (see :func:`is_causal_lm`). Without a target
    (``None``): the ``.loss`` the model returned (a Hugging Face model given ``labels``). This is
    what data-driven criteria use when no ``loss_fn`` is given.

    Args:
        output: the model's output.
        target: the batch's target, or ``None``.
        causal: shift for next-token prediction.

    Returns:
        A scalar tensor.

    Raises:
        DataError: no logits, no usable target, labels out of range, or no ``.loss`` without a
            target.

    Example:
        >>> import torch
        >>> out = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])          # (N=1, L=2, C=2)
        >>> round(default_loss(out, torch.tensor([[0, -100]])).item(), 4)
        0.3133
    """
    if target is None:
        loss = model_loss_or_none(output)
        if loss is not None:
            return loss
        raise DataError(
            "The loss needs targets, but the batch has none and the model returned no .loss. Pass "
            "(inputs, targets) batches, dict batches with 'labels', or loss_fn=(output, target) -> "
            "scalar."
        )
    logits = extract_logits(output)
    if logits is None:
        raise DataError(
            f"Cannot find logits in the model output ({describe(output)}); pass loss_fn="
            "(output, target) -> scalar loss."
        )
    if not isinstance(target, torch.Tensor):
        raise DataError(
            f"Targets must be tensors for the default loss, got {type(target).__name__}; pass "
            "loss_fn=(output, target) -> scalar loss."
        )
    if causal:
        logits, target = shift_for_next_token(logits, target)
    target = target.to(logits.device)
    layout = class_layout(logits, target)
    if layout is not None:
        scores, labels = layout
        loss, check = cross_entropy(scores, labels, where="A target")
        if check is not None and int(check.bad):
            raise check.error("A target")
        return loss
    if target.is_floating_point() and target.shape == logits.shape and logits.dim() == 2:
        return F.cross_entropy(logits.float(), target.float())  # soft labels
    raise DataError(
        f"Cannot take the cross-entropy of the model output ({describe(logits)}) against the "
        f"target ({describe(target)}); expected logits (N, C) with integer labels (N,) (or "
        "(N, ..., C) with (N, ...)). Pass loss_fn=(output, target) -> scalar loss."
    )


def model_loss_or_none(output: Any) -> torch.Tensor | None:
    """The ``.loss`` of a model output when it has one (a tensor), else ``None``."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    return loss if isinstance(loss, torch.Tensor) else None


def correct_topk(
    logits: torch.Tensor | None,
    target: Any,
    ks: Sequence[int],
    soft_ok: bool,
    *,
    causal: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """Correct predictions for each k and the number of labelled positions, or ``None``.

    ``None`` when the output holds no class scores for the target (e.g. regression).
    """
    if logits is None or not isinstance(target, torch.Tensor):
        return None
    target = target.to(logits.device)
    if causal:
        logits, target = shift_for_next_token(logits, target)
    layout = class_layout(logits, target)
    if layout is None:
        if (
            soft_ok
            and target.is_floating_point()
            and target.shape == logits.shape
            and logits.dim() == 2
        ):
            layout = (logits, target.argmax(dim=1))
        else:
            return None
    scores, labels = layout
    valid = labels != IGNORE_INDEX
    if tuple(ks) == (1,):
        return [((scores.argmax(dim=-1) == labels) & valid).sum()], valid.sum()
    kmax = min(max(ks), scores.shape[-1])
    top = scores.topk(kmax, dim=-1).indices  # (M, kmax)
    hits = top == labels.unsqueeze(-1)
    out = [(hits[:, : min(k, kmax)].any(dim=-1) & valid).sum() for k in ks]
    return out, valid.sum()
