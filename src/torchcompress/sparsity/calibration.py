"""Gathering the statistics data-driven criteria need, in bounded memory.

One pass over ``data`` accumulates, for every targeted layer at once:

- ``input_sq``: the sum of squares of each input feature (a forward pre-hook on the layer; for
  convolutions per ``(in_channel, kernel tap)`` from strided slices, never an unfolded copy);
- ``grad_abs``: the sum over batches of ``|∂L/∂w|`` with respect to the *effective* (masked) weight,
  from ``torch.autograd.grad`` (parameters' ``.grad`` are left untouched);
- ``grad_sq``: the sum over samples of ``(∂L/∂w)²``, each batch split into single samples.

The model runs in eval mode (BatchNorm statistics and dropout do not drift or add noise) and every
module's train/eval flag is restored afterwards. Under ``torch.distributed`` the accumulators are
all-reduced, so every rank computes the same scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batches import Batch, batch_size, count_batches, iter_batches, run_model
from ..errors import CalibrationError, DataError
from ..progress import progress_bar
from ..select import module_device_dtype
from .criteria import LayerStats
from .layers import LayerKind
from .masking import mask_parametrization, original

__all__ = ["LossFn", "Target", "collect_statistics", "default_loss", "split_batch"]

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class Target:
    """One layer to prune: its qualified name, the module and its layer kind."""

    name: str
    module: nn.Module
    kind: LayerKind


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    raise DataError(
        f"Cannot find logits in the model output ({type(output).__name__}); pass loss_fn="
        "(output, target) -> scalar loss."
    )


def default_loss(output: Any, target: Any) -> torch.Tensor:
    """Cross-entropy of the output's logits against integer targets.

    A model output with a ``loss`` (Hugging Face, labels passed) is used as is when there is no
    target. Sequence logits ``(batch, length, classes)`` are flattened against ``(batch, length)``
    targets (``-100`` ignored).
    """
    if target is None:
        loss = getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor):
            return loss
        raise DataError(
            "The criterion needs a loss, but the batches have no targets. Pass (inputs, targets) "
            "batches, or loss_fn=(output, target) -> scalar."
        )
    logits = _logits(output)
    if not isinstance(target, torch.Tensor):
        raise DataError(
            f"Targets must be tensors for the default loss, got {type(target).__name__}."
        )
    if logits.dim() > 2:
        logits = logits.reshape(-1, logits.shape[-1])
        target = target.reshape(-1)
    return F.cross_entropy(logits.float(), target)


def split_batch(batch: Batch) -> list[Batch]:
    """Split a batch into single-sample batches (tensors whose leading dimension is the batch)."""
    size = batch_size(batch)

    def cut(obj: Any, i: int) -> Any:
        if isinstance(obj, torch.Tensor) and obj.dim() > 0 and obj.shape[0] == size:
            return obj[i : i + 1]
        if isinstance(obj, tuple):
            return tuple(cut(o, i) for o in obj)
        if isinstance(obj, list):
            return [cut(o, i) for o in obj]
        if isinstance(obj, dict):
            return {k: cut(v, i) for k, v in obj.items()}
        return obj

    if size <= 1:
        return [batch]
    return [
        Batch(args=cut(batch.args, i), kwargs=cut(batch.kwargs, i), target=cut(batch.target, i))
        for i in range(size)
    ]


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    for v in [*args, *kwargs.values()]:
        if isinstance(v, torch.Tensor):
            return v
    return None


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def collect_statistics(
    model: nn.Module,
    targets: Sequence[Target],
    needs: dict[str, set[str]],
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    max_batches: int | None = None,
    progress: bool | None = None,
) -> dict[str, LayerStats]:
    """Accumulate the statistics each target needs (``needs[name]``) over ``data``.

    Targets needing gradients must already carry a pruning mask (the gradient is taken with
    respect to the masked weight that the mask produces).

    Returns:
        ``{name: LayerStats}`` for every target (empty stats for those that need none).

    Raises:
        DataError: ``data`` is empty or a batch does not fit the model.
        CalibrationError: the loss is not a differentiable scalar depending on the weights.
    """
    stats = {t.name: LayerStats() for t in targets}
    want_in = [t for t in targets if "input_sq" in needs.get(t.name, ())]
    want_abs = [t for t in targets if "grad_abs" in needs.get(t.name, ())]
    want_sq = [t for t in targets if "grad_sq" in needs.get(t.name, ())]
    if not (want_in or want_abs or want_sq):
        return stats
    loss_fn = loss_fn or default_loss
    device, _ = module_device_dtype(model)
    modes = {m: m.training for m in model.modules()}
    handles: list[Any] = []
    grad_flags: list[tuple[torch.Tensor, bool]] = []
    captured: dict[str, list[torch.Tensor]] = {t.name: [] for t in [*want_abs, *want_sq]}
    input_acc: dict[str, torch.Tensor] = {}
    model.eval()
    try:
        # gradients with respect to the masked weight: capture it where the mask produces it
        for t in {id(t): t for t in [*want_abs, *want_sq]}.values():
            p = mask_parametrization(t.module, "weight")
            if p is None:  # pragma: no cover - prune() masks gradient targets first
                raise CalibrationError(f"Layer {t.name!r} must carry a mask before scoring.")
            orig = original(t.module, "weight")
            grad_flags.append((orig, orig.requires_grad))
            orig.requires_grad_(True)
            handles.append(
                p.register_forward_hook(
                    lambda _m, _i, out, name=t.name: (
                        captured[name].append(out) if out.requires_grad else None
                    )
                )
            )

        def add_input_hooks() -> None:
            for t in want_in:
                w = original(t.module, "weight")
                input_acc[t.name] = torch.zeros(
                    t.kind.input_stat_shape(t.module), dtype=torch.float32, device=w.device
                )

                def hook(
                    module: nn.Module,
                    args: tuple[Any, ...],
                    kwargs: dict[str, Any],
                    t: Target = t,
                ) -> None:
                    x = _first_tensor(args, kwargs)
                    if x is not None:
                        stats[t.name].rows += t.kind.accumulate_input_sq(
                            module, x, input_acc[t.name]
                        )

                handles.append(t.module.register_forward_pre_hook(hook, with_kwargs=True))

        def grads_of(loss: Any, wanted: Sequence[Target], index: int) -> dict[str, torch.Tensor]:
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise CalibrationError(
                    f"loss_fn must return a scalar tensor; batch {index} gave {type(loss).__name__}"
                    + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
                    + "."
                )
            names = [t.name for t in wanted if captured[t.name]]
            flat = [x for n in names for x in captured[n]]
            if not loss.requires_grad or not flat:
                raise CalibrationError(
                    f"The loss of batch {index} does not depend on the pruned weights (no gradient);"
                    " check loss_fn and that the model is not run under torch.no_grad()."
                )
            gs = torch.autograd.grad(loss.reshape(()), flat, allow_unused=True)
            out: dict[str, torch.Tensor] = {}
            i = 0
            for n in names:
                total = None
                for _ in captured[n]:
                    g = gs[i]
                    i += 1
                    if g is not None:
                        total = g.detach().float() if total is None else total + g.detach().float()
                if total is not None:
                    out[n] = total
            for n in captured:
                captured[n].clear()
            return out

        total = count_batches(data)
        if max_batches is not None and total is not None:
            total = min(total, max_batches)
        if want_in or want_abs:
            add_input_hooks()
            batches = iter_batches(data, max_batches=max_batches, device=device, what="data")
            for i, batch in enumerate(
                progress_bar(batches, desc="pruning: statistics", total=total, enabled=progress)
            ):
                if want_abs:
                    with torch.enable_grad():
                        out = run_model(model, batch, index=i, what="data")
                        loss = loss_fn(out, batch.target)
                        gs = grads_of(loss, want_abs, i)
                    for t in want_abs:
                        if t.name in gs:
                            g = t.kind.to_canonical(t.module, gs[t.name]).abs()
                            s = stats[t.name]
                            s.grad_abs = g if s.grad_abs is None else s.grad_abs + g
                            s.batches += 1
                else:
                    with torch.no_grad():
                        run_model(model, batch, index=i, what="data")
                for n in captured:
                    captured[n].clear()
            for h in handles[len(handles) - len(want_in) :]:
                h.remove()
            del handles[len(handles) - len(want_in) :]
        if want_sq:
            batches = iter_batches(data, max_batches=max_batches, device=device, what="data")
            for i, batch in enumerate(
                progress_bar(batches, desc="pruning: Fisher", total=total, enabled=progress)
            ):
                for sample in split_batch(batch):
                    with torch.enable_grad():
                        out = run_model(model, sample, index=i, what="data")
                        loss = loss_fn(out, sample.target)
                        gs = grads_of(loss, want_sq, i)
                    for t in want_sq:
                        if t.name in gs:
                            g = t.kind.to_canonical(t.module, gs[t.name]).pow(2)
                            s = stats[t.name]
                            s.grad_sq = g if s.grad_sq is None else s.grad_sq + g
                            s.samples += 1
    finally:
        for h in handles:
            h.remove()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode

    for t in want_in:
        if t.name in input_acc:
            stats[t.name].input_sq = t.kind.expand_input_stat(t.module, input_acc[t.name])
    if _distributed():
        _all_reduce(targets, stats, want_in, want_abs, want_sq)
    return stats


def _all_reduce(
    targets: Sequence[Target],
    stats: dict[str, LayerStats],
    want_in: Sequence[Target],
    want_abs: Sequence[Target],
    want_sq: Sequence[Target],
) -> None:
    """Sum every accumulator and count over ranks (same order on every rank)."""
    dist = torch.distributed
    for t in targets:
        s = stats[t.name]
        w = original(t.module, "weight")
        canon = tuple(t.kind.to_canonical(t.module, w).shape)
        for attr, count_attr, wanted in (
            ("input_sq", "rows", want_in),
            ("grad_abs", "batches", want_abs),
            ("grad_sq", "samples", want_sq),
        ):
            if t not in wanted:
                continue
            acc = getattr(s, attr)
            if acc is None:
                acc = torch.zeros(canon, dtype=torch.float32, device=w.device)
            acc = acc.contiguous()
            count = torch.tensor([float(getattr(s, count_attr))], device=w.device)
            dist.all_reduce(acc)
            dist.all_reduce(count)
            setattr(s, attr, acc)
            setattr(s, count_attr, int(count.item()))
