"""Launched by tests/train/test_distributed.py under ``python -m torch.distributed.run --nproc_per_node=2``.

Trains two small models on digits with tc.finetune, unchanged from a single-process script, and
writes each rank's final tensors and metrics to the folder given as the first argument.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

import torchcompress as tc


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    steps_seen: list[int] = []

    # 1. an MLP without BatchNorm, unshuffled: must match one process with twice the batch size
    tc.seed_everything(0)
    a = mlp()
    train, test = tc.data.digits(
        batch_size=16, image_size=8, channels=1, shuffle=False, drop_last=True
    )
    tc.finetune(
        a,
        train,
        epochs=2,
        lr=0.05,
        eval_data=test,
        progress=False,
        callbacks=[tc.train.LambdaCallback(on_step_end=lambda s: steps_seen.append(s.world_size))],
    )
    metrics_a = tc.evaluate(a, test)

    # 2. a CNN with BatchNorm on a shuffled loader
    tc.seed_everything(1)
    b = cnn()
    train_b, test_b = tc.data.digits(batch_size=32, image_size=8, channels=1)
    tc.finetune(b, train_b, epochs=3, lr=0.1, eval_data=test_b, progress=False)

    # 3. a plain list of batches (split batch by batch) and 4. a stream without len()
    tc.seed_everything(2)
    c = mlp()
    tc.finetune(c, list(train), epochs=1, lr=0.05, progress=False)
    metrics_c = tc.evaluate(c, list(test))
    metrics_one = tc.evaluate(c, list(test)[:1])  # one batch for two ranks: rank 1's share is empty

    class Stream:
        def __iter__(self):
            return iter(train)

    tc.seed_everything(3)
    d = mlp()
    tc.finetune(d, Stream(), steps=50, lr=0.05, progress=False)

    tensors = {
        f"{name}.{k}": v for name, m in zip("abcd", (a, b, c, d)) for k, v in m.state_dict().items()
    }
    torch.save(tensors, os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "metrics_a": metrics_a,
                "metrics_c": metrics_c,
                "metrics_one": metrics_one,
                "steps_c": tc.train.training_history(c)[-1]["step"],
                "steps_d": tc.train.training_history(d)[-1]["step"],
                "history_a": tc.train.training_history(a),
                "history_b": tc.train.training_history(b),
                "world_sizes": sorted(set(steps_seen)),
                "steps_a": len(steps_seen),
                "training_a": a.training,
            },
            f,
        )


if __name__ == "__main__":
    main()
