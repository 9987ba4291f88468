"""tc.export_onnx: QDQ models that onnxruntime runs like the torch fake-quant model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import torchcompress as tc

from .test_ptq import TinyResNet, _randomize_bn, mlp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.onnx


def _run(path: str, x: torch.Tensor) -> torch.Tensor:
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])


def _ops(path: str) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


def _int8_weights(path: str) -> int:
    g = onnx.load(path).graph
    consts = [n for n in g.node if n.op_type == "Constant"]
    n = 0
    for c in consts:
        t = onnx.numpy_helper.to_array(c.attribute[0].t)
        if t.dtype.name == "int8" and t.ndim >= 2:
            n += 1
    return n + sum(
        1 for i in g.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2
    )


def test_static_graph_model_qdq(tmp_path: Path) -> None:
    m = TinyResNet().eval()
    _randomize_bn(m)
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), [torch.randn(4, 3, 8, 8) for _ in range(3)])
    x = torch.randn(7, 3, 8, 8)
    # fuse_residual=True: the torch model's own arithmetic (the default form is tested below)
    p = tc.export_onnx(q, torch.randn(1, 3, 8, 8), tmp_path / "r.onnx", fuse_residual=True)
    ops = _ops(p)
    assert ops.count("QuantizeLinear") == 4 and "DequantizeLinear" in ops
    assert _int8_weights(p) == 4  # stem, conv1, conv2, head weights stored as int8
    y = _run(p, x)  # dynamic batch
    ref = q(x)
    fp = m(x)
    # equal up to one-step flips: onnxruntime fuses the QDQ pairs into integer QLinearConv/QLinearAdd
    # kernels whose requantization rounds values that lie within float error of a rounding boundary
    # the other way, and a flip in an early layer reaches several outputs. Over seeds the
    # difference stays a small fraction of the quantization error itself (mean <= 0.13, max <= 0.26).
    d, qerr = (y - ref).abs(), (ref - fp).abs()
    assert d.mean() <= 0.2 * qerr.mean() + 1e-5
    assert d.max() <= 0.4 * qerr.max() + 1e-4
    c = tc.convert(copy.deepcopy(q))
    pc = tc.export_onnx(c, x, tmp_path / "rc.onnx", fuse_residual=True)
    assert _ops(pc) == ops
    assert torch.allclose(_run(pc, x), y, atol=1e-6)


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_dynamic_linear(tmp_path: Path, granularity: str) -> None:
    q = tc.quantize(
        mlp(),
        tc.QuantConfig(
            mode="dynamic",
            activation=tc.IntSpec(8, symmetric=False, signed=False, granularity=granularity),
        ),
    )
    x = torch.randn(5, 16) * 3
    p = tc.export_onnx(q, x, tmp_path / "d.onnx")
    if granularity == "tensor":
        assert "MatMulInteger" in _ops(p) and "DynamicQuantizeLinear" in _ops(p)
    assert torch.allclose(_run(p, x), q(x), atol=1e-4)


def test_per_layer_and_weight_only(tmp_path: Path) -> None:
    m = torch.nn.Sequential(
        torch.nn.Conv1d(4, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(40, 2),
    ).eval()
    data = [torch.randn(2, 4, 10) for _ in range(2)]
    x = torch.randn(3, 4, 10)
    for cfg, kw in (
        (tc.QuantConfig(observer="percentile"), {"graph": "layer"}),
        (
            tc.QuantConfig(
                weight=tc.IntSpec(4, granularity="group", group_size=4), activation=None
            ),
            {},
        ),
        (tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), activation=None), {}),
    ):
        q = tc.quantize(copy.deepcopy(m), cfg, data, **kw)
        p = tc.export_onnx(q, x, tmp_path / "p.onnx")
        assert torch.allclose(_run(p, x), q(x), atol=1e-4)


# --- dtypes and codebooks (issue 11, item 8) ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_models_of_other_float_dtypes_export_computing_in_float32(
    dtype: torch.dtype, mode: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 4)).to(dtype).eval()
    tc.quantize(m, tc.QuantConfig(mode=mode), [torch.randn(4, 8, dtype=dtype)])
    x = torch.randn(3, 8, dtype=dtype)
    path = tc.export_onnx(m, x, str(tmp_path / "m.onnx"))
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    io_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    y = s.run(None, {s.get_inputs()[0].name: x.to(io_dtype).numpy()})[0]
    assert torch.from_numpy(y).dtype == io_dtype  # float64 / float16 in, same out
    with torch.no_grad():
        want = m(x).to(io_dtype)
    tol = 1e-5 if dtype == torch.float64 else 2 * torch.finfo(dtype).eps * float(want.abs().max())
    assert torch.allclose(torch.from_numpy(y), want, atol=tol)


def test_kmeans_model_exports_indices_and_codebook(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    tc.kmeans_quantize(m.eval(), bits=4)
    x = torch.randn(5, 64)
    path = tc.export_onnx(m, x, str(tmp_path / "k.onnx"))
    with torch.no_grad():
        assert torch.allclose(_run(path, x), m(x), atol=1e-5)
    g = onnx.load(path).graph
    tensors = [
        onnx.numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"
    ]
    tensors += [onnx.numpy_helper.to_array(i) for i in g.initializer]
    big = [t for t in tensors if t.size >= 32 * 4]
    assert sorted(t.dtype.name for t in big) == ["uint8", "uint8"]  # no float weight matrix


class _Embedder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(300, 32)
        self.fc = torch.nn.Linear(32, 16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids))


def _float_matrices(path: str) -> int:
    g = onnx.load(path).graph
    arrays = [onnx.numpy_helper.to_array(i) for i in g.initializer]
    arrays += [
        onnx.numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"
    ]
    return sum(a.nbytes for a in arrays if a.dtype.name == "float32" and a.ndim >= 2)


def test_int8_model_stores_int8_initializers_only(tmp_path: Path) -> None:
    """Weights once, as int8, and the embedding table as int8 rows (onnxruntime's own quantizer
    does the same); ``embeddings='float'`` keeps the table float and the graph exact."""
    torch.manual_seed(0)
    m = tc.quantize(_Embedder().eval(), tc.QuantConfig(mode="dynamic"))
    ids = torch.randint(0, 300, (4, 7))
    s = ort.InferenceSession(str(tc.export_onnx(m, ids, tmp_path / "e.onnx")))
    y = torch.from_numpy(s.run(None, {s.get_inputs()[0].name: ids.numpy()})[0])
    assert _float_matrices(str(tmp_path / "e.onnx")) == 0
    assert (tmp_path / "e.onnx").stat().st_size < 300 * 32 + 32 * 16 + 4000
    with torch.no_grad():
        ref = m(ids)
    # the table's rounding (half a step of each row) moves the outputs a little
    assert (y - ref).abs().max() <= 0.05 * ref.abs().max()
    p = tc.export_onnx(m, ids, tmp_path / "f.onnx", embeddings="float")
    s = ort.InferenceSession(p)
    y = torch.from_numpy(s.run(None, {s.get_inputs()[0].name: ids.numpy()})[0])
    assert torch.allclose(y, ref, atol=1e-4)
    assert _float_matrices(p) == 300 * 32 * 4


def _optimized_ops(path: str, tmp_path: Path) -> set[str]:
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def test_default_export_quantizes_before_fused_residual_adds(tmp_path: Path) -> None:
    """The form onnxruntime runs fastest: the convolution before a residual add gets its own
    output quantizer (calibrated by tc.quantize), so onnxruntime fuses QLinearConv + QLinearAdd
    instead of running that convolution in float."""
    torch.manual_seed(0)
    m = TinyResNet().eval()
    _randomize_bn(m)
    q = tc.quantize(copy.deepcopy(m), tc.QuantConfig(), [torch.randn(4, 3, 8, 8) for _ in range(3)])
    assert list(q.quant_graph.export_ranges) == ["block_conv2"]
    assert q.quant_graph.export_ranges["block_conv2"].calibrated
    x = torch.randn(7, 3, 8, 8)
    p = tc.export_onnx(q, x[:1], tmp_path / "r.onnx")
    assert _ops(p).count("QuantizeLinear") == 5  # one more than the fused form
    ops = _optimized_ops(p, tmp_path)
    assert {"QLinearConv", "QLinearAdd"} <= ops and "FusedConv" not in ops
    assert "FusedConv" in _optimized_ops(
        tc.export_onnx(q, x[:1], tmp_path / "f.onnx", fuse_residual=True), tmp_path
    )
    y, ref, fp = _run(p, x), q(x), m(x)
    # one more rounding than the torch model: well inside its quantization error
    assert (y - ref).abs().mean() <= 0.5 * (ref - fp).abs().mean() + 1e-5
    c = tc.convert(copy.deepcopy(q))
    tc.save(c, tmp_path / "c.safetensors")
    loaded = tc.load(tmp_path / "c.safetensors", TinyResNet().eval())
    pc = tc.export_onnx(loaded, x[:1], tmp_path / "rc.onnx")
    assert torch.allclose(_run(pc, x), y, atol=1e-5)
