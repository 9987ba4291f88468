"""Launched by tests/quant/test_qat_ddp.py under ``torch.distributed.run --nproc_per_node=2``.

Prepares a small CNN for QAT on each rank (STE with a moving min/max, and LSQ), trains a few steps
with tc.finetune (DDP, gloo) on data that differs between ranks, and saves every quantizer's
scale, zero point and clipping value per rank.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

import torchcompress as tc


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def quant_state(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in model.state_dict().items():
        if name.endswith(("scale", "zero_point", "alpha")):
            out[name] = t.detach().clone()
    return out


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    train, _ = tc.data.digits(batch_size=16, image_size=8, channels=1)
    results = {}
    for method in ("ste", "lsq", "pact"):
        tc.seed_everything(0)
        model = cnn()
        # calibration data differs between ranks: DDP must still start and keep them identical
        calib = [x + 0.1 * rank for (x, _), _ in zip(train, range(2))]
        cfg = tc.QuantConfig(
            weight=tc.IntSpec(4, granularity="channel"),
            activation=tc.IntSpec(4, symmetric=False, signed=False),
        )
        tc.prepare_qat(model, cfg, method=method, calib_data=calib)
        tc.finetune(model, train, steps=4, lr=0.05, progress=False)
        results[method] = quant_state(model)
    # the batch min/max of an STE activation quantizer is all-reduced: each rank sees its own data
    # (rank 0 values in [0, 1], rank 1 in [0, 3]) and both end with the range of the union
    from torchcompress.quant import STEQuantize

    fq = STEQuantize(tc.IntSpec(8, symmetric=False, signed=False), observer="moving_minmax")
    fq.train()
    fq(torch.linspace(0, 1.0 + 2.0 * rank, 50))
    results["synced_scale"] = {"scale": fq.scale.detach().clone()}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
