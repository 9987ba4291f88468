"""The QAT method registry: the built-in methods' checks and options."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import ConfigError, DataError
from torchcompress.quant import LSQQuantize, PACTQuantize, QuantConfig, STEQuantize
from torchcompress.quant import qat as Q

from ._common import W4A4, Net


def test_lsq_needs_calibration_data():
    with pytest.raises(DataError, match="calib_data"):
        tc.prepare_qat(Net(), W4A4, method="lsq")
    # weight-only LSQ needs none
    m = tc.prepare_qat(Net(), QuantConfig(activation=None), method="lsq")
    assert isinstance(m.fc.weight_quant, LSQQuantize)


def test_pact_on_non_relu_activation_is_an_error():
    model = nn.Sequential(
        nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2)
    )
    calib = [torch.randn(4, 8)]
    with pytest.raises(ConfigError, match=r"'4'.*not the output of a ReLU"):
        tc.prepare_qat(copy.deepcopy(model), method="pact", calib_data=calib)
    m = tc.prepare_qat(model, method="pact", calib_data=calib, pact_fallback="lsq")
    kinds = {k: type(v).__name__ for k, v in m.quant_graph.quantizers.items()}
    assert "PACTQuantize" in kinds.values() and "LSQQuantize" in kinds.values()


def test_unknown_method_and_bad_options():
    with pytest.raises(ConfigError, match="method"):
        tc.prepare_qat(Net(), method="lsqq")
    with pytest.raises(ConfigError, match="lsq_init"):
        tc.prepare_qat(Net(), method="lsq", lsq_init="magic", calib_data=[torch.randn(2, 1, 8, 8)])
    with pytest.raises(ConfigError, match="dynamic"):
        tc.prepare_qat(Net(), QuantConfig(mode="dynamic"), method="lsq")
    with pytest.raises(ConfigError, match="QuantConfig"):
        tc.prepare_qat(Net(), "int8")  # type: ignore[arg-type]


def test_registry_and_options() -> None:
    assert Q.QAT_METHODS.names() == ["ste", "lsq", "pact"]
    assert Q.QAT_METHODS.get("pact").quantizer is PACTQuantize
    with pytest.raises(ConfigError, match="pact_fallback"):
        Q.QATOptions(pact_fallback="pact")  # a fallback is another method
    with pytest.raises(ConfigError, match="pact_alpha"):
        Q.QATOptions(pact_alpha=0)
    with pytest.raises(ConfigError, match="observer"):
        Q.QATOptions(observer="entropy")
    opts = Q.QATOptions(observer=tc.quant.MovingMinMax(0.5))
    assert Q.QATOptions.from_dict(opts.to_dict()) == opts


def test_ste_activation_observer_is_a_spec() -> None:
    m = tc.prepare_qat(
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
        method="ste",
        observer=tc.quant.MovingMinMax(0.5),
    )
    fq = m.quant_graph.quantizers["input__0"]
    assert (
        fq.observer_spec == tc.quant.MovingMinMax(0.5)
        and fq.observer.spec.averaging_constant == 0.5
    )
    rec = tc.io.history(m)[-1]
    assert rec["observer"] == "moving_minmax" and rec["observer_options"] == {
        "averaging_constant": 0.5
    }
    # the default: the config's observer unless it is the plain min/max
    cfg = QuantConfig(observer=tc.quant.Percentile(99.0))
    m = tc.prepare_qat(nn.Sequential(nn.Linear(4, 2)), cfg, method="ste")
    assert m.quant_graph.quantizers["input__0"].observer_spec == tc.quant.Percentile(99.0)


class HalfStepSTE(STEQuantize):
    """A test quantizer: STE whose activation ranges are half the observed ones."""

    method = "half_ste"

    def calibrate(self) -> None:
        super().calibrate()
        if self.role == "activation":
            with torch.no_grad():
                self.scale.mul_(0.5)


def test_a_new_method_is_one_class(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(Q.QAT_METHODS, "_entries", dict(Q.QAT_METHODS._entries))

    @Q.QAT_METHODS.register("half_ste")
    class HalfSTE(Q.STE):
        """STE weights; activations on half the observed range."""

        name = "half_ste"
        quantizer = HalfStepSTE

        def make_activation(self, fq, origin, what):
            return HalfStepSTE(
                fq.spec, observer=self.activation_observer, **self.activation_args(fq)
            )

    x = torch.rand(8, 4)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    q = tc.prepare_qat(copy.deepcopy(model), method="half_ste", calib_data=[x])
    ste = tc.prepare_qat(copy.deepcopy(model), method="ste", calib_data=[x])
    half, full = q.quant_graph.quantizers["input__0"], ste.quant_graph.quantizers["input__0"]
    assert isinstance(half, HalfStepSTE) and float(half.scale) == pytest.approx(
        float(full.scale) / 2
    )
    q.eval()
    path = tmp_path / "half.safetensors"
    tc.save(q, path)
    back = tc.load(path, copy.deepcopy(model)).eval()
    assert isinstance(back.quant_graph.quantizers["input__0"], HalfStepSTE)
    with torch.no_grad():
        assert torch.equal(back(x), q(x))
        assert torch.allclose(tc.convert(q)(x), back(x), atol=1e-5)
