"""ONNX export of quantized models: :func:`export_onnx`.

The exported graph is the quantized model written in the operators ONNX runtimes fuse into integer
kernels:

- static activations: ``QuantizeLinear`` -> ``DequantizeLinear`` pairs (uint8 or int8, the
  calibrated scale and zero point) at every quantization point of the model (the input of each
  quantized layer, and in graph mode each integer activation between layers);
- int8-representable weights (up to 8 bits, per tensor or per channel, zero points in range):
  ``DequantizeLinear`` of an int8 initializer with its scales (``axis=0`` for per-channel);
- dynamic per-tensor activations of a Linear: ONNX's dynamic int8 form, ``DynamicQuantizeLinear``
  -> ``MatMulInteger`` -> scales (what onnxruntime's own ``quantize_dynamic`` writes, fused by its
  optimizer into one integer op);
- anything else (group-wise or wider-than-8-bit weights, per-token activations, narrowed ranges):
  the exact fake-quant arithmetic in plain ONNX ops (weights as float initializers);
- k-means (codebook) layers: ``Gather`` of the float codebook at the uint8 indices (one byte per
  weight in the file; onnxruntime looks the weights up once when it loads the model).

The graph computes in float32: a float64 or float16 model is exported with ``Cast`` at the graph
boundary (inputs and outputs keep the model's dtype); a bfloat16 model's graph takes and returns
float32 (numpy has no bfloat16).

onnxruntime runs the file with outputs equal to the torch fake-quant model up to rounding ties.
(Its u8*s8 CPU kernels saturate on AVX2 without VNNI exactly like fbgemm's: a model quantized with
the default ``reduce_range="auto"`` on such a CPU is exact in onnxruntime too; one quantized with
full-range 8-bit weights and activations is not.)
Requires ``onnx`` (``pip install torchcompress[onnx]``); uses torch's TorchScript-based exporter.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CompressionStateError, ConfigError, DependencyError, PathNotFoundError
from ..layers import Geometry
from ..layers import forward as layer_forward
from ..select import set_module
from . import functional as QF
from .geometry import symmetric_padding
from .graph import container_of
from .int_layer import IntLayer
from .kmeans import KMeansLayer
from .modules import QuantLayer

__all__ = ["export_onnx"]

log = logging.getLogger(__name__)


class _Const:
    """A tensor handed to a symbolic function as a Python object (so it becomes an initializer)."""

    def __init__(self, t: Tensor) -> None:
        self.t = t


def _zp_dtype(qmin: int, qmax: int, zp: int) -> torch.dtype | None:
    if qmin >= 0 and qmax <= 255 and 0 <= zp <= 255:
        return torch.uint8
    if qmin >= -128 and qmax <= 127 and -128 <= zp <= 127:
        return torch.int8
    return None


class _QDQ(torch.autograd.Function):
    """Static per-tensor fake quantization; exports as QuantizeLinear -> [Clip] -> DequantizeLinear."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float, zp: int, qmin: int, qmax: int) -> Tensor:  # type: ignore[override]
        s = torch.tensor([scale], dtype=torch.float32, device=x.device)
        z = torch.tensor([zp], dtype=torch.int32, device=x.device)
        return QF.fake_quantize(x, s, z, qmin, qmax)

    @staticmethod
    def symbolic(g: Any, x: Any, scale: float, zp: int, qmin: int, qmax: int) -> Any:
        dt = _zp_dtype(qmin, qmax, zp)
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor(zp, dtype=dt))
        q = g.op("QuantizeLinear", x, s, z)
        full = (0, 255) if dt == torch.uint8 else (-128, 127)
        if (qmin, qmax) != full:
            lo = g.op("Constant", value_t=torch.tensor(qmin, dtype=dt))
            hi = g.op("Constant", value_t=torch.tensor(qmax, dtype=dt))
            q = g.op("Clip", q, lo, hi)
        return g.op("DequantizeLinear", q, s, z)


