"""Evaluation: :func:`evaluate`, top-k accuracy and mean loss on any iterable of batches.

Example:
    >>> import torch, torchcompress as tc
    >>> model = torch.nn.Linear(4, 3)
    >>> r = tc.evaluate(model, [(torch.randn(8, 4), torch.randint(0, 3, (8,)))])
    >>> r["samples"], r["batches"]
    (8, 1)
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from ..batches import Batch, batch_size, count_batches, iter_batches, run_model
from ..errors import ConfigError, DataError, check_range
from ..progress import progress_enabled
from .distributed import eval_dist, shard, unwrap
from .environment import Modes, progress_bar, resolve_device
from .losses import (
    LabelCheck,
    correct_topk,
    extract_logits,
    is_causal_lm,
    model_loss,
    task_loss,
    user_loss,
)

__all__ = ["evaluate"]

LossFn = Callable[[Any, Any], torch.Tensor]


def check_topk(topk: Sequence[int]) -> tuple[int, ...]:
    if isinstance(topk, int):
        topk = (topk,)
    ks = tuple(topk)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"topk={topk!r} must be positive ints, e.g. (1, 5).")
    return ks if 1 in ks else (1, *ks)


def check_loss_fn(loss_fn: Any) -> None:
    if loss_fn is None or loss_fn == "model" or callable(loss_fn):
        return
    raise ConfigError(
        f"loss_fn must be None (cross-entropy), 'model' (the loss the model returns) or a callable "
        f"loss_fn(output, target), got {loss_fn!r}."
    )


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: LossFn | str | None = None,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    progress: bool | None = None,
    topk: Sequence[int] = (1,),
    ddp: bool | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy and mean loss of ``model`` on ``data``, without gradients.

    The model runs in eval mode under ``torch.no_grad``; afterwards every submodule is back in the
    train/eval mode it was in. Accuracy counts ``argmax(logits) == target`` over every labelled
    position (positions labelled -100 are ignored, as in Hugging Face); it is ``None`` when the output
    holds no class scores for the targets (e.g. regression). The loss is the mean per labelled
    position for the default cross-entropy, and the batch-size-weighted mean of ``loss_fn`` otherwise
    (``loss_fn`` returning a batch mean, as torch losses do by default).

    For a Hugging Face causal language model (see :func:`~torchcompress.train.losses.is_causal_lm`)
    the labels are the input tokens, as for the model's own loss: the logits at position ``t`` are
    scored against the label at ``t + 1``, for the loss and the accuracy alike, so the default loss
    is the model's own ``.loss`` averaged over all labelled tokens. A ``loss_fn`` is used as given.

    Under DDP (a process group of several ranks is initialised, e.g. inside ``torchrun`` after
    :func:`finetune`), every rank evaluates its own share of ``data`` (a DataLoader's data set is split
    exactly, without padding) and the counts are all-reduced, so every rank returns the metrics of
    the whole data set. Every rank must call it.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        data: any iterable of batches (see :mod:`torchcompress.batches`).
        loss_fn: ``None`` for cross-entropy on the logits, ``"model"`` for the ``.loss`` the model
            returns when dict batches carry ``"labels"`` (accuracy is then not computed), or a
            callable ``loss_fn(output, target) -> Tensor``.
        device: run there (the model is moved, in place); default: the model's device.
        max_batches: evaluate at most this many batches (per rank under DDP).
        progress: show a progress bar (default: when stderr is a terminal; rank 0 only).
        topk: also report ``top{k}_accuracy`` for these k (e.g. ``(1, 5)``).
        ddp: ``False`` to evaluate each rank's data locally without reduction.

    Returns:
        ``{"accuracy": float | None, "loss": float | None, "samples": int, "batches": int}`` plus
        ``"top{k}_accuracy"`` for each k > 1 in ``topk``.

    Raises:
        DataError: ``data`` is empty, a batch does not fit the model, a batch has no target, or a
            label is out of range for the model's output (the message names the batch, the label
            and the number of classes).
        ConfigError: a bad argument.

    Example:
        >>> import torch, torchcompress as tc
        >>> model = torch.nn.Linear(4, 3)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> r = tc.evaluate(model, data)
        >>> sorted(r), r["samples"]
        (['accuracy', 'batches', 'loss', 'samples'], 8)
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"evaluate: model must be an nn.Module, got {type(model).__name__}.")
    check_loss_fn(loss_fn)
    ks = check_topk(topk)
    if max_batches is not None:
        if isinstance(max_batches, bool) or not isinstance(max_batches, int):
            raise ConfigError(f"max_batches must be an int, got {max_batches!r}.")
        check_range("max_batches", max_batches, 1)
    model = unwrap(model)
    dev = resolve_device(model, device)
    dist_ = eval_dist(ddp)
    local, _, _ = shard(data, dist_, train=False, what="data")
    n_total = count_batches(local)
    if n_total is not None and max_batches is not None:
        n_total = min(n_total, max_batches)
    show = progress_enabled(progress) and dist_.rank == 0
    causal = loss_fn is None and is_causal_lm(model)

    # per-batch tensors, summed once at the end (no host sync, few ops per batch)
    loss_sums: list[torch.Tensor] = []
    loss_counts: list[torch.Tensor] = []
    counted: list[torch.Tensor] = []
    correct: list[list[torch.Tensor]] = [[] for _ in ks]
    label_checks: list[tuple[int, LabelCheck]] = []  # off the CPU: labels out of range
    samples = batches = 0
    accuracy_possible = loss_fn != "model"
    modes = Modes(model)
    bar = progress_bar(show, n_total, "evaluate")
    try:
        model.eval()
        with torch.no_grad():
            # under DDP a rank's share may be empty (fewer batches than ranks): that is no error
            empty_share = dist_.active and n_total == 0
            source: Iterator[Batch] = (
                iter(())
                if empty_share
                else iter_batches(
                    local,
                    max_batches=max_batches,
                    device=dev,
                    pass_labels=loss_fn == "model",
                    what="data",
                )
            )
            for i, batch in enumerate(source):
                if batch.target is None and loss_fn != "model":
                    raise DataError(
                        f"Batch {i} of data has no target; evaluate needs (inputs, targets) batches "
                        "or dict batches with 'labels'. (A single (inputs, targets) tuple passed as "
                        "the data is iterated element by element: wrap it in a list.)"
                    )
                output = run_model(model, batch, index=i, what="data")
                logits = extract_logits(output)
                bs = batch_size(batch)
                if loss_fn is None:
                    s, c, check = task_loss(
                        logits, batch.target, index=i, what="data", output=output, causal=causal
                    )
                    if check is not None:
                        label_checks.append((i, check))
                    loss_sums.append(s.detach().double())
                    loss_counts.append(typing.cast(torch.Tensor, c).double())
                else:
                    if loss_fn == "model":
                        v = model_loss(output, index=i, what="data")
                    else:
                        v = user_loss(loss_fn, output, batch.target, index=i, what="data")  # type: ignore[arg-type]
                    v = v.detach().double()
                    if v.numel() == 1:  # a batch mean: weight it by the batch size
                        loss_sums.append(v.reshape(()) * bs)
                        loss_counts.append(torch.tensor(float(bs), dtype=torch.float64, device=dev))
                    else:  # reduction="none": every element counts
                        loss_sums.append(v.sum())
                        loss_counts.append(
                            torch.tensor(float(v.numel()), dtype=torch.float64, device=dev)
                        )
                if accuracy_possible:
                    acc = correct_topk(
                        logits, batch.target, ks, soft_ok=loss_fn is None, causal=causal
                    )
                    if acc is None:
                        accuracy_possible = False
                    else:
                        for j, cj in enumerate(acc[0]):
                            correct[j].append(cj)
                        counted.append(acc[1])
                samples += bs
                batches += 1
                if bar is not None:
                    bar.update(1)
    finally:
        modes.restore()
        if bar is not None:
            bar.close()
    flags = torch.tensor(
        [float(accuracy_possible), samples, batches], dtype=torch.float64, device=dev
    )

    def total(xs: list[torch.Tensor]) -> torch.Tensor:
        if not xs:
            return torch.zeros((), dtype=torch.float64, device=dev)
        return torch.stack(xs).to(device=dev, dtype=torch.float64).sum()

    sums = [total(loss_sums), total(loss_counts), total(counted), *(total(c) for c in correct)]
    bad = total([c.bad for _, c in label_checks])
    stats = torch.stack([*sums, *flags, bad])
    stats = dist_.all_reduce_sum(stats).tolist()
    if stats[-1] > 0:
        raise _label_error(label_checks, "data")
    loss_sum_v, loss_count_v, counted_v = stats[0], stats[1], stats[2]
    correct_v = stats[3 : 3 + len(ks)]
    acc_ok_ranks, samples_v, batches_v = stats[3 + len(ks) : 6 + len(ks)]
    if batches_v == 0:
        raise DataError("data yielded no batch on any rank; it must hold at least one batch.")
    acc_ok = acc_ok_ranks >= dist_.world_size - 0.5 and counted_v > 0
    result: dict[str, Any] = {
        "accuracy": correct_v[0] / counted_v if acc_ok else None,
        "loss": loss_sum_v / loss_count_v if loss_count_v > 0 else None,
        "samples": round(samples_v),
        "batches": round(batches_v),
    }
    for k, cv in zip(ks, correct_v):
        if k != 1:
            result[f"top{k}_accuracy"] = cv / counted_v if acc_ok else None
    return result


def _label_error(checks: list[tuple[int, LabelCheck]], what: str) -> DataError:
    """The error for the first batch with a label out of range (another rank's, under DDP)."""
    for i, check in checks:
        if int(check.bad):
            return check.error(f"Batch {i} of {what}")
    return DataError(
        f"A batch of {what} on another rank has a label out of range for the model's output; "
        "labels must be in 0..classes-1, or -100 for positions to ignore."
    )
