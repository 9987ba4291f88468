"""Knowledge distillation: the losses, a distiller, and distillation as the recovery step.

A student is trained against a frozen teacher (eval mode, no gradient, never updated) with any
weighted mix of losses between the two models' logits or the outputs of named modules; with
``tc.finetune(student, data, teacher=teacher, distill=...)`` it is one argument, also under
``torchrun``, and the usual way to recover a compressed model is to make its uncompressed self the
teacher.

- Losses (:data:`DISTILL_LOSSES`, one registered class each, the maths in
  :mod:`torchcompress.distill.functional`): ``"kd"`` Hinton et al. 2015 (temperature, ``T^2``,
  KL with ``batchmean``, the hard-label term), ``"ce"`` (the hard labels alone), ``"logit_mse"``
  (Ba & Caruana 2014), ``"hint"`` FitNets (Romero et al. 2015, learned adapters when the shapes
  differ), ``"at"`` attention transfer (Zagoruyko & Komodakis 2017), ``"rkd"`` relational KD
  (Park et al. 2019, distance and angle), ``"dkd"`` decoupled KD (Zhao et al. 2022).
- :class:`Distiller` (the ``distill=`` protocol of :func:`torchcompress.finetune`),
  :func:`kd`, :func:`dkd`; :class:`DistillTerm`, :class:`DistillConfig` (typed, round-trip
  through dicts and recipes); :class:`TeacherCache` (teacher outputs per sample, keyed by content).

**The weights, one convention.** Every term has its own ``weight``; the total is
``sum(weight * term)``. Inside ``"kd"``, ``alpha`` weighs the distillation (soft-target) term and
``1 - alpha`` the hard-label cross-entropy: ``alpha * T^2 * KL + (1 - alpha) * CE``. The ``T^2``
factor is always applied. Every other loss is the distillation signal alone; add the labels as a
``"ce"`` term. In ``"dkd"``, ``alpha`` and ``beta`` are the paper's weights of TCKD and NCKD.

Example:
    >>> import copy, torch, torchcompress as tc
    >>> train, test = tc.data.digits(image_size=8, channels=1)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> model = tc.finetune(model, train, epochs=3, lr=0.1, progress=False)
    >>> teacher = copy.deepcopy(model).eval()            # the float model teaches its pruned self
    >>> model = tc.prune(model, tc.PruneConfig(sparsity=0.7))
    >>> model = tc.finetune(model, train, epochs=1, lr=0.02, progress=False,
    ...                     teacher=teacher, distill=tc.distill.kd(alpha=0.5))
    >>> tc.evaluate(model, test)["accuracy"] > 0.85
    True
"""

from __future__ import annotations

from . import functional
from .cache import TeacherCache
from .config import DistillConfig, DistillTerm
from .distiller import Distiller, dkd, feature_tensor, kd
from .losses import (
    DISTILL_LOSSES,
    AttentionTransferLoss,
    CrossEntropyLoss,
    DistillLoss,
    DKDLoss,
    HintLoss,
    KDLoss,
    LogitMSELoss,
    RKDLoss,
    build_loss,
)

__all__ = [
    "DISTILL_LOSSES",
    "AttentionTransferLoss",
    "CrossEntropyLoss",
    "DKDLoss",
    "DistillConfig",
    "DistillLoss",
    "DistillTerm",
    "Distiller",
    "HintLoss",
    "KDLoss",
    "LogitMSELoss",
    "RKDLoss",
    "TeacherCache",
    "build_loss",
    "dkd",
    "feature_tensor",
    "functional",
    "kd",
]