class _WeightDQ(torch.autograd.Function):
    """The dequantized weight; exports as DequantizeLinear(int8 initializer, scales, zero points)."""

    @staticmethod
    def forward(
        ctx: Any, w: Tensor, q: _Const, scale: _Const, zp: _Const, axis: int | None
    ) -> Tensor:  # type: ignore[override]
        return w

    @staticmethod
    def symbolic(g: Any, w: Any, q: _Const, scale: _Const, zp: _Const, axis: int | None) -> Any:
        qv = g.op("Constant", value_t=q.t)
        sv = g.op("Constant", value_t=scale.t)
        zv = g.op("Constant", value_t=zp.t)
        if axis is None:
            return g.op("DequantizeLinear", qv, sv, zv)
        return g.op("DequantizeLinear", qv, sv, zv, axis_i=axis)


class _DynamicLinear(torch.autograd.Function):
    """Dynamic per-tensor u8 activations times int8 weights; exports as ONNX's dynamic int8 form."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w: Tensor,
        bias: Tensor | None,
        wt: _Const,
        scales: _Const,
        qmin: int,
        qmax: int,
    ) -> Tensor:  # type: ignore[override]
        s, z = QF.tensor_qparams(x, qmin, qmax, symmetric=False)
        return F.linear(QF.fake_quantize(x, s, z, qmin, qmax), w, bias)

    @staticmethod
    def symbolic(
        g: Any, x: Any, w: Any, bias: Any, wt: _Const, scales: _Const, qmin: int, qmax: int
    ) -> Any:
        xq, xs, xz = g.op("DynamicQuantizeLinear", x, outputs=3)
        wv = g.op("Constant", value_t=wt.t)  # [K, N] int8
        wz = g.op("Constant", value_t=torch.zeros(wt.t.shape[1], dtype=torch.int8))
        acc = g.op("MatMulInteger", xq, wv, xz, wz)
        accf = g.op("Cast", acc, to_i=1)  # FLOAT
        sv = g.op("Constant", value_t=scales.t)
        y = g.op("Mul", accf, g.op("Mul", xs, sv))
        if bias is not None and not (hasattr(bias, "node") and bias.node().mustBeNone()):
            y = g.op("Add", y, bias)
        return y


class _CodebookWeight(torch.autograd.Function):
    """A k-means layer's weight; exports as ``Gather(codebook, Cast(uint8 indices))``, so the file
    keeps one byte per weight and the small float codebook."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, idx: _Const, codebook: _Const, shape: list[int]) -> Tensor:  # type: ignore[override]
        return w

    @staticmethod
    def symbolic(g: Any, w: Any, idx: _Const, codebook: _Const, shape: list[int]) -> Any:
        iv = g.op("Constant", value_t=idx.t)  # uint8, one index per weight
        cv = g.op("Constant", value_t=codebook.t)
        # DequantizeLinear with scale 1 turns the indices into exact floats; unlike a Cast it is
        # not constant-folded at export, so the file keeps the uint8 indices
        one = g.op("Constant", value_t=torch.tensor(1.0))
        zero = g.op("Constant", value_t=torch.tensor(0, dtype=torch.uint8))
        fidx = g.op("DequantizeLinear", iv, one, zero)
        flat = g.op("Gather", cv, g.op("Cast", fidx, to_i=6), axis_i=0)  # INT32 indices
        return g.op("Reshape", flat, g.op("Constant", value_t=torch.tensor(shape)))


def _fq_formula(x: Tensor, scale: Tensor, zp: Tensor, qmin: int, qmax: int) -> Tensor:
    """Fake quantization in plain ops (exports as Div/Add/Round/Clip/Sub/Mul)."""
    q = torch.clamp(torch.round(x / scale + zp), qmin, qmax)
    return (q - zp) * scale


