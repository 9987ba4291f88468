"""Recipes: a compression pipeline as a file you can rerun, and the report it writes.

A recipe (YAML or JSON) lists steps — load a model, load data, fuse, prune, finalize, factorize,
quantize, prepare_qat, finetune, convert, kmeans_quantize, merge_lowrank, export, evaluate,
profile, save — each parsed into the same typed config the Python call takes, so a recipe and a
script are one-to-one::

    steps:
      - model: resnet20
      - data: digits(image_size=16)
      - finetune: {epochs: 4, lr: 0.05}
      - prune: {sparsity: 0.5, criterion: l1, pattern: channel}
      - finetune: {epochs: 1}
    variants: []              # optional: more pipelines, compared side by side

- :func:`load` / :func:`loads` read a recipe and check it before anything runs (unknown keys and
  steps with the closest names, types, values, impossible orders, models and data that do not
  import, missing files); every message names the file, the step and the key.
- :func:`dump` / :func:`dumps` write steps (or a :class:`Recipe`) back as YAML.
- :func:`run` runs it and writes ``report.md``, ``report.json`` and plots to the output folder
  (``torchcompress run RECIPE --out DIR`` on the command line).
- :data:`STEPS` is the registry of step kinds (:func:`register_step` adds one).

Example:
    >>> import torchcompress as tc
    >>> from torchcompress import recipe
    >>> steps = [
    ...     recipe.ModelStep(factory="torchcompress.testing:TinyCNN", input_shape=(1, 3, 8, 8)),
    ...     recipe.PruneStep(tc.PruneConfig(sparsity=0.5)),
    ...     recipe.ProfileStep(),
    ... ]
    >>> print(recipe.dumps(steps), end="")
    steps:
    - model:
        factory: torchcompress.testing:TinyCNN
        input_shape: [1, 3, 8, 8]
    - prune:
        config:
          sparsity: 0.5
    - profile: {}
    >>> result = recipe.run(steps, latency=False)
    >>> result.rows()[1]["nonzero_params"] < result.rows()[0]["nonzero_params"]
    True
"""

from __future__ import annotations

from . import steps_channels as _steps_channels  # noqa: F401
from . import steps_compress as _steps_compress  # noqa: F401
from . import steps_distill as _steps_distill  # noqa: F401
from . import steps_io as _steps_io  # noqa: F401  (registers the steps)
from .document import LatencyConfig, Recipe, Variant, dump, dumps, load, loads, validate
from .runner import Branch, InternalStepError, RunResult, StepRecord, run
from .specs import DATASETS, DataBundle
from .steps import PLANNED, STEPS, CheckEnv, Step, StepContext, register_step
from .steps_channels import PruneChannelsStep
from .steps_compress import (
    ConvertStep,
    FactorizeStep,
    FinalizeStep,
    FinetuneStep,
    FuseStep,
    KMeansStep,
    MergeLowRankStep,
    PrepareQatStep,
    PruneStep,
    QuantizeStep,
)
from .steps_distill import DistillStep
from .steps_io import DataStep, EvaluateStep, ExportStep, ModelStep, ProfileStep, SaveStep

__all__ = [
    "DATASETS",
    "PLANNED",
    "STEPS",
    "Branch",
    "CheckEnv",
    "ConvertStep",
    "DataBundle",
    "DataStep",
    "DistillStep",
    "EvaluateStep",
    "ExportStep",
    "FactorizeStep",
    "FinalizeStep",
    "FinetuneStep",
    "FuseStep",
    "InternalStepError",
    "KMeansStep",
    "LatencyConfig",
    "MergeLowRankStep",
    "ModelStep",
    "PrepareQatStep",
    "ProfileStep",
    "PruneChannelsStep",
    "PruneStep",
    "QuantizeStep",
    "Recipe",
    "RunResult",
    "SaveStep",
    "Step",
    "StepContext",
    "StepRecord",
    "Variant",
    "dump",
    "dumps",
    "load",
    "loads",
    "register_step",
    "run",
    "validate",
]
