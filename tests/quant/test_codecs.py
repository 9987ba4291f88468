"""tc.save / tc.load of quantized, converted, graph-mode and k-means models (no pickle)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import torchcompress as tc
from torchcompress.errors import CompressionStateError
from torchcompress.quant import FakeQuantize, IntLayer, KMeansLayer, QuantGraph, QuantLinear

from .test_ptq import TinyResNet, _randomize_bn, mlp


def _round_trip(model: nn.Module, fresh: nn.Module, tmp_path: Path) -> nn.Module:
    path = tmp_path / "m.safetensors"
    tc.save(model, path)
    return tc.load(path, fresh)


@pytest.mark.parametrize(
    "cfg",
    [
        tc.QuantConfig(mode="dynamic"),
        tc.QuantConfig(mode="dynamic", activation=tc.IntSpec(8, granularity="token")),
        tc.QuantConfig(
            weight=tc.IntSpec(3, symmetric=False, granularity="group", group_size=8),
            activation=None,
        ),
        tc.QuantConfig(weight=tc.IntSpec(2, granularity="channel"), activation=None),
    ],
    ids=["dynamic", "token", "w3-group", "w2"],
)
def test_fake_and_converted_round_trip(cfg: tc.QuantConfig, tmp_path: Path) -> None:
    m = mlp()
    x = torch.randn(3, 16)
    q = tc.quantize(copy.deepcopy(m), cfg)
    loaded = _round_trip(q, mlp(), tmp_path)
    assert isinstance(loaded[0], QuantLinear)
    assert torch.equal(loaded(x), q(x))
    c = tc.convert(q)
    loaded = _round_trip(c, mlp(), tmp_path)
    assert isinstance(loaded[0], IntLayer)
    assert torch.equal(loaded[0].qweight, c[0].qweight)
    assert torch.allclose(loaded(x), c(x), atol=1e-6)
    assert tc.io.history(loaded)[-1]["step"] == "convert"


def test_static_per_layer_round_trip(tmp_path: Path) -> None:
    m = mlp()
    q = tc.quantize(
        copy.deepcopy(m), tc.QuantConfig(observer="percentile"), [torch.randn(8, 16)], graph="layer"
    )
    loaded = _round_trip(q, mlp(), tmp_path)
    assert loaded[0].input_quant.calibrated
    assert torch.equal(loaded[0].input_quant.scale, q[0].input_quant.scale)
    x = torch.randn(4, 16)
    assert torch.equal(loaded(x), q(x))


def test_graph_mode_round_trip(tmp_path: Path) -> None:
    m = TinyResNet().eval()
    _randomize_bn(m)
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    x = torch.randn(3, 3, 8, 8)
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), data)
    loaded = _round_trip(q, TinyResNet().eval(), tmp_path)
    assert isinstance(loaded.quant_graph, QuantGraph) and not loaded.quant_graph.converted
    assert isinstance(loaded.block.bn1, nn.Identity)
    assert torch.equal(loaded(x), q(x))
    c = tc.convert(q)
    loaded = _round_trip(c, TinyResNet().eval(), tmp_path)
    assert loaded.quant_graph.converted
    assert loaded.quant_graph.code() == c.quant_graph.code()
    assert torch.equal(loaded(x), c(x))
    # a loaded fake-quant graph model converts like the original
    q2 = _round_trip(
        tc.quantize(copy.deepcopy(m), tc.QuantConfig(), data), TinyResNet().eval(), tmp_path
    )
    assert torch.allclose(tc.convert(q2)(x), c(x), atol=1e-3)


def test_graph_mode_load_into_changed_model_fails_cleanly(tmp_path: Path) -> None:
    q = tc.quantize(TinyResNet().eval(), tc.QuantConfig(), [torch.randn(2, 3, 8, 8)])
    path = tmp_path / "m.safetensors"
    tc.save(q, path)

    class Other(TinyResNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool(self.act(self.stem(x)))  # no block
            return self.head(torch.flatten(torch.cat([x, x], 1)[:, :8], 1))

    fresh = Other().eval()
    with pytest.raises(CompressionStateError):
        tc.load(path, fresh)
    assert not hasattr(fresh, "quant_graph") and "forward" not in fresh.__dict__


def test_kmeans_round_trip(tmp_path: Path) -> None:
    m = mlp()
    k = tc.kmeans_quantize(copy.deepcopy(m), bits=3)
    loaded = _round_trip(k, mlp(), tmp_path)
    assert isinstance(loaded[0], KMeansLayer)
    x = torch.randn(2, 16)
    assert torch.equal(loaded(x), k(x))


def test_files_hold_integers(tmp_path: Path) -> None:
    from safetensors import safe_open

    c = tc.convert(
        tc.quantize(
            nn.Sequential(nn.Linear(256, 256)),
            tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), mode="dynamic"),
        )
    )
    path = tmp_path / "c.safetensors"
    tc.save(c, path)
    with safe_open(str(path), framework="pt") as f:
        w = f.get_tensor("0.qweight")
    assert w.dtype == torch.uint8 and w.numel() == 256 * 256 // 2
    assert path.stat().st_size < 256 * 256 * 4 / 5
    assert FakeQuantize is not None


def test_io_codec_can_create_missing_module_and_see_the_model(tmp_path: Path) -> None:
    """Core io change: ``creates_missing`` codecs and the model-level ``after_load_model`` hook."""
    from torchcompress import io

    class Marker(nn.Module):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag
            self.register_buffer("v", torch.zeros(2))

    seen: list[tuple[str, str]] = []

    class MarkerCodec(io.ModuleCodec):
        name = "test.marker"
        creates_missing = True

        def matches(self, module: nn.Module) -> bool:
            return type(module) is Marker

        def encode(self, module: nn.Module) -> dict[str, str]:
            return {"tag": module.tag}  # type: ignore[dict-item]

        def decode(self, spec: dict[str, str], current: nn.Module | None) -> nn.Module:
            assert current is None
            return Marker(spec["tag"])

        def after_load_model(self, model: nn.Module, name: str) -> None:
            seen.append((type(model).__name__, name))

    io.register_codec(MarkerCodec())
    m = nn.Sequential(nn.Linear(2, 2))
    m.add_module("extra", Marker("hello"))
    m.extra.v.fill_(3.0)
    fresh = nn.Sequential(nn.Linear(2, 2))
    loaded = _round_trip(m, fresh, tmp_path)
    assert loaded.extra.tag == "hello" and loaded.extra.v.tolist() == [3.0, 3.0]
    assert seen == [("Sequential", "extra")]
    # a codec that does not create missing modules still reports the mismatch
    m2 = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))
    path = tmp_path / "m2.safetensors"
    tc.save(m2, path)
    from torchcompress.errors import SelectionError

    with pytest.raises(SelectionError):
        tc.load(path, nn.Sequential(nn.ReLU()))


def test_unfused_residual_graph_round_trip(tmp_path: Path) -> None:
    m = TinyResNet().eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    c = tc.convert(tc.quantize(copy.deepcopy(m), tc.QuantConfig(), data, fuse_residual=False))
    loaded = _round_trip(c, TinyResNet().eval(), tmp_path)
    assert not loaded.quant_graph.fuse_residual
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), c(x))


def test_sequential_graph_model_round_trip(tmp_path: Path) -> None:
    """The graph container is a child of the model: re-tracing an nn.Sequential leaves it out."""
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.rand(5, 4)
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), [x])
    loaded = _round_trip(q, copy.deepcopy(m), tmp_path)
    assert torch.equal(loaded(x), q(x))
    c = tc.convert(copy.deepcopy(q))
    assert torch.equal(_round_trip(c, copy.deepcopy(m), tmp_path)(x), c(x))


def _old_quantizer(observer: str) -> dict[str, object]:
    """A quantizer as files written before observer specs describe it (every option, always)."""
    return {
        "spec": tc.IntSpec(8, symmetric=False, signed=False).to_dict(),
        "role": "activation",
        "dynamic": False,
        "quant_min": 0,
        "quant_max": 255,
        "shape": None,
        "observer": observer,
        "options": {"percentile": 99.9, "averaging_constant": 0.01, "bins": 512},
        "observe_relu": False,
        "calibrated": True,
        "learnable_scale": False,
        "name": "fc",
        "qat": None,
    }


def test_quantizers_saved_before_observer_specs_load() -> None:
    from torchcompress.quant.codecs import fq_from_spec, fq_spec

    for name, spec in (
        ("percentile", tc.quant.Percentile(99.9, bins=512)),
        ("kl", tc.quant.KL(bins=512)),
        ("moving_minmax", tc.quant.MovingMinMax(0.01)),
        ("minmax", tc.quant.MinMax()),
    ):
        fq = fq_from_spec(_old_quantizer(name))
        assert fq is not None and fq.observer_spec == spec and fq.observer.spec == spec
        again = fq_from_spec(fq_spec(fq))  # and the new description round-trips
        assert again is not None and again.observer_spec == spec


def test_unknown_observer_or_method_in_a_file_is_an_error() -> None:
    from torchcompress.quant.codecs import fq_from_spec

    with pytest.raises(CompressionStateError, match=r"'entropy'.*not registered"):
        fq_from_spec(_old_quantizer("entropy"))
    d = _old_quantizer("minmax")
    d["qat"] = {"method": "magic", "observing": False}
    with pytest.raises(CompressionStateError, match="QAT method 'magic'"):
        fq_from_spec(d)