def _dynamic_formula(x: Tensor, act: dict[str, Any]) -> Tensor:
    """Dynamic (per-tensor or per-token) fake quantization in plain ops, for export."""
    qmin, qmax = int(act["qmin"]), int(act["qmax"])
    span = float(qmax - qmin)
    keep = act["granularity"] == "token"
    if keep:
        lo = x.amin(-1, keepdim=True)
        hi = x.amax(-1, keepdim=True)
    else:
        lo, hi = x.min(), x.max()
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    if act["symmetric"]:
        if qmin < 0:
            s = torch.clamp(QF.symmetric_scale(lo, hi, -qmin, qmax), min=QF.ACT_MIN_SCALE)
            z = torch.zeros_like(s)
        else:
            one_sided = lo >= 0
            mid = (qmin + qmax + 1) // 2
            two_sided = QF.symmetric_scale(lo, hi, mid - qmin, qmax - mid)
            s = torch.where(one_sided, hi / span, two_sided).clamp(min=QF.ACT_MIN_SCALE)
            z = torch.where(
                one_sided,
                torch.full_like(s, float(qmin)),
                torch.full_like(s, float(mid)),
            )
    else:
        s = torch.clamp((hi - lo) / span, min=QF.ACT_MIN_SCALE)
        z = torch.clamp(torch.round(qmin - lo / s), qmin, qmax)
    return _fq_formula(x, s, z, qmin, qmax)


