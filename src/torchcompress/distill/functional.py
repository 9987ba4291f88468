"""The maths of the distillation losses: pure functions of tensors.

Logits have their classes in the last dimension: ``(N, C)``, or ``(N, ..., C)`` (every position
is a row, as in token classification and language modelling). Features are ``(N, C, ...)``
(channels second, as torch's convolutions make them) or, for the relational losses, anything with
the batch first (flattened to ``(N, D)``). Every loss is computed in float32 at least (half-precision
inputs are upcast, float64 stays float64) and returns a scalar.

Conventions (stated once, used throughout):

- ``temperature`` softens both distributions; the Kullback-Leibler terms are multiplied by
  ``temperature ** 2`` so their gradients keep the same scale whatever the temperature (Hinton et
  al. 2015, section 2), always, also when no hard-label term is added.
- KL divergences are summed over the classes and averaged over the rows (PyTorch's
  ``reduction="batchmean"``), never averaged over the classes too.
- ``alpha`` in :func:`hinton_loss` weighs the distillation term and ``1 - alpha`` the hard-label
  cross-entropy. In :func:`dkd_loss`, ``alpha`` and ``beta`` are the paper's weights of its two
  terms (TCKD and NCKD).

Example:
    >>> import torch
    >>> from torchcompress.distill import functional as DF
    >>> t = torch.tensor([[2.0, 0.0, -1.0]])
    >>> DF.kd_loss(t, t).item()                     # student == teacher
    0.0
    >>> round(DF.kd_loss(torch.zeros(1, 3), t, temperature=1.0).item(), 4)  # log 3 - H(p_t)
    0.5743
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError, ShapeError

__all__ = [
    "IGNORE_INDEX",
    "at_loss",
    "attention_map",
    "check_temperature",
    "dkd_loss",
    "dkd_terms",
    "hint_loss",
    "hinton_loss",
    "kd_loss",
    "logit_mse",
    "pairwise_distances",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "soft_targets",
]

#: Label of rows that count in no loss (as in Hugging Face and ``F.cross_entropy``).
IGNORE_INDEX = -100


def check_temperature(temperature: float, *, owner: str = "") -> None:
    """Raise :class:`ConfigError` unless ``temperature`` is a finite number > 0."""
    prefix = f"{owner}." if owner else ""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ConfigError(
            f"{prefix}temperature={temperature!r} must be a finite number > 0 (1 leaves the "
            "logits as they are; Hinton et al. use 2-20, 4 is common)."
        )


def _f(t: Tensor) -> Tensor:
    """``t`` in float32 at least (float64 stays float64, half precision is upcast)."""
    return t if t.dtype == torch.float64 else t.float()


def _shape(t: Tensor) -> str:
    return f"({', '.join(str(s) for s in t.shape)})"


def _same_shape(student: Tensor, teacher: Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ShapeError(
            f"{what} needs student and teacher outputs of the same shape, got student "
            f"{_shape(student)} and teacher {_shape(teacher)}."
        )


def _rows(logits: Tensor, what: str) -> Tensor:
    if logits.dim() < 2:
        raise ShapeError(
            f"{what} needs logits with a batch and a class dimension (N, C), got {_shape(logits)}."
        )
    return _f(logits).reshape(-1, logits.shape[-1])


def _labels(target: Tensor, rows: int, classes: int, what: str) -> Tensor:
    if not isinstance(target, Tensor) or target.dtype.is_floating_point:
        raise DataError(
            f"{what} needs integer class labels, got "
            f"{type(target).__name__ if not isinstance(target, Tensor) else target.dtype}."
        )
    labels = target.reshape(-1)
    if labels.numel() != rows:
        raise ShapeError(
            f"{what}: {labels.numel()} labels for {rows} rows of logits; labels must have the "
            "logits' shape without the class dimension."
        )
    bad = (labels >= classes) | ((labels < 0) & (labels != IGNORE_INDEX))
    if bool(bad.any()):
        raise DataError(
            f"{what}: label {int(labels[bad][0])} is out of range for {classes} classes (labels "
            f"must be in 0..{classes - 1}, or {IGNORE_INDEX} for rows to ignore)."
        )
    return labels


def _row_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is not None:
        values = values[mask.reshape(-1).to(values.device)]
    if values.numel() == 0:  # every row ignored: no signal, not NaN
        return values.sum()
    return values.mean()


def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``softmax(logits / temperature)`` over the last dimension (in float32).

    Example:
        >>> import torch
        >>> soft_targets(torch.tensor([0.0, 0.0]), 4.0).tolist()
        [0.5, 0.5]
    """
    check_temperature(temperature)
    return F.softmax(_f(logits) / temperature, dim=-1)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    *,
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton et al. 2015's soft-target term: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.
    The KL divergence is summed over the classes and averaged over the rows (``batchmean``); the
    ``T^2`` factor keeps the gradient's scale independent of ``T``.

    Args:
        student_logits: ``(N, C)`` or ``(N, ..., C)``.
        teacher_logits: the same shape.
        temperature: ``T > 0``.
        mask: optional boolean per row (the logits' shape without ``C``): rows to count.

    Returns:
        A scalar (0 when the logits are equal).

    Raises:
        ConfigError: ``temperature <= 0``.
        ShapeError: the shapes differ.

    Example:
        >>> import torch
        >>> s, t = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
        >>> round(kd_loss(s, t, temperature=2.0).item(), 4)  # 4 * KL([.62, .38] || [.38, .62])
        0.4898
    """
    check_temperature(temperature)
    _same_shape(student_logits, teacher_logits, "The KD loss")
    s = _rows(student_logits, "The KD loss")
    t = _rows(teacher_logits, "The KD loss").to(s.device)
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    return temperature**2 * _row_mean(kl, mask)


def hinton_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """Hinton KD with its hard-label term: ``alpha * kd_loss + (1 - alpha) * CE(s, target)``.

    ``alpha`` weighs the distillation term, ``1 - alpha`` the cross-entropy with the labels
    (rows labelled ``-100`` count in neither term). With ``alpha = 1`` no target is needed. The
    ``T^2`` factor stays on the KL term whatever ``alpha`` is.

    Raises:
        ConfigError: ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``.
        DataError: ``alpha < 1`` and no integer labels, or a label out of range.

    Example:
        >>> import torch
        >>> s, t, y = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([1])
        >>> kd, ce = kd_loss(s, t, 2.0), torch.nn.functional.cross_entropy(s, y)
        >>> bool(torch.isclose(hinton_loss(s, t, y, 2.0, alpha=0.7), 0.7 * kd + 0.3 * ce))
        True
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ConfigError(f"alpha={alpha!r} must be in [0, 1] (the weight of the KD term).")
    check_temperature(temperature)
    _same_shape(student_logits, teacher_logits, "The KD loss")
    if alpha == 1:
        return kd_loss(student_logits, teacher_logits, temperature)
    if target is None:
        raise DataError(
            f"The KD loss with alpha={alpha} weighs the labels by {1 - alpha:g}, but the batch has "
            "no target; pass (inputs, targets) batches or alpha=1."
        )
    s = _rows(student_logits, "The KD loss")
    labels = _labels(target.to(s.device), s.shape[0], s.shape[1], "The KD loss")
    keep = labels != IGNORE_INDEX
    soft = kd_loss(student_logits, teacher_logits, temperature, mask=keep)
    hard = (
        F.cross_entropy(s, labels, ignore_index=IGNORE_INDEX) if bool(keep.any()) else s.sum() * 0
    )
    return alpha * soft + (1 - alpha) * hard


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared difference of the logits (Ba & Caruana 2014, "Do Deep Nets Really Need to be
    Deep?", NeurIPS): regression on the teacher's logits, averaged over every element.

    Raises:
        ShapeError: the shapes differ.

    Example:
        >>> import torch
        >>> logit_mse(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])).item()
        2.5
    """
    _same_shape(student_logits, teacher_logits, "The logit MSE loss")
    return F.mse_loss(_f(student_logits), _f(teacher_logits).to(student_logits.device))


def hint_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """FitNets' hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", ICLR): the mean
    squared difference between the (adapted) student features and the teacher's hint features.

    The paper writes ``1/2 ||u_h - r(v_g)||^2``; the mean over every element used here differs
    from it by a constant factor, which the term's weight absorbs. The adapter ``r`` (a learned
    1x1 convolution or linear map when the shapes differ) is applied by the caller (see
    :class:`~torchcompress.distill.losses.HintLoss`).

    Raises:
        ShapeError: the shapes differ (give the student an adapter).

    Example:
        >>> import torch
        >>> hint_loss(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)).item()
        1.0
    """
    _same_shape(student_features, teacher_features, "The hint (FitNets) loss")
    return F.mse_loss(_f(student_features), _f(teacher_features).to(student_features.device))


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """The spatial attention map of Zagoruyko & Komodakis 2017: ``mean_c |A_c|^p``, flattened per
    sample and divided by its L2 norm: ``(N, C, H, W) -> (N, H*W)``.

    Example:
        >>> import torch
        >>> attention_map(torch.ones(1, 2, 2, 2)).tolist()
        [[0.5, 0.5, 0.5, 0.5]]
    """
    if features.dim() < 3:
        raise ShapeError(
            "Attention transfer needs feature maps (N, C, H, W) (channels second, then spatial "
            f"positions), got {_shape(features)}; use it on convolutional features."
        )
    if isinstance(p, bool) or not isinstance(p, int | float) or not p > 0:
        raise ConfigError(f"p={p!r} must be a number > 0 (the paper uses 2).")
    q = _f(features).abs().pow(p).mean(dim=1).reshape(features.shape[0], -1)
    return F.normalize(q, p=2.0, dim=1)


def at_loss(student_features: Tensor, teacher_features: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR).

    The mean over the batch and the spatial positions of the squared difference of the two
    normalised attention maps (:func:`attention_map`), as the authors' code computes it (their
    ``beta = 1000`` goes with this form). The channel counts may differ; the spatial sizes must
    match.

    Raises:
        ShapeError: different batch or spatial sizes.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 4, 3, 3)
        >>> at_loss(x, 2 * x).item()  # the same map, up to scale
        0.0
    """
    s, t = attention_map(student_features, p), attention_map(teacher_features, p)
    if student_features.shape[0] != teacher_features.shape[0] or (
        student_features.shape[2:] != teacher_features.shape[2:]
    ):
        raise ShapeError(
            "Attention transfer needs student and teacher feature maps of the same batch and "
            f"spatial size, got student {_shape(student_features)} and teacher "
            f"{_shape(teacher_features)}; pair layers of the same resolution."
        )
    return (s - t.to(s.device)).pow(2).mean()


