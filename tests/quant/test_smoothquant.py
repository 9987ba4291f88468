"""SmoothQuant: the transform leaves float outputs unchanged (BERT, GPT-2, LLaMA), folds only where
correct, helps W8A8 on activation outliers, chooses alpha per group, and rejects bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError
from torchcompress.quant.scaling import InputScaled
from torchcompress.quant.smoothquant import smoothing_scale
from torchcompress.testing import BlockNet, token_batches


def _outlier_model() -> BlockNet:
    torch.manual_seed(0)
    model = BlockNet(width=16, hidden=32)
    with torch.no_grad():
        for b in model.blocks:
            b.norm.weight[:2] = 30.0  # two outlier channels in every LayerNorm's output
    return model


def _data(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(32, 16, generator=g) for _ in range(n)]


def _rel_err(model: nn.Module, ref: nn.Module, data: list, fn=lambda m, d: m(d)) -> float:
    with torch.no_grad():
        r = [fn(ref, d) for d in data]
        o = [fn(model, d) for d in data]
    return sum(float((a - b).pow(2).sum()) for a, b in zip(o, r)) / sum(
        float(b.pow(2).sum()) for b in r
    )


def test_smoothing_scale_formula() -> None:
    x, w = torch.tensor([9.0, 4.0, 0.0]), torch.tensor([1.0, 4.0, 1.0])
    torch.testing.assert_close(smoothing_scale(x, w, 0.5), torch.tensor([3.0, 1.0, 1.0]))
    torch.testing.assert_close(smoothing_scale(x, w, 1.0), torch.tensor([9.0, 4.0, 1.0]))


def test_float_outputs_unchanged_and_w8a8_improves() -> None:
    model, data = _outlier_model(), _data()
    smooth = tc.smoothquant(copy.deepcopy(model), data)
    assert _rel_err(smooth, model, data) < 1e-10
    # the norm's output feeds fc1 only: folded, no explicit scale for fc1
    assert isinstance(smooth.blocks[0].fc1, nn.Linear)
    alphas = tc.io.history(smooth)[-1]["alphas"]
    assert alphas["blocks.0.fc1"] is not None  # the outlier group is smoothed
    w8a8 = tc.QuantConfig()
    naive = tc.quantize(copy.deepcopy(model), w8a8, data, include="blocks")
    sq = tc.quantize(smooth, w8a8, data, include="blocks")
    assert _rel_err(sq, model, data) < 0.5 * _rel_err(naive, model, data)


def test_fixed_alpha_and_explicit_scales() -> None:
    model, data = _outlier_model(), _data()
    smooth = tc.smoothquant(copy.deepcopy(model), data, alpha=0.5, fold=False)
    assert isinstance(smooth.blocks[0].fc1, InputScaled)
    assert _rel_err(smooth, model, data) < 1e-10
    alphas = tc.io.history(smooth)[-1]["alphas"]
    assert set(alphas.values()) == {0.5}
    cfg = tc.SmoothQuantConfig(alpha=0.8)
    assert tc.SmoothQuantConfig.from_dict(cfg.to_dict()) == cfg


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


@pytest.mark.hf
@pytest.mark.parametrize(
    ("make", "explicit", "folded"),
    [
        # post-norm: the block's input and the LayerNorm's output also feed the residual, and the
        # second FFN layer reads a GELU's output; the value projection absorbs the output's scale
        (
            "tiny_bert",
            ["attention.self.query", "intermediate.dense", "output.dense"],
            ["attention.output.dense"],
        ),
        ("tiny_gpt2", ["mlp.c_proj"], ["attn.c_attn", "attn.c_proj", "mlp.c_fc"]),
        (
            "tiny_llama",
            [],
            ["self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"],
        ),
    ],
)
def test_transform_leaves_transformers_unchanged(
    transformers, make: str, explicit: list[str], folded: list[str]
) -> None:
    from torchcompress import testing

    torch.manual_seed(0)
    model, data = getattr(testing, make)(), token_batches(3)
    smooth = tc.smoothquant(copy.deepcopy(model), data, alpha=0.6)
    assert _rel_err(smooth, model, data, _hidden) < 1e-8
    block = tc.calibration.find_blocks(smooth)[0][1]
    for name in explicit:
        assert isinstance(block.get_submodule(name), InputScaled), name
    for name in folded:
        assert not isinstance(block.get_submodule(name), InputScaled), name
    q = tc.quantize(smooth, tc.QuantConfig(), data)  # then W8A8 runs
    assert _rel_err(q, model, data, _hidden) < 0.1


def test_bad_input() -> None:
    model, data = _outlier_model(), _data(1)
    with pytest.raises(ConfigError, match="quantizes no activations"):
        tc.smoothquant(model, data, quant=tc.QuantConfig(activation=None))
    with pytest.raises(ConfigError, match="alpha"):
        tc.smoothquant(model, data, alpha=1.5)
    with pytest.raises(ConfigError, match="'auto'"):
        tc.smoothquant(model, data, alpha="best")
    with pytest.raises(ConfigError, match="SmoothQuantConfig"):
        tc.smoothquant(model, data, config=tc.QuantConfig())
    with pytest.raises(DataError, match="calib_data is None"):
        tc.smoothquant(model)
    assert isinstance(model.blocks[0].fc1, nn.Linear) and not tc.io.history(model)


@pytest.mark.onnx
def test_explicit_scales_quantize_convert_and_export(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    model, data = _outlier_model(), _data()
    smooth = tc.smoothquant(copy.deepcopy(model), data, alpha=0.5, fold=False)
    q = tc.quantize(smooth, tc.QuantConfig(), data)  # graph mode: InputScaled is traced through
    assert isinstance(q.blocks[0].fc1, InputScaled)
    assert isinstance(q.blocks[0].fc1.layer, tc.quant.QuantLinear)
    path = str(tmp_path / "sq.onnx")
    tc.export_onnx(q, data[0], path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: data[0].numpy()})[0]
    with torch.no_grad():
        want = q(data[0])
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)
        conv = tc.convert(copy.deepcopy(q))
        torch.testing.assert_close(conv(data[0]), want, rtol=1e-4, atol=1e-4)
