"""Masks that last: a parametrization that keeps pruned weights exactly zero.

A pruned tensor (``weight``, and ``bias`` for filter pruning) is registered with
:func:`torch.nn.utils.parametrize.register_parametrization` and a :class:`Mask`: the module keeps the
dense ``original`` as its trainable parameter and a boolean ``mask`` buffer, and every access to
``module.weight`` returns ``where(mask, original, 0)``. Consequences:

- pruned entries are exactly zero in every forward, whatever the optimizer does to ``original``
  (their gradient is zero; momentum and weight decay cannot make them non-zero in the forward);
- the mask is a plain buffer in the ``state_dict`` (``<layer>.parametrizations.weight.0.mask``), so
  it survives ``state_dict``/``load_state_dict``, :func:`torchcompress.save`/:func:`torchcompress.load`,
  ``copy.deepcopy``, ``.to(device/dtype)``, DDP (a buffer) and ``torch.compile``;
- assigning ``module.weight = w`` stores ``w`` as the new original (the mask still applies);
- a deep copy of a masked module gets a class of its own (torch shares the generated
  ``Parametrized<Class>`` between copies, and removing a parametrization deletes its property from
  that class), so finalizing or re-masking a copy never touches the original, nor the reverse;
- when another family replaces a masked layer by its own module taking over the weight (a
  fake-quant layer), the mask moves onto the new module's weight (:func:`carry_masks`, registered
  with :mod:`torchcompress.forms`).

The original values under the mask are kept (not zeroed), as in ``torch.nn.utils.prune``: pruning
again with ``regrow=True`` can bring them back. Pickling a whole masked module (``torch.save(model)``)
is not supported by torch's parametrizations; use :func:`torchcompress.save`, a ``state_dict``, or
:func:`torchcompress.finalize` first.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.sparsity.masking import apply_mask, get_mask
    >>> lin = nn.Linear(4, 2)
    >>> _ = apply_mask(lin, "weight", torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool))
    >>> int((lin.weight == 0).sum()), get_mask(lin).sum().item()
    (4, 4)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import forms
from ..costs import lookup_cost, register_cost
from ..errors import CompressionStateError
from .costs import masked_cost

__all__ = [
    "Mask",
    "apply_mask",
    "bake_masks",
    "carry_masks",
    "ensure_cost_registered",
    "get_mask",
    "is_masked",
    "mask_parametrization",
    "masked_tensor_names",
    "original",
]


class Mask(nn.Module):
    """Parametrization ``x -> where(mask, x, 0)`` with a boolean ``mask`` buffer.

    Args:
        mask: boolean tensor of the parametrized tensor's shape (``True`` = kept).
    """

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def right_inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Assigning ``module.weight = x`` stores ``x`` as the original; the mask still applies."""
        return x

    def extra_repr(self) -> str:
        n = self.mask.numel()
        kept = int(self.mask.sum()) if n else 0
        return f"shape={tuple(self.mask.shape)}, kept={kept}/{n}"


def mask_parametrization(module: nn.Module, tensor_name: str = "weight") -> Mask | None:
    """The :class:`Mask` parametrizing ``module.<tensor_name>``, or ``None``."""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    plist = module.parametrizations[tensor_name]  # type: ignore[index]
    for p in plist:
        if isinstance(p, Mask):
            return p
    return None


def is_masked(module: nn.Module, tensor_name: str = "weight") -> bool:
    """Whether ``module.<tensor_name>`` carries a pruning mask."""
    return mask_parametrization(module, tensor_name) is not None


def masked_tensor_names(module: nn.Module) -> list[str]:
    """Names of the module's tensors that carry a pruning mask (``["weight"]``, ``["weight", "bias"]``)."""
    if not parametrize.is_parametrized(module):
        return []
    return [n for n in module.parametrizations if mask_parametrization(module, n) is not None]  # type: ignore[union-attr]


def get_mask(module: nn.Module, tensor_name: str = "weight") -> torch.Tensor | None:
    """The boolean keep-mask of ``module.<tensor_name>`` (shape of the tensor), or ``None``."""
    p = mask_parametrization(module, tensor_name)
    return None if p is None else p.mask


def original(module: nn.Module, tensor_name: str = "weight") -> torch.Tensor:
    """The unmasked tensor: the parametrization's ``original`` if masked, else the tensor itself."""
    if parametrize.is_parametrized(module, tensor_name):
        return module.parametrizations[tensor_name].original  # type: ignore[index,return-value]
    return getattr(module, tensor_name)


def apply_mask(module: nn.Module, tensor_name: str, mask: torch.Tensor) -> Mask:
    """Mask ``module.<tensor_name>`` with ``mask`` (replacing the current mask if there is one).

    Args:
        module: the layer (its class is swapped for torch's ``Parametrized<Class>`` subclass).
        tensor_name: ``"weight"`` or ``"bias"``.
        mask: boolean keep-mask of the tensor's shape.

    Returns:
        The :class:`Mask` parametrization.

    Raises:
        CompressionStateError: the tensor is missing or the mask does not have its shape.
    """
    current = original(module, tensor_name) if hasattr(module, tensor_name) else None
    if not isinstance(current, torch.Tensor):
        raise CompressionStateError(
            f"{type(module).__name__} has no tensor {tensor_name!r} to mask."
        )
    if tuple(mask.shape) != tuple(current.shape):
        raise CompressionStateError(
            f"Mask of shape {tuple(mask.shape)} does not fit {type(module).__name__}.{tensor_name} "
            f"of shape {tuple(current.shape)}."
        )
    mask = mask.to(device=current.device, dtype=torch.bool)
    existing = mask_parametrization(module, tensor_name)
    if existing is not None:
        with torch.no_grad():
            existing.mask.copy_(mask)
        return existing
    p = Mask(mask)
    _register(module, tensor_name, p)
    ensure_cost_registered(module)
    return p


