"""The embedded demo behind ``torchcompress demo``.

A real end-to-end run on data that ships with the dependencies: a CIFAR ResNet is trained for a few
epochs on scikit-learn's handwritten digits (upsampled to 32x32), then each compression family that is
available is applied to a copy of it. For each variant the demo measures test accuracy, bytes stored,
MACs and CPU latency (interleaved timing rounds, median ratio to fp32), and prints one table.
"""

from __future__ import annotations

import copy
import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import nn

__all__ = ["DEMO_STEPS", "DemoContext", "run_demo"]


@dataclass
class DemoContext:
    """What a demo step may use: the data loaders, an example batch, and the fine-tuning budget."""

    train: Any
    test: Any
    example: torch.Tensor
    finetune_epochs: int


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _fused(model: nn.Module, ctx: DemoContext) -> nn.Module:
    import torchcompress as tc

    return tc.fuse(model.eval())


def _int8(model: nn.Module, ctx: DemoContext) -> nn.Module:
    import torchcompress as tc

    tc.fuse(model.eval())
    calib = [x for i, (x, _) in enumerate(ctx.train) if i < 8]
    tc.quantize(model, tc.QuantConfig(), calib_data=calib)
    return tc.convert(model)


def _pruned(model: nn.Module, ctx: DemoContext) -> nn.Module:
    import torchcompress as tc

    tc.prune(model, tc.PruneConfig(sparsity=0.7, scope="global"))
    tc.finetune(model, ctx.train, epochs=ctx.finetune_epochs, lr=0.01)
    return tc.finalize(model)  # masks baked in: plain dense modules again


def _factorized(model: nn.Module, ctx: DemoContext) -> nn.Module:
    import torchcompress as tc

    tc.factorize(model, tc.LowRankConfig(rank=0.6), exclude=["conv1", "fc"])
    tc.finetune(model, ctx.train, epochs=ctx.finetune_epochs, lr=0.01)
    return model


#: (label, what it needs importable, step). Steps copy nothing themselves: they get a deep copy.
DEMO_STEPS: list[tuple[str, str, Callable[[nn.Module, DemoContext], nn.Module]]] = [
    ("BN folded (tc.fuse)", "torchcompress.fusion", _fused),
    ("int8 static, converted (tc.quantize + tc.convert)", "torchcompress.quant", _int8),
    ("70% unstructured, fine-tuned (tc.prune + tc.finalize)", "torchcompress.sparsity", _pruned),
    ("low-rank 0.6 params, fine-tuned (tc.factorize)", "torchcompress.lowrank", _factorized),
]


def _latency(models: dict[str, nn.Module], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median over interleaved rounds of each model's time relative to the first one."""
    names = list(models)
    per: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for m in models.values():
            m(x)
        for _ in range(rounds):
            for n in names:
                t0 = time.perf_counter()
                k = 0
                while True:
                    models[n](x)
                    k += 1
                    dt = time.perf_counter() - t0
                    if dt > 0.2:
                        break
                per[n].append(dt / k)
    base = names[0]
    return {n: statistics.median(a / b for a, b in zip(per[n], per[base])) for n in names}


def run_demo(
    *,
    model_name: str = "resnet20",
    epochs: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    out: TextIO | None = None,
    quick: bool = False,
    image_size: int = 16,
) -> list[dict[str, Any]]:
    """Run the demo and return its rows (also printed to ``out`` when given).

    Args:
        model_name: a ``tc.models`` name.
        epochs: training epochs of the fp32 model (default 8, or 3 with ``quick``).
        seed: for data split, initialisation and training.
        threads: torch CPU threads (default: torch's choice).
        out: a text stream to print progress and the table to.
        quick: fewer epochs and timing rounds.
        image_size: side of the (upsampled) digit images; the originals are 8x8.
    """
    import torchcompress as tc

    def say(msg: str) -> None:
        if out is not None:
            print(msg, file=out, flush=True)

    if threads:
        torch.set_num_threads(threads)
    tc.seed_everything(seed)
    epochs = epochs if epochs is not None else (3 if quick else 6)
    train, test = tc.data.digits(batch_size=64, image_size=image_size, seed=seed)
    example = next(iter(test))[0][:1]
    ctx = DemoContext(train=train, test=test, example=example, finetune_epochs=1 if quick else 2)

    say(
        f"torchcompress {tc.__version__} demo: {model_name} on scikit-learn digits ({image_size}x{image_size}, {len(train.dataset)} train / {len(test.dataset)} test images)"
    )
    model = tc.models.create(model_name)
    t0 = time.perf_counter()
    tc.finetune(model, train, epochs=epochs, lr=0.05)
    say(f"trained fp32 for {epochs} epochs in {time.perf_counter() - t0:.0f} s")
    model.eval()

    variants: dict[str, nn.Module] = {"fp32": model}
    for label, needs, step in DEMO_STEPS:
        if not _has(needs):
            continue
        t0 = time.perf_counter()
        variants[label] = step(copy.deepcopy(model), ctx).eval()
        say(f"{label}: {time.perf_counter() - t0:.1f} s")

    ratios = _latency(variants, torch.cat([example] * 32), rounds=3 if quick else 7)
    rows: list[dict[str, Any]] = []
    for label, m in variants.items():
        acc = tc.evaluate(m, test)["accuracy"]
        prof = tc.profile(m, example)
        rows.append(
            {
                "variant": label,
                "accuracy": acc,
                "bytes": prof.total_bytes,
                "macs": prof.total_macs,
                "effective_macs": prof.total_effective_macs,
                "latency": ratios[label],
            }
        )
    say("")
    w = max(len("variant"), *(len(r["variant"]) for r in rows))
    say(
        f"{'variant':{w}s} {'test acc':>8s} {'size':>10s} {'MACs':>9s} {'eff. MACs':>9s} {'latency':>8s}"
    )
    for r in rows:
        say(
            f"{r['variant']:{w}s} {100 * r['accuracy']:7.1f}% {r['bytes'] / 1024:8.0f}KB "
            f"{r['macs'] / 1e6:8.1f}M {r['effective_macs'] / 1e6:8.1f}M {r['latency']:7.2f}x"
        )
    say("")
    say(
        "size = bytes stored; MACs = multiply-accumulates the kernels run per image; eff. MACs = those a "
        "sparsity-aware kernel would need; latency = batch-32 CPU time relative to fp32 (median of "
        "interleaved rounds). Dense kernels gain no speed from unstructured sparsity."
    )
    return rows
