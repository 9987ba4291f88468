"""What a run measures on the baseline and on every variant, the same way for all.

- :func:`summary_figures`: accuracy and loss (labelled data), params, non-zero params, MACs,
  effective MACs and stored bytes (``tc.profile`` on one example), and the cosine between the
  model's outputs and the baseline's on the calibration batches;
- :func:`time_models`: latency of every model relative to the first, timed in interleaved rounds
  (rotating order, so a burst of load hits every model alike) until the spread of every ratio is
  small or the rounds run out; the median ratio and its spread are reported.

Example:
    >>> import torch
    >>> from torchcompress.batches import Batch
    >>> from torchcompress.recipe.document import LatencyConfig
    >>> from torchcompress.recipe.measure import time_models
    >>> m = torch.nn.Linear(4, 4)
    >>> cfg = LatencyConfig(batch_size=2, min_rounds=2, max_rounds=2, round_time=0.01)
    >>> t = time_models({"a": m, "b": m}, Batch(args=(torch.randn(2, 4),)), cfg)
    >>> t["a"]["ratio"], t["b"]["rounds"]
    (1.0, 2)
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

import torchcompress as tc

from ..batches import Batch, as_batch
from .document import LatencyConfig
from .specs import DataBundle, batch_inputs

__all__ = ["output_cosine", "summary_figures", "time_models"]


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list):
        return next((t for t in map(_first_tensor, out) if t is not None), None)
    if isinstance(out, dict) or hasattr(out, "values"):
        try:
            values = list(out.values())
        except TypeError:
            return None
        return next((t for t in map(_first_tensor, values) if t is not None), None)
    return None


def _call(model: nn.Module, batch: Batch) -> Any:
    return model(*batch.args, **batch.kwargs)


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def output_cosine(
    reference: nn.Module, model: nn.Module, batches: Iterable[Any], max_batches: int = 2
) -> float | None:
    """Mean cosine similarity, sample by sample, of ``model``'s outputs to ``reference``'s.

    The first tensor of each output is compared (logits, ``last_hidden_state``), flattened per
    sample; positions an ``attention_mask`` marks as padding are left out. ``None`` when the outputs
    cannot be compared (different shapes, no tensor).
    """
    sims: list[torch.Tensor] = []
    for i, raw in enumerate(batches):
        if i >= max_batches:
            break
        b = as_batch(raw)
        a = _first_tensor(_call(reference, b.to(_device_of(reference))))
        o = _first_tensor(_call(model, b.to(_device_of(model))))
        if a is None or o is None or a.shape != o.shape or a.dim() == 0:
            return None
        mask = b.kwargs.get("attention_mask")
        if (
            isinstance(mask, torch.Tensor)
            and a.dim() >= 2
            and tuple(a.shape[:2]) == tuple(mask.shape)
        ):
            keep = mask.to(a.device).reshape(*mask.shape, *([1] * (a.dim() - 2))).to(a.dtype)
            a, o = a * keep, o * keep.to(o.device, o.dtype)  # padding positions do not count
        a = a.float().flatten(1) if a.dim() > 1 else a.float()[:, None]
        o = o.float().flatten(1).to(a.device) if o.dim() > 1 else o.float()[:, None].to(a.device)
        sims.append(torch.nn.functional.cosine_similarity(a, o, dim=1))
    if not sims:
        return None
    return float(torch.cat(sims).mean())


def summary_figures(
    model: nn.Module,
    reference: nn.Module,
    data: DataBundle | None,
    example: Batch | None,
    *,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Accuracy, sizes and output agreement of ``model`` (see the module docstring)."""
    out: dict[str, Any] = {}
    model.eval()
    if data is not None and data.labelled:
        res = tc.evaluate(model, data.test, progress=progress)
        out["accuracy"] = float(res["accuracy"])
        out["loss"] = float(res["loss"])
        out["samples"] = int(res["samples"])
    if example is not None:
        prof = tc.profile(model, batch_inputs(example))
        out["params"] = prof.total_params
        out["nonzero_params"] = prof.total_nonzero_params
        out["macs"] = prof.total_macs
        out["effective_macs"] = prof.total_effective_macs
        out["bytes"] = prof.total_bytes
        out["layers"] = [
            {
                "name": r.name,
                "type": r.type,
                "params": r.params,
                "nonzero_params": r.nonzero_params,
                "macs": r.macs,
                "bytes": r.bytes,
            }
            for r in prof.rows
            if r.name
        ]
    if data is not None and data.calib:
        cos = output_cosine(reference, model, data.calib)
        if cos is not None:
            out["output_cosine"] = cos
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spread(values: list[float]) -> float:
    if len(values) < 2:
        return math.inf
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    med = statistics.median(values)
    return (q3 - q1) / 2 / med if med > 0 else math.inf


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def time_models(
    models: dict[str, nn.Module],
    batch: Batch,
    config: LatencyConfig,
    *,
    say: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency of each model relative to the first one, from interleaved rounds.

    Args:
        models: label -> model; the first is the reference (ratio 1).
        batch: the inputs of one timed call.
        config: rounds, time per round and the spread to reach.
        say: prints a line when done (rounds and worst spread).

    Returns:
        label -> ``{"ms": median time per call, "ratio": median of the per-round ratios to the
        first model, "spread": half the interquartile range of those ratios over their median,
        "rounds": rounds run}``.
    """
    names = list(models)
    base = names[0]
    per_call: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    calls: dict[str, int] = {}
    with torch.inference_mode():
        for n in names:  # warm up, and how many calls fill a round
            m = models[n].eval()
            dev = _device_of(m)
            b = batch.to(dev)
            _call(m, b)
            _sync(dev)
            t0 = time.perf_counter()
            _call(m, b)
            _sync(dev)
            one = max(time.perf_counter() - t0, 1e-6)
            calls[n] = max(1, min(10_000, round(config.round_time / one)))
        rounds = 0
        for r in range(config.max_rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            this: dict[str, float] = {}
            for n in order:
                m = models[n]
                dev = _device_of(m)
                b = batch.to(dev)
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(calls[n]):
                    _call(m, b)
                _sync(dev)
                this[n] = (time.perf_counter() - t0) / calls[n]
            for n in names:
                per_call[n].append(this[n])
                ratios[n].append(this[n] / this[base])
            rounds = r + 1
            if rounds >= config.min_rounds and all(
                _spread(ratios[n]) <= config.spread for n in names if n != base
            ):
                break
    out = {
        n: {
            "ms": 1000 * statistics.median(per_call[n]),
            "ratio": statistics.median(ratios[n]),
            "spread": 0.0 if n == base else _finite(_spread(ratios[n])),
            "rounds": rounds,
        }
        for n in names
    }
    if say is not None:
        spreads = [v["spread"] for k, v in out.items() if k != base]
        worst = "n/a" if None in spreads else f"±{100 * max(spreads, default=0.0):.0f}%"
        say(f"latency: {rounds} interleaved rounds, largest spread {worst}")
    return out
