"""torchcompress: a PyTorch toolkit for model compression.

Quantization (PTQ, QAT, LSQ, PACT, k-means), sparsity and pruning (unstructured, N:M, structured
channel pruning that really shrinks the model), low-rank factorization, layer fusion,
FLOPs/params/size profiling, knowledge distillation, and the experiment utilities around them.

Every verb that changes a model takes the model first, then a typed config, then keyword arguments;
it modifies the model in place and returns it, so calls chain::

    import torchcompress as tc
    model = tc.fuse(model)
    report = tc.profile(model, torch.randn(1, 3, 32, 32))  # a table as str(); .to_dict()

Importing the package is light: the families are imported on first use (and nothing initialises
CUDA).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> module that defines it (imported lazily on first access). Names of the planned
# surface join this table when their family implements them.
_EXPORTS: dict[str, str] = {
    # foundation
    "save": "torchcompress.io",
    "load": "torchcompress.io",
    "profile": "torchcompress.profiling",
    "Profile": "torchcompress.profiling",
    "fuse": "torchcompress.fusion",
    "evaluate": "torchcompress.train",
    "finetune": "torchcompress.train",
    "seed_everything": "torchcompress.train",
    # quantization
    "IntSpec": "torchcompress.quant",
    "QuantConfig": "torchcompress.quant",
    "quantize": "torchcompress.quant",
    "prepare_qat": "torchcompress.quant",
    "convert": "torchcompress.quant",
    "kmeans_quantize": "torchcompress.quant",
    "export_onnx": "torchcompress.quant",
    "GPTQConfig": "torchcompress.quant",
    "gptq": "torchcompress.quant",
    "AWQConfig": "torchcompress.quant",
    "awq": "torchcompress.quant",
    "SmoothQuantConfig": "torchcompress.quant",
    "smoothquant": "torchcompress.quant",
    # sparsity and pruning
    "PruneConfig": "torchcompress.sparsity",
    "prune": "torchcompress.sparsity",
    "sparsity_report": "torchcompress.sparsity",
    "finalize": "torchcompress.sparsity",
    "SparsitySchedule": "torchcompress.sparsity",
    "SparseGPTConfig": "torchcompress.sparsity",
    "sparsegpt": "torchcompress.sparsity",
    "prune_channels": "torchcompress.sparsity",
    "ChannelPruneConfig": "torchcompress.sparsity",
    # low-rank
    "LowRankConfig": "torchcompress.lowrank",
    "factorize": "torchcompress.lowrank",
    "merge_lowrank": "torchcompress.lowrank",
    # distillation
    "Distiller": "torchcompress.distill",
    "DistillConfig": "torchcompress.distill",
}

# submodules reachable as attributes (tc.models, tc.data, tc.distill, ...)
_SUBMODULES = (
    "batches",
    "calibration",
    "config",
    "costs",
    "data",
    "distill",
    "errors",
    "forms",
    "fusion",
    "io",
    "lowrank",
    "models",
    "profiling",
    "progress",
    "quant",
    "recipe",
    "registry",
    "report",
    "select",
    "sparsity",
    "train",
)


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = _EXPORTS[name]
        if not _available(module):
            raise AttributeError(
                f"torchcompress.{name} is part of the planned surface but {module} is not built yet."
            )
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = f"torchcompress.{name}"
        if not _available(module):  # planned, not built yet: hasattr() is False, never an error
            raise AttributeError(
                f"torchcompress.{name} is part of the planned surface but is not built yet."
            )
        value = importlib.import_module(module)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'torchcompress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = (
    ["__version__"]
    + [n for n, m in _EXPORTS.items() if _available(m)]
    + [s for s in _SUBMODULES if _available(f"torchcompress.{s}")]
)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import data, errors, models  # noqa: F401
    from .fusion import fuse  # noqa: F401
    from .io import load, save  # noqa: F401
    from .profiling import Profile, profile  # noqa: F401
    from .train import evaluate, finetune, seed_everything  # noqa: F401
