"""Write the legacy ``tc.save`` fixtures in tests/io/legacy/ (run from the repository root).

    PYTHONPATH=src python tests/io/make_legacy.py

The files in legacy/ were written by torchcompress as it stood before ``io`` stopped importing the
families by name (commit 6c0082c): they have no record of which module defines each codec, so
loading them exercises the fallback that finds the codec providers. Each fixture is two files:

- ``<name>.safetensors``: what ``tc.save`` wrote;
- ``<name>.expected.safetensors``: the input and the output the compressed model gave on it at
  save time (``tests/io/test_legacy.py`` loads the model into a fresh instance and compares).

Rerunning this script with newer code overwrites them with files of the newer format, which then
no longer test the old one: keep the committed files unless the format is deliberately retired.
The architectures are defined here, not taken from ``torchcompress.testing``, so that the
fixtures do not change when the shared toy models do.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
LEGACY = HERE / "legacy"


def mlp() -> nn.Module:
    """A two-layer perceptron, 8 -> 16 -> 4."""
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class SmallCNN(nn.Module):
    """Conv-BN-ReLU twice, a residual add, global pooling and a classifier (3x8x8 inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + y)
        return self.fc(torch.flatten(self.pool(y), 1))


def cnn() -> nn.Module:
    """A :class:`SmallCNN` in eval mode (fresh models for loading are built the same way)."""
    return SmallCNN().eval()


def _cnn_trained() -> nn.Module:
    torch.manual_seed(1)
    m = cnn()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m


def _calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)]


def make_masked_mlp() -> nn.Module:
    import torchcompress as tc

    torch.manual_seed(0)
    return tc.prune(mlp(), tc.PruneConfig(sparsity=0.5))


def make_static_cnn() -> nn.Module:
    import torchcompress as tc

    cfg = tc.QuantConfig(reduce_range="weight")
    return tc.quantize(_cnn_trained(), cfg, _calib(), progress=False)


def make_converted_cnn() -> nn.Module:
    import torchcompress as tc

    return tc.convert(copy.deepcopy(make_static_cnn()))


def make_qat_cnn() -> nn.Module:
    import torchcompress as tc

    cfg = tc.QuantConfig(reduce_range="weight")
    m = tc.prepare_qat(_cnn_trained(), cfg, method="lsq", calib_data=_calib(), progress=False)
    return m.eval()


def make_factorized_mlp() -> nn.Module:
    import torchcompress as tc

    torch.manual_seed(3)
    return tc.factorize(mlp(), tc.LowRankConfig(rank=2), progress=False)


def make_kmeans_mlp() -> nn.Module:
    import torchcompress as tc

    torch.manual_seed(4)
    return tc.kmeans_quantize(mlp(), bits=3, progress=False)


#: fixture name -> (builds the compressed model, builds a fresh model to load into, input shape)
FIXTURES: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = {
    "masked_mlp": (make_masked_mlp, mlp, (5, 8)),
    "static_cnn": (make_static_cnn, cnn, (3, 3, 8, 8)),
    "converted_cnn": (make_converted_cnn, cnn, (3, 3, 8, 8)),
    "qat_cnn": (make_qat_cnn, cnn, (3, 3, 8, 8)),
    "factorized_mlp": (make_factorized_mlp, mlp, (5, 8)),
    "kmeans_mlp": (make_kmeans_mlp, mlp, (5, 8)),
}


def main() -> None:
    """Write every fixture into legacy/."""
    import torchcompress as tc

    LEGACY.mkdir(exist_ok=True)
    for name, (make, _, shape) in FIXTURES.items():
        model = make()
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            y = model(x)
        tc.save(model, LEGACY / f"{name}.safetensors")
        save_file({"input": x, "output": y}, str(LEGACY / f"{name}.expected.safetensors"))


if __name__ == "__main__":
    main()
