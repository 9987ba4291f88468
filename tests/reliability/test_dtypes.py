"""Every verb on float64, bfloat16 and float16 models (float16 runs on this CPU's torch): the model
keeps its dtype, its outputs are finite and as close to its own uncompressed outputs as the
float32 model's are, and it round-trips through tc.save/tc.load in that dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.testing import TinyCNN


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


INPUTS = {mlp: torch.randn(8, 16), cnn: torch.randn(2, 3, 8, 8)}
Q, P, L = tc.QuantConfig, tc.PruneConfig, tc.LowRankConfig
VERBS = {
    "prune": lambda m, d: tc.prune(m, P(sparsity=0.5)),
    "prune-wanda-finalize": lambda m, d: tc.finalize(tc.prune(m, P(criterion="wanda"), d)),
    "factorize-merge": lambda m, d: tc.merge_lowrank(tc.factorize(m, L(rank=2))),
    "factorize-whitened": lambda m, d: tc.factorize(m, L(rank=2, method="whitened"), d),
    "quantize-dynamic-convert": lambda m, d: tc.convert(tc.quantize(m, Q(mode="dynamic"))),
    "quantize-static-convert": lambda m, d: tc.convert(tc.quantize(m, Q(), d)),
    "quantize-int4-weights": lambda m, d: tc.quantize(m, Q(weight=tc.IntSpec(4), activation=None)),
    "prepare-qat-lsq": lambda m, d: tc.prepare_qat(m, Q(), "lsq", d),
    "kmeans": lambda m, d: tc.kmeans_quantize(m, bits=4),
    "fuse": lambda m, d: tc.fuse(m),
    "prune-channels": lambda m, d: tc.prune_channels(m, d[0], 0.25),
    "prune-quantize-convert": lambda m, d: tc.convert(
        tc.quantize(tc.prune(m, P(sparsity=0.5)), Q(), d)
    ),
    "prune-qat-convert": lambda m, d: tc.convert(
        tc.prepare_qat(tc.prune(m, P(sparsity=0.5)), Q(), "ste", d)
    ),
}
TOL = {torch.float64: 1e-6, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("build", [mlp, cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_on_other_dtypes(verb: str, build, dtype: torch.dtype, tmp_path) -> None:
    x32 = INPUTS[build]
    ref32 = build()
    out32 = VERBS[verb](build(), [x32])(x32).detach()
    dev32 = float((out32 - ref32(x32)).abs().max())
    m, x = build().to(dtype), x32.to(dtype)
    ref = m(x).detach()
    VERBS[verb](m, [x])
    with torch.no_grad():
        y = m(x)
    assert y.dtype == dtype and bool(torch.isfinite(y).all())
    floats = [t for t in m.state_dict().values() if t.is_floating_point()]
    assert all(t.dtype in (dtype, torch.float32) for t in floats)  # quantizers keep float32 scales
    scale = float(ref.abs().max())
    assert float((y.double() - ref.double()).abs().max()) <= 2 * dev32 + TOL[dtype] * scale + 1e-3
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, build().to(dtype))
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
    profile = tc.profile(m, x)
    assert profile.total_macs > 0
