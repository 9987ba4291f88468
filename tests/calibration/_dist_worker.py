"""Launched by tests/calibration/test_distributed.py under ``torch.distributed.run`` (2 ranks, gloo).

Each rank collects statistics on its half of the data (rank r takes batches r, r+2, ...) and writes
them to the folder given as the first argument.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from torchcompress.calibration import collect

STATS = {
    "conv": ["input_sq", "abs_mean", "xtx", "channel_sq", "input_channel_min", "input_max"],
    "fc": ["input_sq", "xtx", "input_min", "output_max", "grad_abs", "grad_sq"],
}


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, groups=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(3, 3, 6, 6, generator=g), torch.randint(0, 5, (3,), generator=g))
        for _ in range(6)
    ]


def run(batches: list) -> dict:
    m = model()
    named = {"conv": "0", "fc": "4"}
    stats = collect(
        m,
        batches,
        {named[k]: v for k, v in STATS.items()},
        loss_fn=lambda out, y: F.cross_entropy(out, y),
    )
    out: dict = {"batches": stats.batches}
    for k, name in named.items():
        s = stats[name]
        out[k] = {"values": s.values, "counts": s.counts, "calls": s.calls, "rows": s.rows}
    return out


def main() -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    result = run(data()[rank::2])
    torch.save(result, os.path.join(sys.argv[1], f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