def ensure_cost_registered(module: nn.Module) -> None:
    """Register :func:`~torchcompress.sparsity.costs.masked_cost` for ``module``'s (parametrized)
    class if its weight is masked, so :func:`torchcompress.profile` counts it honestly."""
    if get_mask(module) is None:
        return
    if lookup_cost(module) is not masked_cost:
        register_cost(type(module))(masked_cost)


_REGISTER_LOCK = threading.Lock()


def _register(module: nn.Module, tensor_name: str, p: Mask) -> None:
    """``register_parametrization`` keeping the parameter's autograd accumulator.

    torch re-sets the original with ``Tensor.set_`` even when it is unchanged (our right inverse is
    the identity), which gives the parameter a new gradient accumulator: DDP, which hooks the
    accumulators when it is constructed, would then never see that parameter's gradient, so masks
    could not be added during distributed training. Setting a tensor to itself is a no-op, so it is
    skipped; if torch's internals change, the plain registration is used.
    """
    maybe_set = getattr(parametrize, "_maybe_set", None)
    if maybe_set is None:  # pragma: no cover - other torch versions
        parametrize.register_parametrization(module, tensor_name, p)
        return

    def skip_self(dest: torch.Tensor, src: torch.Tensor) -> None:
        if dest is not src:
            maybe_set(dest, src)

    with _REGISTER_LOCK:
        parametrize._maybe_set = skip_self  # type: ignore[attr-defined]
        try:
            parametrize.register_parametrization(module, tensor_name, p)
        finally:
            parametrize._maybe_set = maybe_set  # type: ignore[attr-defined]
    _copies_get_own_class(type(module))


def _clone_class(cls: type) -> type:
    """A copy of a generated ``Parametrized<Class>`` (same bases, same attributes)."""
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    return type(cls.__name__, cls.__bases__, body)


def _copies_get_own_class(cls: type) -> None:
    """Make ``copy.deepcopy`` of a module of the generated class ``cls`` give the copy its own class.

    torch's parametrized class holds one property per parametrized tensor and
    ``remove_parametrizations`` deletes it from the class; a copy sharing the class would lose it
    when the original is finalized (or the reverse), and a mask added to one copy's bias would
    appear as a property on the other.
    """
    if cls.__dict__.get("_tc_private_copies"):
        return
    previous: Callable[[Any, dict[int, Any]], Any] = cls.__deepcopy__  # type: ignore[attr-defined]

    def deepcopy(self: nn.Module, memo: dict[int, Any]) -> nn.Module:
        replica = previous(self, memo)
        if type(replica) is type(self):
            replica.__class__ = _clone_class(type(self))
            ensure_cost_registered(replica)
        return replica

    cls.__deepcopy__ = deepcopy  # type: ignore[attr-defined]
    cls._tc_private_copies = True  # type: ignore[attr-defined]


def bake_masks(module: nn.Module) -> nn.Module:
    """Remove the module's pruning masks, leaving plain tensors with the zeros baked in.

    Only :class:`Mask` parametrizations are removed; a tensor that also carries other
    parametrizations (e.g. weight normalisation) cannot be baked separately and is an error.

    Raises:
        CompressionStateError: a masked tensor also carries another parametrization.
    """
    for name in masked_tensor_names(module):
        plist = module.parametrizations[name]  # type: ignore[index]
        if any(not isinstance(p, Mask) for p in plist):
            raise CompressionStateError(
                f"{type(module).__name__}.{name} carries parametrizations besides the pruning mask "
                f"({[type(p).__name__ for p in plist]}); remove those first."
            )
        if len(plist) != 1:  # several masks stacked by hand: apply them all
            with torch.no_grad():
                keep = plist[0].mask.clone()
                for p in list(plist)[1:]:
                    keep &= p.mask
                plist[0].mask.copy_(keep)
        # zero the original in place and drop the parametrization without torch's set_, so the
        # parameter keeps its identity and autograd accumulator (optimizers and DDP keep working)
        with torch.no_grad():
            plist.original.masked_fill_(~plist[0].mask, 0)
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    return module


def carry_masks(
    old: nn.Module, new: nn.Module, layout: Callable[[str, torch.Tensor], torch.Tensor]
) -> forms.Carried:
    """Put ``old``'s pruning masks on ``new``, the module replacing it (a form carrier).

    A mask moves onto the tensor of the same name when ``new`` stores it as a parameter (a
    fake-quant layer's float master weight, which the replacing family took over from the masked
    layer's original); ``layout(name, mask)`` gives it ``new``'s layout. Otherwise (a factorized
    layer computes its weight from dense factors) the mask is dropped, and the note says so.
    """
    names = masked_tensor_names(old)
    missing = [n for n in names if not _holds_tensor(new, n)]
    if missing:
        return forms.Carried(
            "masked",
            False,
            f"pruning mask of {', '.join(missing)} dropped: {type(new).__name__} holds no "
            f"{'/'.join(missing)} tensor to mask (prune it again with tc.prune)",
        )
    for n in names:
        mask = get_mask(old, n)
        if mask is not None:
            apply_mask(new, n, layout(n, mask))
    return forms.Carried("masked", True, f"pruning mask kept on {', '.join(names)}")


def _holds_tensor(module: nn.Module, name: str) -> bool:
    if parametrize.is_parametrized(module, name):
        return True
    return isinstance(module._parameters.get(name), torch.Tensor)


forms.register_recogniser("masked", lambda m: bool(masked_tensor_names(m)))
forms.register_carrier("masked", carry_masks)
