"""What tc.finetune and tc.evaluate cost against the loop a user would write by hand.

The peer of a training utility is the plain PyTorch loop it replaces: ``zero_grad``, forward,
``F.cross_entropy``, backward, ``optimizer.step``, ``scheduler.step``. This script times
``tc.finetune`` (same optimizer, schedule and batches) and ``tc.evaluate`` against that loop, side by
side in one process with :func:`benchmarks.harness.time_variants` (interleaved rounds, medians,
per-round ratios), on a CIFAR ResNet-20 with digits upsampled to 32x32x3 (the demo's setting,
compute-bound) and on a small MLP on 8x8 digits (overhead-bound: every per-step cost of the loop
shows). It also trains both loops from the same initialisation for a few epochs and reports the test
accuracy each reaches, so the comparison is of equal work.

Usage::

    python -m benchmarks.train_loop           # full: 7 rounds, whole epochs, 3 training epochs
    python -m benchmarks.train_loop --quick   # 2 short rounds of 3 steps, 1 training epoch
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from benchmarks.harness import Report, Timing, time_variants


def mlp(in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64 * in_channels, 256), nn.ReLU(), nn.Linear(256, 10)
    )


# name, model builder, digits image size, channels
SETTINGS: list[tuple[str, Callable[[], nn.Module], int, int]] = [
    ("resnet20 (A), digits 32x32x3", lambda: tc.models.resnet20(), 32, 3),
    ("MLP 64-256-10, digits 8x8", mlp, 8, 1),
]
LR, MOMENTUM, WD = 0.05, 0.9, 5e-4


def hand_train(model: nn.Module, loader: Any, steps: int, epochs: int = 1) -> nn.Module:
    """The plain loop: SGD with momentum and weight decay, cosine schedule, cross-entropy."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    total = steps * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    model.train()
    for _ in range(epochs):
        for x, y in itertools.islice(loader, steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
    return model


def tc_train(model: nn.Module, loader: Any, steps: int, epochs: int = 1) -> nn.Module:
    return tc.finetune(
        model,
        loader,
        epochs=epochs,
        steps=steps * epochs,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WD,
        scheduler="cosine",
        progress=False,
    )


@torch.no_grad()
def hand_eval(model: nn.Module, loader: Any) -> dict[str, float]:
    model.eval()
    correct = total = 0
    loss = 0.0
    for x, y in loader:
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    return {"accuracy": correct / total, "loss": loss / total}


def training_step_timing(
    build: Callable[[], nn.Module], train: Any, steps: int, rounds: int, min_time: float
) -> Timing:
    torch.manual_seed(0)
    base = build()
    models = {"hand-written loop": copy.deepcopy(base), "tc.finetune": copy.deepcopy(base)}

    def run(name: str, fn: Callable[..., nn.Module]) -> Callable[[], None]:
        def go() -> None:
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
            ):  # the harness times in inference mode
                fn(models[name], train, steps)

        return go

    return time_variants(
        {
            "hand-written loop": run("hand-written loop", hand_train),
            "tc.finetune": run("tc.finetune", tc_train),
        },
        baseline="hand-written loop",
        rounds=rounds,
        min_time=min_time,
        warmup=1,
    )


def eval_timing(build: Callable[[], nn.Module], test: Any, rounds: int, min_time: float) -> Timing:
    torch.manual_seed(0)
    model = build().eval()
    return time_variants(
        {
            "hand-written eval": lambda: hand_eval(model, test),
            "tc.evaluate": lambda: tc.evaluate(model, test, progress=False),
        },
        baseline="hand-written eval",
        rounds=rounds,
        min_time=min_time,
        warmup=1,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run, to check that it works")
    args = ap.parse_args()
    rounds, min_time = (2, 0.05) if args.quick else (7, 0.5)
    train_epochs = 1 if args.quick else 3
    command = "python -m benchmarks.train_loop" + (" --quick" if args.quick else "")
    report = Report(
        "train_loop",
        "Training and evaluation loops: tc.finetune / tc.evaluate against a hand-written loop",
        command,
    )
    report.add(
        "Each variant runs the same optimizer (SGD, momentum 0.9, weight decay 5e-4, lr 0.05, cosine "
        "schedule), batches (digits, batch 64) and model; ratios are per-round medians against the "
        "hand-written loop (below 1.00x is faster). One timed unit is a pass over "
        + ("3 training batches" if args.quick else "one epoch of training batches")
        + " (training) or over the whole test set (evaluation)."
    )
    rows: list[dict[str, str]] = []
    acc_rows: list[dict[str, str]] = []
    notes: list[str] = []
    for name, build, size, channels in SETTINGS:
        train, test = tc.data.digits(batch_size=64, image_size=size, channels=channels, seed=0)
        steps = 3 if args.quick else len(train)
        t = training_step_timing(build, train, steps, rounds, min_time)
        e = eval_timing(build, test, rounds, min_time)
        for timing, what, unit in ((t, "train", steps), (e, "evaluate", len(test))):
            for v in timing.median_s:
                row = timing.row(v)
                rows.append(
                    {
                        "setting": name,
                        "loop": what,
                        "variant": v,
                        "median ms / batch": f"{1000 * timing.median_s[v] / unit:.2f}",
                        "ratio": row[f"ratio to {timing.baseline}"],
                        "ratio range": row["ratio range"],
                    }
                )
        overhead_ms = 1000 * (t.median_s["tc.finetune"] - t.median_s["hand-written loop"]) / steps
        notes.append(
            f"- {name}: tc.finetune takes {t.ratio['tc.finetune']:.2f}x the hand-written loop's time "
            f"({overhead_ms:+.2f} ms per step); tc.evaluate {e.ratio['tc.evaluate']:.2f}x the "
            "hand-written evaluation."
        )
        # equal work: both loops from the same initialisation, evaluated the same way
        torch.manual_seed(1)
        init = build()

        def fresh(size: int = size, channels: int = channels) -> Any:
            return tc.data.digits(batch_size=64, image_size=size, channels=channels, seed=0)[0]

        a = hand_train(copy.deepcopy(init), fresh(), steps, epochs=train_epochs)
        b = tc_train(copy.deepcopy(init), fresh(), steps, epochs=train_epochs)
        diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
        ra, rb = hand_eval(a, test), tc.evaluate(b, test, progress=False)
        acc_rows.append(
            {
                "setting": name,
                "steps": str(steps * train_epochs),
                "hand-written loop: test accuracy": f"{100 * ra['accuracy']:.2f}%",
                "tc.finetune: test accuracy": f"{100 * rb['accuracy']:.2f}%",
                "hand-written: test loss": f"{ra['loss']:.4f}",
                "tc.evaluate: test loss": f"{rb['loss']:.4f}",
                "max weight difference": f"{diff:.1e}",
            }
        )
    report.table(rows, caption="Time per batch, side by side:")
    report.add("\n".join(notes))
    report.table(
        acc_rows,
        caption="The same training from the same initialisation and shuffling (test accuracy after "
        "training; the test loss is measured by each side's own evaluation):",
    )
    path = report.write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
