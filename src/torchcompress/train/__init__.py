"""Evaluation and fine-tuning: a plain, honest loop that also runs unchanged under ``torchrun``.

- :func:`evaluate`: top-1 (and top-k) accuracy and mean loss of a model on any iterable of batches,
  under ``torch.no_grad``, restoring every submodule's train/eval mode afterwards.
- :func:`finetune`: optimizer and learning-rate schedule by name (or your own), warmup, gradient
  clipping, regularizer terms, callbacks, an optional teacher for distillation (``distill=``, see
  :class:`Distillation`), per-epoch evaluation,
  logging and a progress bar. Launched by ``torchrun`` (or with ``ddp=True``) it wraps the model in
  ``DistributedDataParallel``, shards the data across ranks and averages the metrics.
- :func:`seed_everything`, :class:`Callback`, :class:`TrainState`.

Batches are whatever :mod:`torchcompress.batches` accepts: tensors, ``(inputs, targets)``
tuples/lists, or dicts of keyword arguments (Hugging Face style, ``"labels"`` is the target). Model
outputs may be tensors, tuples (the first element is the logits) or objects/dicts with ``.logits``.

The package: :mod:`~torchcompress.train.callbacks` (the light part the families import),
:mod:`~torchcompress.train.losses` (logits, the default loss, top-k correctness),
:mod:`~torchcompress.train.optim` (optimizers and schedules by name),
:mod:`~torchcompress.train.distributed` (DDP and sharding),
:mod:`~torchcompress.train.distillation` (the ``distill=`` protocol a teacher's loss follows),
:mod:`~torchcompress.train.evaluation`, :mod:`~torchcompress.train.finetuning` and
:mod:`~torchcompress.train.loop`.

Example:
    >>> import torch, torchcompress as tc
    >>> train, test = tc.data.digits(image_size=8, channels=1)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> model = tc.finetune(model, train, epochs=3, lr=0.1, progress=False)
    >>> tc.evaluate(model, test)["accuracy"] > 0.85
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it, imported on first access: importing
# torchcompress.train.callbacks (what the families do) does not load the loop.
_EXPORTS: dict[str, str] = {
    "OPTIMIZERS": "optim",
    "SCHEDULERS": "optim",
    "Callback": "callbacks",
    "Distillation": "distillation",
    "LambdaCallback": "callbacks",
    "TrainState": "callbacks",
    "default_loss": "losses",
    "evaluate": "evaluation",
    "extract_logits": "losses",
    "finetune": "finetuning",
    "is_causal_lm": "losses",
    "seed_everything": "environment",
    "training_history": "callbacks",
}

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "Callback",
    "Distillation",
    "LambdaCallback",
    "TrainState",
    "default_loss",
    "evaluate",
    "extract_logits",
    "finetune",
    "is_causal_lm",
    "seed_everything",
    "training_history",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .callbacks import Callback, LambdaCallback, TrainState, training_history
    from .distillation import Distillation
    from .environment import seed_everything
    from .evaluation import evaluate
    from .finetuning import finetune
    from .losses import default_loss, extract_logits, is_causal_lm
    from .optim import OPTIMIZERS, SCHEDULERS
