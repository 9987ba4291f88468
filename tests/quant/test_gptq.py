"""GPTQ: the maths on one matrix, the verb on tiny BERT / GPT-2 / our own blocks, the formats it
leaves (convert, save/load, profile, ONNX), masks, and bad input."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import (
    CalibrationError,
    ConfigError,
    DataError,
    NumericalError,
    SelectionError,
)
from torchcompress.quant import functional as QF
from torchcompress.quant.gptq import gptq_matrix
from torchcompress.testing import BlockNet, token_batches


def _correlated(rows: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, n, generator=g) @ torch.randn(n, n, generator=g)


def _minmax(bits: int, symmetric: bool):
    qmin, qmax = QF.qrange(bits, True)

    def params(w: torch.Tensor):
        return QF.choose_qparams(w.amin(1), w.amax(1), qmin, qmax, symmetric=symmetric)

    return params, qmin, qmax


def _rtn(w: torch.Tensor, bits: int, symmetric: bool, group: int | None = None) -> torch.Tensor:
    params, qmin, qmax = _minmax(bits, symmetric)
    if group is None:
        s, z = params(w)
        return QF.fake_quantize(w, s.unsqueeze(1), z.unsqueeze(1), qmin, qmax)
    out = torch.empty_like(w)
    for g in range(0, w.shape[1], group):
        s, z = params(w[:, g : g + group])
        out[:, g : g + group] = QF.fake_quantize(
            w[:, g : g + group], s.unsqueeze(1), z.unsqueeze(1), qmin, qmax
        )
    return out


def _out_err(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    return float(((x @ (w - q).T) ** 2).mean())


def test_eight_bits_with_ample_data_is_close_to_rtn() -> None:
    x, w = _correlated(4096, 32, 0), torch.randn(16, 32)
    params, qmin, qmax = _minmax(8, True)
    q, s, _, _ = gptq_matrix(w, x.T @ x / 4096, params, qmin, qmax)
    rtn = _rtn(w, 8, True)
    s0, _ = params(w)
    torch.testing.assert_close(s, s0)  # per-channel ranges from the original weights
    assert (q - rtn).abs().max() <= 2.01 * float(s.max())  # a step or two away at most
    assert _out_err(x, w, q) <= _out_err(x, w, rtn) * 1.01
    assert bool((q / s.unsqueeze(1)).sub(torch.round(q / s.unsqueeze(1))).abs().max() < 1e-4)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_lower_output_error_than_rtn(bits: int, symmetric: bool) -> None:
    for seed in range(3):
        x, w = _correlated(512, 32, seed), torch.randn(8, 32)
        params, qmin, qmax = _minmax(bits, symmetric)
        q, _, _, _ = gptq_matrix(w, x.T @ x / 512, params, qmin, qmax)
        assert _out_err(x, w, q) < _out_err(x, w, _rtn(w, bits, symmetric))


def test_groups_act_order_and_the_grid() -> None:
    x, w = _correlated(1024, 32, 1), torch.randn(8, 32)
    params, qmin, qmax = _minmax(4, False)
    for act_order in (False, True):
        q, s, z, _ = gptq_matrix(
            w, x.T @ x / 1024, params, qmin, qmax, group_size=8, act_order=act_order, block_size=5
        )
        assert s.shape == (8, 4) and z.shape == (8, 4)
        # every weight sits on its group's grid: fake quantization reproduces it exactly
        again = QF.fake_quantize_weight(q, s, z, qmin, qmax, "group", 8)
        assert torch.equal(again, q)
        assert _out_err(x, w, q) < _out_err(x, w, _rtn(w, 4, False, group=8))


def test_dead_inputs_and_kept_zeros() -> None:
    x, w = _correlated(256, 8, 2), torch.randn(4, 8)
    x[:, 3] = 0
    keep_zero = torch.zeros(4, 8, dtype=torch.bool)
    keep_zero[0, :4] = True
    keep_zero[2, 5] = True
    params, qmin, qmax = _minmax(4, True)
    q, _, _, _ = gptq_matrix(w, x.T @ x / 256, params, qmin, qmax, keep_zero=keep_zero)
    assert bool((q[:, 3] == 0).all())  # dead input: weight set to zero
    assert bool((q[keep_zero] == 0).all())


def test_group_size_must_divide() -> None:
    params, qmin, qmax = _minmax(4, True)
    with pytest.raises(ConfigError, match="group_size=3"):
        gptq_matrix(torch.randn(2, 8), torch.eye(8), params, qmin, qmax, group_size=3)


# --- the verb ---------------------------------------------------------------------------------


def _blocknet_data(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(32, 16, generator=g) @ torch.randn(16, 16, generator=g) for _ in range(n)]


def _rel_err(model: nn.Module, ref: nn.Module, data: list) -> float:
    with torch.no_grad():
        num = sum(float((model(x) - ref(x)).pow(2).sum()) for x in data)
        den = sum(float(ref(x).pow(2).sum()) for x in data)
    return num / den


W3 = tc.QuantConfig(weight=tc.IntSpec(3, symmetric=False, granularity="channel"), activation=None)


def test_blocknet_gptq_beats_rtn_and_leaves_the_head_in_float() -> None:
    model, data = BlockNet(), _blocknet_data()
    rtn = tc.quantize(copy.deepcopy(model), W3, exclude="head")
    q = tc.gptq(copy.deepcopy(model), W3, data)
    assert isinstance(q.blocks[0].fc1, tc.quant.QuantLinear)
    assert isinstance(q.head, nn.Linear)  # outside the blocks
    assert _rel_err(q, model, data) < 0.7 * _rel_err(rtn, model, data)
    entry = tc.io.history(q)[-1]
    assert entry["step"] == "gptq" and entry["blocks"] == ["blocks.0", "blocks.1", "blocks.2"]
    assert entry["config"]["quant"]["weight"]["bits"] == 3
    # the weights are on the quantizer's grid: the fake-quant forward reproduces them
    layer = q.blocks[1].fc2
    assert torch.equal(layer.quantized_weight(), layer.weight.detach())


def test_config_forms_are_equivalent() -> None:
    data = _blocknet_data(2)
    torch.manual_seed(0)
    base = BlockNet()
    a = tc.gptq(copy.deepcopy(base), tc.GPTQConfig(W3, damp=0.05), data)
    b = tc.gptq(copy.deepcopy(base), W3, data, damp=0.05)
    c = tc.gptq(copy.deepcopy(base), tc.GPTQConfig(W3, damp=0.05).to_dict(), data)
    for m in (b, c):
        assert torch.equal(m.blocks[2].fc1.weight, a.blocks[2].fc1.weight)
    assert tc.GPTQConfig.from_dict(tc.GPTQConfig(W3, act_order=True).to_dict()).act_order


def test_not_true_sequential_also_runs() -> None:
    model, data = BlockNet(), _blocknet_data(2)
    q = tc.gptq(copy.deepcopy(model), W3, data, true_sequential=False, act_order=True)
    assert _rel_err(q, model, data) < 0.2


def test_conv_blocks() -> None:
    class ConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(
                nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU()) for _ in range(2)
            )

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    model = ConvNet()
    data = [torch.randn(4, 8, 6, 6) for _ in range(2)]
    cfg = tc.QuantConfig(weight=tc.IntSpec(4, granularity="group", group_size=12), activation=None)
    rtn = tc.quantize(copy.deepcopy(model), cfg)
    q = tc.gptq(copy.deepcopy(model), cfg, data)
    assert isinstance(q.blocks[0][0], tc.quant.QuantConv2d)
    assert _rel_err(q, model, data) < _rel_err(rtn, model, data)


def test_masked_layers_keep_their_zeros() -> None:
    model, data = BlockNet(), _blocknet_data()
    tc.prune(model, tc.PruneConfig(sparsity=0.5), include="blocks")
    masks = {n: (m.weight == 0) for n, m in model.named_modules() if n.endswith(("fc1", "fc2"))}
    q = tc.gptq(model, tc.QuantConfig(weight=tc.IntSpec(4), activation=None), data)
    for name, zero in masks.items():
        w = q.get_submodule(name).quantized_weight()
        assert bool((w[zero] == 0).all()), name


def test_static_w8a8_calibrates_activations_and_converts() -> None:
    model, data = BlockNet(), _blocknet_data()
    q = tc.gptq(copy.deepcopy(model), tc.QuantConfig(), data)
    fq = q.blocks[1].fc2.input_quant
    assert fq is not None and fq.calibrated and fq.enabled and not fq.observing
    assert float(fq.scale) != 1.0
    with torch.no_grad():
        fake = q(data[0])
    conv = tc.convert(copy.deepcopy(q))
    with torch.no_grad():
        torch.testing.assert_close(conv(data[0]), fake, rtol=1e-4, atol=1e-4)
    assert _rel_err(q, model, data) < 0.01


# --- Hugging Face models ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits


def _hf_err(model: nn.Module, ref: nn.Module, data: list) -> float:
    with torch.no_grad():
        r = [_hidden(ref, d) for d in data]
        o = [_hidden(model, d) for d in data]
    return sum(float((a - b).pow(2).sum()) for a, b in zip(o, r)) / sum(
        float(b.pow(2).sum()) for b in r
    )


@pytest.mark.hf
@pytest.mark.slow
def test_tiny_bert_full_run(transformers, tmp_path) -> None:
    from torchcompress.testing import tiny_bert

    torch.manual_seed(0)
    model, data = tiny_bert(), token_batches(6)
    cfg = tc.QuantConfig(
        weight=tc.IntSpec(4, symmetric=False, granularity="group", group_size=16), activation=None
    )
    rtn = tc.quantize(copy.deepcopy(model), cfg, include="encoder")
    q = tc.gptq(copy.deepcopy(model), cfg, data, act_order=True)
    assert isinstance(q.encoder.layer[1].attention.self.key, tc.quant.QuantLinear)
    assert isinstance(q.pooler.dense, nn.Linear)
    assert _hf_err(q, model, data) < _hf_err(rtn, model, data)
    # save / load into a fresh model: the same outputs
    path = os.path.join(tmp_path, "bert.safetensors")
    tc.save(q, path)
    torch.manual_seed(1)
    fresh = tc.load(path, tiny_bert())
    with torch.no_grad():
        torch.testing.assert_close(_hidden(fresh, data[0]), _hidden(q, data[0]))
    # profile and convert work unchanged
    prof = tc.profile(q, data[0])
    assert prof.total_macs > 0
    conv = tc.convert(copy.deepcopy(q))
    with torch.no_grad():
        torch.testing.assert_close(
            _hidden(conv, data[0]), _hidden(q, data[0]), rtol=1e-4, atol=1e-4
        )


@pytest.mark.hf
def test_tiny_gpt2_full_run_hf_conv1d(transformers) -> None:
    from torchcompress.testing import tiny_gpt2

    torch.manual_seed(0)
    model, data = tiny_gpt2(), token_batches(6)
    q = tc.gptq(copy.deepcopy(model), W3, data)
    layer = q.transformer.h[0].attn.c_attn
    assert isinstance(layer, tc.quant.QuantLinear) and layer.source == "Conv1D"
    rtn = tc.quantize(copy.deepcopy(model), W3, include="transformer.h")
    assert _hf_err(q, model, data) < _hf_err(rtn, model, data)
    assert isinstance(q.lm_head, nn.Linear)  # tied to the embeddings, outside the blocks


@pytest.mark.hf
@pytest.mark.onnx
@pytest.mark.slow
def test_export_onnx_of_a_gptq_model(transformers, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from torchcompress.testing import tiny_bert

    model, data = tiny_bert(layers=1), token_batches(4)
    q = tc.gptq(model, tc.QuantConfig(mode="dynamic"), data, blocks="encoder.layer")
    path = os.path.join(tmp_path, "q.onnx")
    batch = data[0]
    tc.export_onnx(q, dict(batch), path, input_names=list(batch), output_names=["hidden", "pooled"])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        want = _hidden(q, batch)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=2e-2, atol=2e-2)


# --- bad input ---------------------------------------------------------------------------------


def test_too_few_calibration_rows() -> None:
    model = BlockNet()
    few = [torch.randn(4, 16)]  # 4 rows for 16 inputs
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        CalibrationError, match=r"saw 4 input rows for its 16 inputs.*Add calibration samples"
    ):
        tc.gptq(model, W3, few)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.blocks[0].fc1) is nn.Linear
    # without the check, damping alone keeps the Hessian invertible; with no damping it fails clearly
    tc.gptq(copy.deepcopy(model), W3, few, min_rows=0)
    with pytest.raises(NumericalError, match="Raise the damping or add calibration samples"):
        tc.gptq(
            copy.deepcopy(model), W3, [torch.zeros(4, 16) + torch.randn(4, 1)], min_rows=0, damp=0.0
        )


def test_blocks_that_do_not_match() -> None:
    model, data = BlockNet(), _blocknet_data(1)
    with pytest.raises(SelectionError, match="matches no module"):
        tc.gptq(model, W3, data, blocks="layers")
    with pytest.raises(SelectionError, match="no repeated blocks"):
        tc.gptq(nn.Sequential(nn.Linear(16, 16)), W3, data)
    with pytest.raises(SelectionError, match="outside the blocks"):
        tc.gptq(model, W3, data, include=["blocks.0.fc1", "head"])


def test_unsupported_formats_and_options() -> None:
    model, data = BlockNet(), _blocknet_data(1)
    with pytest.raises(ConfigError, match="2-8 bits"):
        tc.gptq(model, tc.QuantConfig(weight=tc.IntSpec(16), activation=None), data)
    with pytest.raises(ConfigError, match="quantizes no weights"):
        tc.GPTQConfig(tc.QuantConfig(weight=None))
    with pytest.raises(ConfigError, match="group_size=5 does not divide"):
        tc.gptq(
            model,
            tc.QuantConfig(
                weight=tc.IntSpec(4, granularity="group", group_size=5), activation=None
            ),
            data,
        )
    assert type(model.blocks[0].fc1) is nn.Linear  # left as it was
    with pytest.raises(ConfigError, match="damp"):
        tc.gptq(model, W3, data, damp=-0.1)
    with pytest.raises(ConfigError, match="no field 'dampening'"):
        tc.gptq(model, W3, data, dampening=0.1)
    with pytest.raises(DataError, match="calib_data is None"):
        tc.gptq(model, W3)
