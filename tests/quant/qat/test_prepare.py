"""tc.prepare_qat: state, conversion, save/load, accuracy, errors, CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import CalibrationError
from torchcompress.quant import (
    IntSpec,
    QuantConfig,
    QuantConvBn2d,
)

from ._common import W4A4, Net, calib_of, deep_cnn, digits, warm


def test_state_exists_at_prepare_time(data):
    """A freshly prepared model loads a trained checkpoint (no lazily created state)."""
    train, _ = data
    x = calib_of(train, 1)[0]
    for method in ("ste", "lsq", "pact"):
        base = warm(Net(), x)
        trained = tc.prepare_qat(copy.deepcopy(base), W4A4, method=method, calib_data=[x])
        tc.finetune(trained, train, steps=3, progress=False)
        fresh = tc.prepare_qat(copy.deepcopy(base), W4A4, method=method, calib_data=[x])
        fresh.load_state_dict(trained.state_dict())
        with torch.no_grad():
            assert torch.equal(fresh.eval()(x), trained.eval()(x)), method


@pytest.mark.parametrize("method", ["ste", "lsq", "pact"])
@pytest.mark.parametrize("graph", ["auto", "layer"])
def test_convert_preserves_outputs(data, tmp_path, method, graph):
    train, _ = data
    x = calib_of(train, 1)[0]
    base = warm(Net(), x)
    model = tc.prepare_qat(
        copy.deepcopy(base), W4A4, method=method, calib_data=calib_of(train, 2), graph=graph
    )
    tc.finetune(model, train, steps=4, lr=0.02, progress=False)
    model.eval()
    with torch.no_grad():
        ref = model(x)
    # save/load of the prepared model onto a fresh float model
    tc.save(model, tmp_path / "qat.safetensors")
    loaded = tc.load(tmp_path / "qat.safetensors", copy.deepcopy(base)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), ref)
    assert tc.profile(model, x[:1]).totals["macs"] > 0
    conv = tc.convert(model)
    assert not any(isinstance(m, QuantConvBn2d) for m in conv.modules())
    with torch.no_grad():
        out = conv(x)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    tc.save(conv, tmp_path / "int.safetensors")
    back = tc.load(tmp_path / "int.safetensors", copy.deepcopy(base)).eval()
    with torch.no_grad():
        assert torch.allclose(back(x), ref, atol=1e-4)
    assert tc.profile(conv, x[:1]).totals["macs"] > 0


def test_short_w4a4_lsq_recovers_ptq_loss():
    tc.seed_everything(0)
    train, test = digits(64)
    model = deep_cnn()
    tc.finetune(model, train, epochs=4, lr=0.05, progress=False)
    fp = tc.evaluate(model, test)["accuracy"]
    cfg = QuantConfig(
        weight=IntSpec(4, granularity="tensor"),
        activation=IntSpec(4, symmetric=False, signed=False),
    )
    calib = calib_of(train, 4)
    ptq = tc.evaluate(tc.quantize(copy.deepcopy(model), cfg, calib), test)["accuracy"]
    qat = tc.prepare_qat(copy.deepcopy(model), cfg, method="lsq", calib_data=calib)
    tc.finetune(qat, train, epochs=1, lr=0.01, progress=False)
    acc = tc.evaluate(qat, test)["accuracy"]
    int_acc = tc.evaluate(tc.convert(qat), test)["accuracy"]
    assert fp > 0.9
    assert fp - ptq >= 0.01, (fp, ptq)  # W4A4 PTQ does lose accuracy here (1.8 points measured)
    assert acc >= ptq + 0.5 * (fp - ptq), (fp, ptq, acc)  # QAT recovers at least half of it
    assert abs(int_acc - acc) <= 2 / 450  # the integer model scores as the QAT model


def test_calibration_must_reach_layers():
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(CalibrationError):
        tc.prepare_qat(Skip(), method="lsq", calib_data=[torch.randn(2, 4)], graph="layer")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["ste", "lsq", "pact"])
def test_qat_on_cuda(method):
    x = torch.randn(8, 1, 8, 8, device="cuda")
    model = warm(Net().cuda(), x)
    tc.prepare_qat(model, W4A4, method=method, calib_data=[x])
    model.train()
    loss = model(x).square().mean()
    loss.backward()
    scales = [p for n, p in model.named_parameters() if n.endswith(("scale", "alpha"))]
    assert all(p.device.type == "cuda" for p in scales)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        out = tc.convert(model)(x)
    assert torch.allclose(out, ref, atol=1e-4)
