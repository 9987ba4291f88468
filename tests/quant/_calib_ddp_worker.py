"""Launched by tests/quant/test_calib_ddp.py under ``torch.distributed.run`` (2 ranks, gloo).

Each rank first quantizes on all the data in one process (no process group yet: the reference),
then joins the process group and quantizes a fresh model on its half of the batches (rank r takes
batches r, r+2, ...), for every observer, in graph and in layer mode; it writes every quantizer's
scale and zero point, and the outputs of the converted models, to the folder given as the first
argument.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import Tensor, nn

import torchcompress as tc

OBSERVERS = ("minmax", "percentile", "mse", "kl", "moving_minmax")


class Net(nn.Module):
    """Conv + BN + ReLU, a residual add, a max pool and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h) + h)
        return self.fc(self.pool(h).flatten(1))


def model() -> nn.Module:
    torch.manual_seed(0)
    m = Net()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.2, 0.2)
        m.bn1.running_var.uniform_(0.5, 1.5)
    return m.eval()


def data() -> list[Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=g) * (1 + i % 3) for i in range(6)]


def quantizers(m: nn.Module) -> dict[str, Tensor]:
    return {
        k: v.detach().clone()
        for k, v in m.state_dict().items()
        if k.endswith(("input_quant.scale", "input_quant.zero_point"))
        or (k.startswith("quant_graph.") and k.endswith(("scale", "zero_point")))
    }


def run(batches: list[Tensor]) -> dict[str, dict[str, Tensor]]:
    out: dict[str, dict[str, Tensor]] = {}
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for observer in OBSERVERS:
        for graph in ("auto", "layer"):
            q = tc.quantize(model(), tc.QuantConfig(observer=observer), batches, graph=graph)
            res = quantizers(q)
            assert res, (observer, graph)
            with torch.no_grad():
                res["converted output"] = tc.convert(q)(x)
            out[f"{observer}/{graph}"] = res
    return out


def main() -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    batches = data()
    reference = run(batches)  # one process on all the data (no process group yet)
    dist.init_process_group("gloo")
    try:
        assert dist.get_world_size() == 2
        mine = run(batches[rank::2])
    finally:
        dist.destroy_process_group()
    torch.save({"reference": reference, "ranks": mine}, os.path.join(sys.argv[1], f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
