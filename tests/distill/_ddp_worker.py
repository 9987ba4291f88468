"""Launched by tests/distill/test_ddp.py under ``python -m torch.distributed.run --nproc_per_node=2``.

Distils a teacher into a student with KD and a FitNets hint (whose adapter lives outside the
model, in the distiller) with tc.finetune, unchanged from a single-process script, and writes each
rank's final student and adapter tensors to the folder given as the first argument.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

import torchcompress as tc


def cnn(width: int, seed: int) -> nn.Module:
    """conv-ReLU, a strided 'block' (conv-ReLU), pooling, flatten, fc; no BatchNorm."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 10),
    )


def distiller() -> tc.distill.Distiller:
    return tc.distill.Distiller(
        [("kd", 1.0), tc.distill.DistillTerm("hint", 2.0, student="2", teacher="2")]
    )


def run(batch_size: int) -> tuple[nn.Module, tc.distill.Distiller]:
    """The same script for one process (batch 32) and for two ranks (16 each)."""
    tc.seed_everything(0)
    student, teacher = cnn(4, 0), cnn(8, 1).eval()
    train, _ = tc.data.digits(
        batch_size=batch_size, image_size=8, channels=1, shuffle=False, drop_last=True
    )
    d = distiller()
    tc.finetune(student, train, epochs=1, lr=0.05, teacher=teacher, distill=d, progress=False)
    return student, d


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    student, d = run(16)
    tensors = {f"student.{k}": v for k, v in student.state_dict().items()}
    tensors.update({f"distiller.{k}": v for k, v in d.state_dict().items()})
    tensors["steps"] = torch.tensor(d.steps)
    torch.save(tensors, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
