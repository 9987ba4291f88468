"""With a seed, every verb gives the same model bit for bit on CPU (two runs from the same start)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.testing import TinyCNN


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


def data() -> list:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g))
        for _ in range(3)
    ]


Q, P, L = tc.QuantConfig, tc.PruneConfig, tc.LowRankConfig
VERBS = {
    "prune-random": lambda m, d: tc.prune(m, P(criterion="random", seed=3)),
    "prune-taylor-global": lambda m, d: tc.prune(m, P(criterion="taylor", scope="global"), d),
    "prune-wanda-2:4": lambda m, d: tc.prune(
        m, P(criterion="wanda", pattern="n:m"), d, exclude=["conv1"]
    ),
    "factorize-auto": lambda m, d: tc.factorize(m, L(rank="auto", budget=0.6), d),
    "factorize-activation-aware": lambda m, d: tc.factorize(
        m, L(rank=2, method="activation_aware"), d
    ),
    "quantize-percentile-convert": lambda m, d: tc.convert(
        tc.quantize(m, Q(observer="percentile"), d)
    ),
    "quantize-mse": lambda m, d: tc.quantize(m, Q(observer="mse"), d),
    "kmeans-weighted": lambda m, d: tc.kmeans_quantize(m, bits=3, weighted=True, calib_data=d),
    "fuse": lambda m, d: tc.fuse(m),
    "prune-channels-taylor": lambda m, d: tc.prune_channels(
        m, d[0][0], 0.25, criterion="taylor", data=d
    ),
    "qat-lsq-finetune-convert": lambda m, d: tc.convert(
        tc.finetune(tc.prepare_qat(m, Q(), "lsq", d), d, epochs=1, lr=0.01)
    ),
    "prune-finetune-finalize": lambda m, d: tc.finalize(
        tc.finetune(tc.prune(m, P(sparsity=0.5)), d, epochs=1, lr=0.01)
    ),
}


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("verb", list(VERBS))
def test_same_seed_same_model_bit_for_bit(verb: str) -> None:
    runs = []
    for _ in range(2):
        tc.seed_everything(0)
        m = VERBS[verb](cnn(), data())
        runs.append((_state(m), tc.io.history(m)))
    (a, ha), (b, hb) = runs
    assert a.keys() == b.keys() and ha == hb
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