class _ExportLayer(nn.Module):
    """A quantized layer written for the ONNX exporter (built from a fake-quant or integer layer)."""

    def __init__(self, geometry: Geometry, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.geometry = geometry
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.wq: tuple[_Const, _Const, _Const, int | None] | None = None
        self.act: dict[str, Any] | None = None
        self.in_qp: tuple[float, int] | None = None
        self.out: tuple[float, int, int, int] | None = None
        self.codebook: tuple[_Const, _Const, list[int]] | None = None

    def set_weight_ints(
        self, q2d: Tensor, scale: Tensor, zp: Tensor, qmin: int, qmax: int, granularity: str
    ) -> None:
        """Export the weight as DequantizeLinear of int8 where ONNX can represent it."""
        if granularity not in ("tensor", "channel") or qmin < -128 or qmax > 127:
            return
        if bool((zp < -128).any()) or bool((zp > 127).any()):
            return
        q = q2d.reshape(self.weight.shape).to(torch.int8)
        if (
            not self.geometry.kernel_size  # a map over the last dimension: ONNX's MatMulInteger
            and self.act is not None
            and self.act["dynamic"]
            and self.act["granularity"] == "tensor"
        ):
            self.dyn = (
                _Const(q.t().contiguous()),
                _Const((scale.float().reshape(-1) * torch.ones(q.shape[0])).contiguous()),
            )
        if granularity == "tensor":
            self.wq = (
                _Const(q),
                _Const(scale.float().reshape(())),
                _Const(zp.to(torch.int8).reshape(())),
                None,
            )
        else:
            self.wq = (
                _Const(q),
                _Const(scale.float().reshape(-1)),
                _Const(zp.to(torch.int8).reshape(-1)),
                0,
            )

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.wq is not None:
            w = _WeightDQ.apply(w, *self.wq)
        elif self.codebook is not None:
            w = _CodebookWeight.apply(w, *self.codebook)
        a = self.act
        if a is not None and a["dynamic"]:
            dyn = getattr(self, "dyn", None)
            if dyn is not None and a["qmin"] == 0 and a["qmax"] == 255 and not a["symmetric"]:
                return _DynamicLinear.apply(x, w, self.bias, dyn[0], dyn[1], a["qmin"], a["qmax"])
            x = _dynamic_formula(x, a)
        elif a is not None and self.in_qp is not None:
            s, z = self.in_qp
            if _zp_dtype(a["qmin"], a["qmax"], z) is not None:
                x = _QDQ.apply(x, s, z, int(a["qmin"]), int(a["qmax"]))
            else:
                x = _fq_formula(
                    x, torch.tensor(s), torch.tensor(float(z)), int(a["qmin"]), int(a["qmax"])
                )
        y = layer_forward(self.geometry, x, w, self.bias)
        if self.out is not None:
            s, z, qmin, qmax = self.out
            y = _QDQ.apply(y, s, z, qmin, qmax)
        return y


class _ExportFQ(nn.Module):
    """A graph-mode activation quantizer, for the exporter."""

    def __init__(self, scale: float, zp: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.qp = (scale, zp, qmin, qmax)

    def forward(self, x: Tensor) -> Tensor:
        s, z, qmin, qmax = self.qp
        if _zp_dtype(qmin, qmax, z) is None:
            return _fq_formula(x, torch.tensor(s), torch.tensor(float(z)), qmin, qmax)
        return _QDQ.apply(x, s, z, qmin, qmax)


class _ExportEmbedding(nn.Module):
    """An ``nn.Embedding`` stored as int8 rows with one float scale per row (symmetric): the graph
    gathers the int8 rows and their scales, then multiplies (what onnxruntime's own quantizer
    does to embedding tables; the error of each value is at most half a step of its row)."""

    def __init__(self, emb: nn.Embedding) -> None:
        super().__init__()
        w = emb.weight.detach().float()
        scale = (w.abs().amax(1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        self.register_buffer(
            "qweight", torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        )
        self.register_buffer("scale", scale)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.qweight).float() * self.scale[ids].unsqueeze(-1)


def _int8_embedding(m: nn.Module) -> nn.Module | None:
    """The int8 twin of a plain ``nn.Embedding`` (``None`` for one with ``max_norm``)."""
    if type(m) is nn.Embedding and m.max_norm is None:
        return _ExportEmbedding(m)
    return None


class _KeywordInputs(nn.Module):
    """Calls a model with keyword inputs given positionally; returns its tensor outputs as a tuple."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, *args: Tensor) -> Any:
        out = self.model(**dict(zip(self.keys, args)))
        if isinstance(out, dict):  # ModelOutput and plain dicts
            return tuple(v for v in out.values() if isinstance(v, Tensor))
        return out


def _export_geometry(m: QuantLayer | IntLayer) -> Geometry:
    """The layer's geometry with numeric padding (``"same"``/``"valid"`` resolved)."""
    geo = m.geometry
    if isinstance(geo.padding, str):
        pad = symmetric_padding(geo)
        if pad is None:
            raise CompressionStateError(
                f"padding={geo.padding!r} cannot be exported; use explicit padding."
            )
        geo = dataclasses.replace(geo, padding=pad)
    return geo


def _act_dict(fq: Any) -> dict[str, Any]:
    return {
        "dynamic": fq.dynamic,
        "granularity": fq.granularity,
        "qmin": fq.quant_min,
        "qmax": fq.quant_max,
        "symmetric": fq.spec.symmetric,
    }


def _fake_quant_twin(m: QuantLayer) -> nn.Module:
    w = m.quantized_weight()
    t = _ExportLayer(_export_geometry(m), w, m.bias)
    if m.input_quant is not None:
        t.act = _act_dict(m.input_quant)
        if not m.input_quant.dynamic:
            t.in_qp = (float(m.input_quant.scale), int(m.input_quant.zero_point.round()))
    if m.output_quant is not None:
        f = m.output_quant
        t.out = (float(f.scale), int(f.zero_point.round()), f.quant_min, f.quant_max)
    wq = m.weight_quant
    if wq is not None:
        rows, cols = m.weight_shape2d
        q2d = QF.quantize_weight(
            m.weight.detach().reshape(rows, cols).float(),
            wq.scale.detach(),
            wq.zero_point.detach().round().to(torch.int32),
            wq.quant_min,
            wq.quant_max,
            wq.granularity,
            wq.group_size,
        )
        t.set_weight_ints(
            q2d,
            wq.scale.detach(),
            wq.zero_point.detach(),
            wq.quant_min,
            wq.quant_max,
            wq.granularity,
        )
    return t


def _int_twin(m: IntLayer) -> nn.Module:
    t = _ExportLayer(_export_geometry(m), m.dequantized_weight(), m.bias)
    if m.act is not None and not m.graph_mode:  # graph layers: the graph quantizes the input
        t.act = dict(m.act)
        if not m.act["dynamic"]:
            t.in_qp = (float(m.input_scale), int(m.input_zero_point))
    if m.out is not None and not m.graph_mode:
        t.out = (
            float(m.output_scale),
            int(m.output_zero_point),
            int(m.out["qmin"]),
            int(m.out["qmax"]),
        )
    if m.wfmt is not None:
        w = m.wfmt
        t.set_weight_ints(
            m.int_weight(),
            m.weight_scale,
            m.weight_zero_points(),
            w["qmin"],
            w["qmax"],
            w["granularity"],
        )
    return t


def _kmeans_twin(m: KMeansLayer) -> nn.Module:
    t = _ExportLayer(_export_geometry(m), m.weight, m.bias)
    idx = QF.unpack_int(m.indices, m.bits, 0, m.numel).to(torch.uint8)
    t.codebook = (_Const(idx), _Const(m.codebook.detach().float()), list(m.weight_shape))
    return t


#: how each compressed layer type is written for the exporter (most derived class first)
_TWINS: dict[type[nn.Module], Any] = {
    QuantLayer: _fake_quant_twin,
    IntLayer: _int_twin,
    KMeansLayer: _kmeans_twin,
}


def _twin_of_type(cls: type[nn.Module]) -> Any:
    for c in cls.__mro__:
        make = _TWINS.get(c)
        if make is not None:
            return make
    return None


def _twin_of(m: nn.Module) -> nn.Module | None:
    make = _twin_of_type(type(m))
    return None if make is None else make(m)


def _quantize_before_residual_adds(m: nn.Module, container: Any) -> None:
    """Quantize the output of each layer whose residual add the torch graph fuses, with the range
    calibrated there (layers called once)."""
    graph = container.fake_graph
    if graph is None or not len(container.export_ranges):
        return
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or node.name not in container.export_ranges:
            continue
        fq = container.export_ranges[node.name]
        twin = m.get_submodule(str(node.target))
        if not fq.calibrated or calls[str(node.target)] != 1 or not isinstance(twin, _ExportLayer):
            continue
        qp = (float(fq.scale), int(fq.zero_point.round()), int(fq.quant_min), int(fq.quant_max))
        if twin.out is None and _zp_dtype(qp[2], qp[3], qp[1]) is not None:
            twin.out = qp


class _Float32Boundary(nn.Module):
    """Runs a model in float32, casting floating inputs from and outputs to ``dtype``."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.io_dtype = dtype

    def forward(self, *args: Any) -> Any:
        args = tuple(_cast(a, torch.float32) for a in args)
        return _cast(self.model(*args), self.io_dtype)


def _cast(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, tuple | list):
        return type(x)(_cast(v, dtype) for v in x)
    return x


def _model_float_dtype(model: nn.Module) -> torch.dtype | None:
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() and t.dtype != torch.float32:
            return t.dtype
    return None


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_batch: bool = True,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    embeddings: str = "int8",
    fuse_residual: bool | None = None,
) -> str:
    """Export a quantized model (fake-quant or converted) to ONNX with QDQ quantization.

    See the module documentation for how each part is written. The model is not modified (a copy
    is exported).

    Args:
        model: a model from :func:`torchcompress.quantize` or :func:`torchcompress.convert` (float
            layers export as usual).
        example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
        path: the ``.onnx`` file to write.
        opset: the ONNX opset (13 or later, for per-channel ``DequantizeLinear``).
        input_names: names of the graph inputs (default: ``input``, ``input_1``, ... or the dict's
            keys).
        output_names: names of the graph outputs.
        dynamic_batch: make the first dimension of every input and output dynamic.
        dynamic_axes: explicit dynamic axes per input/output name (overrides ``dynamic_batch``),
            e.g. ``{"input_ids": {0: "batch", 1: "seq"}}``.
        embeddings: ``"int8"`` (default): the ``nn.Embedding`` tables of a quantized model are
            stored as int8 rows with a float scale per row, as onnxruntime's own quantizer does
            (a transformer's word embeddings are most of its float bytes: 47 of MiniLM's 59 MB);
            ``"float"`` keeps them float (the graph then computes exactly what the torch model
            does).
        fuse_residual: for a model quantized in graph mode with residual adds fused into the
            convolutions before them (``tc.quantize``'s default, the fastest form in torch):
            ``None`` (default) writes each such layer's output quantized before the add, with the
            range calibrated there by ``tc.quantize``, which onnxruntime runs as ``QLinearConv``
            + ``QLinearAdd`` (about twice as fast as the fused form, which it cannot fuse; one
            more rounding than the torch model, as in onnxruntime's own quantizer); ``True``
            writes exactly the torch model's arithmetic (the add in float, then quantized).
            Models quantized with ``fuse_residual=False``, quantized before this option existed,
            or prepared for QAT, export as they compute.

    Returns:
        The path written.

    Raises:
        DependencyError: ``onnx`` is not installed.
        PathNotFoundError: the folder of ``path`` does not exist, or ``path`` is a folder.

    Example:
        >>> import torch, tempfile, os, torchcompress as tc
        >>> m = tc.quantize(torch.nn.Sequential(torch.nn.Linear(8, 4)), tc.QuantConfig(),
        ...                 [torch.randn(4, 8)])
        >>> p = tc.export_onnx(m, torch.randn(1, 8), os.path.join(tempfile.mkdtemp(), "m.onnx"))
        >>> p.endswith("m.onnx")
        True
    """
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise DependencyError("export_onnx needs 'onnx': pip install 'torchcompress[onnx]'.") from e

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder) or os.path.isdir(os.fspath(path)):
        raise PathNotFoundError(
            f"export_onnx cannot write {os.fspath(path)!r}: "
            + (
                f"the folder {folder!r} does not exist; create it first "
                "(os.makedirs(folder, exist_ok=True))."
                if not os.path.isdir(folder)
                else "it is a folder; give a file name inside it, e.g. 'model.onnx'."
            )
        )
    if opset < 13:
        raise CompressionStateError(
            "export_onnx needs opset 13 or later (per-channel DequantizeLinear)."
        )
    model_dtype = _model_float_dtype(model)
    m = copy.deepcopy(model).eval()
    container = container_of(m)
    if container is not None:
        if container.converted:
            container.bind(m, container.fake_graph)  # the fake-quant graph: float ops with QDQ
        for name, fq in list(container.quantizers.items()):
            container.quantizers[name] = _ExportFQ(
                float(fq.scale), int(fq.zero_point.round()), fq.quant_min, fq.quant_max
            )  # type: ignore[assignment]
    if embeddings not in ("int8", "float"):
        raise ConfigError(f"export_onnx(embeddings={embeddings!r}) must be 'int8' or 'float'.")
    quantized = any(_twin_of_type(type(mod)) for mod in m.modules())
    for name, mod in list(m.named_modules()):
        if not name:
            continue
        twin = _twin_of(mod)
        if twin is None and quantized and embeddings == "int8":
            twin = _int8_embedding(mod)
        if twin is not None:
            set_module(m, name, twin)
    if container is not None and not fuse_residual:
        _quantize_before_residual_adds(m, container)
    if model_dtype is not None:
        m.float()  # the exported graph computes in float32 (see the docstring)
    if isinstance(example_inputs, Tensor):
        args: tuple[Any, ...] = (example_inputs,)
        names = input_names or ["input"]
    elif isinstance(example_inputs, dict):
        keys = list(example_inputs)
        m = _KeywordInputs(m, keys)  # keyword inputs (Hugging Face) as positional graph inputs
        args = tuple(example_inputs[k] for k in keys)
        names = input_names or keys
    else:
        args = tuple(example_inputs)
        names = input_names or [f"input_{i}" if i else "input" for i in range(len(args))]
    if model_dtype is not None:
        # float64 and float16 graphs keep the model's input and output dtype (Cast at the
        # boundary); numpy has no bfloat16, so a bfloat16 model's graph takes and returns float32
        io_dtype = torch.float32 if model_dtype == torch.bfloat16 else model_dtype
        log.info(
            "export_onnx: the %s model is exported computing in float32 (inputs and outputs %s)",
            str(model_dtype).removeprefix("torch."),
            str(io_dtype).removeprefix("torch."),
        )
        args = tuple(_cast(a, io_dtype) for a in args)
        m = _Float32Boundary(m, io_dtype)
    outs = output_names or ["output"]
    dyn = dynamic_axes
    if dyn is None and dynamic_batch:
        dyn = {n: {0: "batch"} for n in [*names, *outs]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        torch.onnx.export(
            m,
            args,
            os.fspath(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=outs,
            dynamic_axes=dyn,
            do_constant_folding=True,
        )
    return os.fspath(path)