def pairwise_distances(embeddings: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of ``(N, D)`` embeddings: ``(N, N)``, 0 on the diagonal
    (with a gradient that stays finite where two rows coincide).

    Example:
        >>> import torch
        >>> pairwise_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0]])).tolist()
        [[0.0, 5.0], [5.0, 0.0]]
    """
    e = _f(embeddings).reshape(embeddings.shape[0], -1)
    d2 = (e.unsqueeze(1) - e.unsqueeze(0)).pow(2).sum(-1)
    off = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return torch.where(off, d2.clamp_min(eps).sqrt(), torch.zeros_like(d2))


def _batch(student: Tensor, teacher: Tensor, need: int, what: str) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ShapeError(
            f"{what} needs the same batch on both sides, got {student.shape[0]} student and "
            f"{teacher.shape[0]} teacher samples."
        )
    if student.shape[0] < need:
        raise DataError(
            f"{what} relates samples of a batch to each other and needs at least {need} per batch, "
            f"got {student.shape[0]}."
        )


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD's distance term (Park et al. 2019, "Relational Knowledge Distillation", CVPR).

    ``psi(i, j) = ||e_i - e_j|| / mu``, ``mu`` the mean distance over the pairs ``i != j`` of the
    batch; the Huber loss (``delta = 1``) between the student's and the teacher's ``psi``,
    averaged over the pairs ``i != j``. Embeddings are flattened per sample; their sizes may differ.

    Example:
        >>> import torch
        >>> e = torch.randn(5, 8)
        >>> rkd_distance_loss(3 * e, e).item() < 1e-10  # distances up to scale: the same relations
        True
    """
    _batch(student, teacher, 2, "The RKD distance loss")
    ds, dt = pairwise_distances(student), pairwise_distances(teacher).to(student.device)
    off = ~torch.eye(ds.shape[0], dtype=torch.bool, device=ds.device)
    ps = ds / ds[off].mean().clamp_min(1e-12)
    pt = dt / dt[off].mean().clamp_min(1e-12)
    return F.smooth_l1_loss(ps[off], pt[off])


