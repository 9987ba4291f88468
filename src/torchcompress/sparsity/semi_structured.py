"""2:4 Linear layers on torch's semi-structured sparse kernels (CUDA).

``torch.sparse.to_sparse_semi_structured`` stores a 2:4 weight compressed (half the values plus
metadata) and runs its matmuls on the sparse tensor cores of NVIDIA GPUs with compute capability 8.0
or newer (A100, H100, ...), in fp16/bf16 (and int8). It is an inference-time conversion: the result
is not a plain tensor, so save the model (``tc.save``) before converting. Speed-ups depend on the
shapes: small matmuls are padded and can be slower (pytorch#111339).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import DependencyError, UnsupportedModuleError
from ..select import matches
from .costs import describe_structure
from .masking import bake_masks, masked_tensor_names

__all__ = ["semi_structured_available", "to_semi_structured"]

log = logging.getLogger(__name__)

_DTYPES = (torch.float16, torch.bfloat16, torch.int8)


def semi_structured_available(device: torch.device | str | None = None) -> bool:
    """Whether torch's 2:4 semi-structured kernels can run on ``device`` (default: current CUDA)."""
    if not torch.cuda.is_available() or not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type != "cuda":
        return False
    return torch.cuda.get_device_capability(dev) >= (8, 0)


def _why_not(name: str, module: nn.Module) -> str | None:
    w = module.weight
    if w.device.type != "cuda" or not semi_structured_available(w.device):
        return f"{name!r} is on {w.device}; semi-structured kernels need a CUDA GPU with compute capability 8.0+"
    if w.dtype not in _DTYPES:
        return f"{name!r} is {w.dtype}; semi-structured kernels need float16, bfloat16 or int8 (call model.half())"
    if "2:4" not in describe_structure(w.detach()):
        return f"{name!r} is not 2:4 sparse (prune it with PruneConfig(pattern='2:4') first)"
    return None


def to_semi_structured(
    model: nn.Module, *, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[str]:
    """Convert 2:4-sparse Linear layers to semi-structured sparse weights, in place.

    Masks are baked in first. Layers named (exactly) in ``include`` that cannot be converted are an
    error; other layers that cannot are left dense and logged.

    Args:
        model: the model (on CUDA, in fp16/bf16).
        include: glob patterns of layers to convert (default: every Linear).
        exclude: glob patterns of layers to leave dense.

    Returns:
        The names of the converted layers.

    Raises:
        DependencyError: torch has no semi-structured sparsity or no capable GPU is present.
        UnsupportedModuleError: a layer named in ``include`` cannot be converted (the message says why).

    Example:
        >>> import torch, torchcompress as tc                       # doctest: +SKIP
        >>> model = nn.Sequential(nn.Linear(128, 128)).half().cuda()  # doctest: +SKIP
        >>> tc.prune(model, tc.PruneConfig(pattern="2:4"))            # doctest: +SKIP
        >>> tc.sparsity.to_semi_structured(model)                     # doctest: +SKIP
        ['0']
    """
    if not semi_structured_available():
        raise DependencyError(
            "2:4 semi-structured kernels need torch.sparse.to_sparse_semi_structured and a CUDA GPU "
            "with compute capability 8.0 or newer; none is available here."
        )
    from torch.sparse import to_sparse_semi_structured

    inc, exc = list(include or []), list(exclude or [])
    done: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or not isinstance(module, nn.Linear):
            continue
        if inc and not matches(name, inc):
            continue
        if exc and matches(name, exc):
            continue
        reason = _why_not(name, module)
        if reason is not None:
            if name in inc and masked_tensor_names(module):
                raise UnsupportedModuleError(f"Cannot convert {reason}.")
            log.info("semi-structured: %s left dense: %s", name, reason)
            continue
        bake_masks(module)
        try:
            sparse = to_sparse_semi_structured(module.weight.detach())
        except (RuntimeError, ValueError) as e:
            if name in inc:
                raise UnsupportedModuleError(
                    f"torch cannot convert {name!r} (weight {tuple(module.weight.shape)}): {e}"
                ) from e
            log.info("semi-structured: %s left dense: %s", name, e)
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        done.append(name)
    return done
