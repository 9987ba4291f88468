"""AWQ: the scaling alone leaves float outputs unchanged, the search never does worse than no
scaling, the clipping search, full runs on tiny BERT / GPT-2 / LLaMA, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError, SelectionError
from torchcompress.quant import functional as QF
from torchcompress.quant.awq import clip_search
from torchcompress.quant.scaling import InputScaled
from torchcompress.testing import BlockNet, token_batches

W3 = tc.QuantConfig(weight=tc.IntSpec(3, symmetric=False, granularity="channel"), activation=None)


def _outlier_data(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        x = torch.randn(32, 16, generator=g)
        x[:, :3] *= 8  # a few salient input channels
        out.append(x)
    return out


def _rel_err(model: nn.Module, ref: nn.Module, data: list, fn=lambda m, d: m(d)) -> float:
    with torch.no_grad():
        r = [fn(ref, d) for d in data]
        o = [fn(model, d) for d in data]
    return sum(float((a - b).pow(2).sum()) for a, b in zip(o, r)) / sum(
        float(b.pow(2).sum()) for b in r
    )


def test_scaling_alone_leaves_float_outputs_unchanged() -> None:
    model, data = BlockNet(), _outlier_data()
    scaled = tc.awq(copy.deepcopy(model), W3, data, quantize=False, grid=5)
    assert _rel_err(scaled, model, data) < 1e-10
    ratios = tc.io.history(scaled)[-1]["ratios"]
    assert set(ratios) == {f"blocks.{i}.{n}" for i in range(3) for n in ("fc1", "fc2")}
    # fc2's input comes out of fc1 through a ReLU: folded; fc1's input is the residual stream
    assert not any(isinstance(m, InputScaled) for n, m in scaled.named_modules() if "fc2" in n)


def test_awq_beats_rtn_and_search_includes_identity() -> None:
    model, data = BlockNet(), _outlier_data()
    rtn = tc.quantize(copy.deepcopy(model), W3, include="blocks")
    q = tc.awq(copy.deepcopy(model), W3, data, grid=10, clip=False)
    assert isinstance(q.blocks[0].fc2, tc.quant.QuantLinear)
    assert _rel_err(q, model, data) < _rel_err(rtn, model, data)
    clipped = tc.awq(copy.deepcopy(model), W3, data, grid=10)
    assert _rel_err(clipped, model, data) <= _rel_err(q, model, data) * 1.05
    # a layer's weights on its quantizer's grid reproduce exactly (ranges from the clip search)
    layer = clipped.blocks[1].fc2
    assert torch.equal(layer.quantized_weight(), layer.weight_quant(layer.weight.detach()))


def _clip_err(w: torch.Tensor, x: torch.Tensor, sz: tuple, group: int | None) -> float:
    s, z = sz
    if group is None:
        q = QF.fake_quantize(w, s.unsqueeze(1), z.unsqueeze(1), -4, 3)
    else:
        q = QF.fake_quantize_weight(w, s, z, -4, 3, "group", group)
    return float(((x @ (w - q).T) ** 2).sum())


def test_clip_search_never_worse_than_min_max() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        w, x = torch.randn(6, 32, generator=g), torch.randn(200, 32, generator=g)
        xtx = x.T @ x / 200
        for group in (None, 8):
            full = clip_search(w, xtx, -4, 3, symmetric=True, group_size=group, ratios=[1.0])
            best = clip_search(
                w, xtx, -4, 3, symmetric=True, group_size=group, ratios=[1.0, 0.9, 0.7]
            )

            assert _clip_err(w, x, best, group) <= _clip_err(w, x, full, group) + 1e-6


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


@pytest.mark.hf
@pytest.mark.slow
@pytest.mark.parametrize("make", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
def test_full_runs_on_tiny_transformers(transformers, make: str) -> None:
    from torchcompress import testing

    torch.manual_seed(0)
    model, data = getattr(testing, make)(), token_batches(4)
    scaled = tc.awq(copy.deepcopy(model), W3, data, quantize=False, grid=4, max_search_batches=2)
    assert _rel_err(scaled, model, data, _hidden) < 1e-8  # the transform alone changes nothing
    q = tc.awq(copy.deepcopy(model), W3, data, grid=4, max_search_batches=2)
    blocks = [n for n, _ in tc.calibration.find_blocks(model)]
    rtn = tc.quantize(copy.deepcopy(model), W3, include=[b + ".*" for b in blocks])
    assert _rel_err(q, model, data, _hidden) < _rel_err(rtn, model, data, _hidden)


def test_bad_input() -> None:
    model, data = BlockNet(), _outlier_data(1)
    with pytest.raises(ConfigError, match="2-8 bits"):
        tc.awq(model, tc.QuantConfig(weight=tc.IntSpec(16), activation=None), data)
    with pytest.raises(ConfigError, match="group_size=3 does not divide"):
        tc.awq(
            model,
            tc.QuantConfig(
                weight=tc.IntSpec(4, granularity="group", group_size=3), activation=None
            ),
            data,
            grid=2,
        )
    assert type(model.blocks[0].fc1) is nn.Linear and not tc.io.history(model)
    with pytest.raises(ConfigError, match="grid"):
        tc.awq(model, W3, data, grid=0)
    with pytest.raises(ConfigError, match="clip_ratios"):
        tc.awq(model, W3, data, clip_ratios=(1.5,))
    with pytest.raises(SelectionError, match="matches no module"):
        tc.awq(model, W3, data, blocks=["blocks.7"])
    with pytest.raises(DataError, match="calib_data is None"):
        tc.awq(model, W3)