def _angles(e: Tensor) -> Tensor:
    e = _f(e).reshape(e.shape[0], -1)
    u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2.0, dim=2)  # u[j, i] = unit(e_i - e_j)
    return torch.bmm(u, u.transpose(1, 2))  # [j, i, k] = cos of the angle at e_j


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD's angle term (Park et al. 2019): the cosine of the angle at ``e_j`` between ``e_i`` and
    ``e_k``, ``<unit(e_i - e_j), unit(e_k - e_j)>``, for every triplet of distinct samples; the
    Huber loss (``delta = 1``) between student and teacher, averaged over the triplets. Memory
    grows as ``N^2 * D + N^3``.

    Example:
        >>> import torch
        >>> e = torch.randn(4, 3)
        >>> rkd_angle_loss(2 * e + 1, e).item() < 1e-10  # angles survive scaling and shifting
        True
    """
    _batch(student, teacher, 3, "The RKD angle loss")
    a_s, a_t = _angles(student), _angles(teacher).to(student.device)
    n = a_s.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=a_s.device)
    distinct = ~(eye.unsqueeze(2) | eye.unsqueeze(0) | eye.unsqueeze(1))  # j!=i, i!=k, j!=k
    return F.smooth_l1_loss(a_s[distinct], a_t[distinct])


def rkd_loss(
    student: Tensor, teacher: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> Tensor:
    """Relational KD: ``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``
    (Park et al. 2019; 25 and 50 are the paper's weights).

    Example:
        >>> import torch
        >>> e = torch.randn(6, 4)
        >>> rkd_loss(e, e).item()
        0.0
    """
    total = _f(student.new_zeros(()))
    if distance_weight:
        total = total + distance_weight * rkd_distance_loss(student, teacher)
    if angle_weight:
        total = total + angle_weight * rkd_angle_loss(student, teacher)
    return total


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """The two terms of decoupled KD, each multiplied by ``T^2``: ``(TCKD, NCKD)``.

    Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR. With ``p = softmax(z/T)`` and
    ``g`` the labelled class: TCKD is the KL divergence between the binary distributions
    ``(p_g, 1 - p_g)`` of teacher and student; NCKD the KL divergence between their distributions
    over the other classes, renormalised (``softmax`` of the non-target logits). Per row,
    ``KL(p_t || p_s) = TCKD + (1 - p_t,g) * NCKD`` (the paper's eq. 1). Both are averaged over the
    labelled rows (``-100`` rows are left out).

    Raises:
        ConfigError: ``temperature <= 0``.
        ShapeError: different shapes, or fewer than two classes.
        DataError: no integer labels, or a label out of range.

    Example:
        >>> import torch
        >>> t = torch.tensor([[3.0, 1.0, 0.0]])
        >>> [round(v.item(), 6) for v in dkd_terms(t, t, torch.tensor([0]))]
        [0.0, 0.0]
    """
    check_temperature(temperature)
    _same_shape(student_logits, teacher_logits, "The DKD loss")
    s = _rows(student_logits, "The DKD loss") / temperature
    t = _rows(teacher_logits, "The DKD loss").to(s.device) / temperature
    m, c = s.shape
    if c < 2:
        raise ShapeError(
            f"The DKD loss needs at least 2 classes, got logits {_shape(student_logits)}."
        )
    if target is None:
        raise DataError(
            "The DKD loss needs the labels (the target class of each row); the batch has none."
        )
    labels = _labels(target.to(s.device), m, c, "The DKD loss")
    keep = labels != IGNORE_INDEX
    s, t, labels = s[keep], t[keep], labels[keep]
    if labels.numel() == 0:
        zero = s.sum() * 0
        return zero, zero
    gt = F.one_hot(labels, c).bool()
    n = labels.numel()

    def split(z: Tensor) -> tuple[Tensor, Tensor]:
        lse = torch.logsumexp(z, dim=1)
        others = z[~gt].reshape(n, c - 1)
        binary = torch.stack(
            [z[gt] - lse, torch.logsumexp(others, dim=1) - lse], dim=1
        )  # log (p_g, 1 - p_g)
        return binary, F.log_softmax(others, dim=1)

    bs, ns = split(s)
    bt, nt = split(t)
    tckd = F.kl_div(bs, bt, reduction="none", log_target=True).sum(1).mean()
    nckd = F.kl_div(ns, nt, reduction="none", log_target=True).sum(1).mean()
    return temperature**2 * tckd, temperature**2 * nckd


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD (Zhao et al. 2022): ``alpha * TCKD + beta * NCKD`` (see :func:`dkd_terms`);
    the paper's CIFAR settings are ``alpha = 1``, ``beta = 8``, ``T = 4``.

    Example:
        >>> import torch
        >>> s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
        >>> tckd, nckd = dkd_terms(s, t, y)
        >>> bool(torch.isclose(dkd_loss(s, t, y, alpha=1.0, beta=8.0), tckd + 8 * nckd))
        True
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd
