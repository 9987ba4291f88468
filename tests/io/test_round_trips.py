"""Every form and chain of forms round-trips through tc.save / tc.load: identical outputs, the same
forms layer by layer, the same file again when the loaded model is saved (safetensors + JSON, no
pickle)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.testing import BranchyNet, TinyCNN

Step = Callable[[nn.Module], nn.Module]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    ).eval()


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = TinyCNN().eval()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m


def branchy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return BranchyNet().eval()


INPUTS = {mlp: torch.randn(8, 16), cnn: torch.randn(2, 3, 8, 8), branchy: torch.randn(2, 3, 8, 8)}


def calib(build) -> list[torch.Tensor]:
    x = INPUTS[build]
    return [torch.randn_like(x) for _ in range(3)]


def prune(**kw) -> Step:
    return lambda m: tc.prune(m, tc.PruneConfig(**{"sparsity": 0.5, **kw}))


def quantize(static: bool = False, **kw) -> Callable[[nn.Module, list], nn.Module]:
    def step(m: nn.Module, data: list) -> nn.Module:
        if static:
            return tc.quantize(m, tc.QuantConfig(**kw), data)
        return tc.quantize(m, tc.QuantConfig(**{"mode": "dynamic", **kw}))

    return step


CHAINS: dict[str, tuple[Callable[..., nn.Module], list]] = {
    "mlp-masked": (mlp, [prune()]),
    "mlp-masked-2:4": (mlp, [prune(pattern="n:m", n=2, m=4)]),
    "cnn-masked-channel": (cnn, [prune(pattern="channel", sparsity=0.25)]),
    "mlp-fake-quant-dynamic": (mlp, [quantize()]),
    "mlp-fake-quant-static": (mlp, [quantize(static=True)]),
    "mlp-weight-only-int4-group": (
        mlp,
        [quantize(weight=tc.IntSpec(4, granularity="group", group_size=8), activation=None)],
    ),
    "cnn-fake-quant-static": (cnn, [quantize(static=True)]),
    "cnn-converted-static": (cnn, [quantize(static=True), lambda m: tc.convert(m)]),
    "mlp-converted-dynamic": (mlp, [quantize(), lambda m: tc.convert(m)]),
    "mlp-qat-lsq": (mlp, [lambda m, d: tc.prepare_qat(m, tc.QuantConfig(), "lsq", d)]),
    "mlp-qat-converted": (
        mlp,
        [lambda m, d: tc.prepare_qat(m, tc.QuantConfig(), "ste", d), lambda m: tc.convert(m)],
    ),
    "mlp-kmeans": (mlp, [lambda m: tc.kmeans_quantize(m, bits=3)]),
    "mlp-factorized": (mlp, [lambda m: tc.factorize(m, tc.LowRankConfig(rank=4))]),
    "cnn-factorized": (
        cnn,
        [lambda m: tc.factorize(m, tc.LowRankConfig(rank=2), include=["conv2"])],
    ),
    "mlp-factorized-pruned": (mlp, [lambda m: tc.factorize(m, tc.LowRankConfig(rank=4)), prune()]),
    "cnn-factorized-converted": (
        cnn,
        [
            lambda m: tc.factorize(m, tc.LowRankConfig(rank=2), include=["conv2"]),
            quantize(),
            lambda m: tc.convert(m),
        ],
    ),
    "mlp-factorized-kmeans": (
        mlp,
        [
            lambda m: tc.factorize(m, tc.LowRankConfig(rank=4)),
            lambda m: tc.kmeans_quantize(m, bits=4),
        ],
    ),
    "cnn-fused-masked": (cnn, [lambda m: tc.fuse(m), prune()]),
    "cnn-masked-fused": (cnn, [prune(), lambda m: tc.fuse(m)]),
    "branchy-masked-fused-factorized": (
        branchy,
        [
            prune(sparsity=0.3),
            lambda m: tc.fuse(m),
            lambda m: tc.factorize(m, tc.LowRankConfig(rank=2), include=["fc"]),
        ],
    ),
    "mlp-masked-fake-quant": (mlp, [prune(), quantize()]),
    "mlp-masked-converted-static": (mlp, [prune(), quantize(static=True), lambda m: tc.convert(m)]),
    "cnn-masked-qat-converted": (
        cnn,
        [
            prune(),
            lambda m, d: tc.prepare_qat(m, tc.QuantConfig(), "ste", d),
            lambda m: tc.convert(m),
        ],
    ),
    "mlp-masked-kmeans": (mlp, [prune(), lambda m: tc.kmeans_quantize(m, bits=3)]),
    "cnn-channel-pruned": (cnn, [lambda m: tc.prune_channels(m, INPUTS[cnn], 0.25)]),
    "cnn-channel-pruned-masked-converted": (
        cnn,
        [
            lambda m: tc.prune_channels(m, INPUTS[cnn], 0.25),
            prune(),
            quantize(static=True),
            lambda m: tc.convert(m),
        ],
    ),
    "cnn-channel-pruned-factorized": (
        cnn,
        [
            lambda m: tc.prune_channels(m, INPUTS[cnn], 0.25),
            lambda m: tc.factorize(m, tc.LowRankConfig(rank=2), include=["conv2"]),
        ],
    ),
}


def run_chain(build, steps: list) -> nn.Module:
    m = build()
    data = calib(build)
    for step in steps:
        m = step(m, data) if step.__code__.co_argcount == 2 else step(m)
    return m.eval()


@pytest.mark.parametrize("name", list(CHAINS))
def test_every_form_round_trips(name: str, tmp_path) -> None:
    build, steps = CHAINS[name]
    m = run_chain(build, steps)
    x = INPUTS[build]
    with torch.no_grad():
        y = m(x)
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, build(seed=1))  # another seed: every number must come from the file
    with torch.no_grad():
        assert torch.equal(fresh(x), y)
    assert tc.forms.layer_forms(fresh) == tc.forms.layer_forms(m)
    assert [type(mod).__name__ for mod in fresh.modules()] == [
        type(mod).__name__ for mod in m.modules()
    ]
    again = tmp_path / "again.safetensors"
    tc.save(fresh, again)
    assert tc.io.describe(again)["modules"] == tc.io.describe(path)["modules"]
    assert tc.load(again, build(seed=2))(x).equal(y)
