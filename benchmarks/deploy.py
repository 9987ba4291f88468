"""Deployment that never costs speed: weight-only runtime modes and ONNX exports.

1. Weight-only (4-bit) and k-means models in each ``tc.convert(runtime=...)`` mode against fp32,
   at batch 1, 4 and 64, on a weight-bound Linear stack and on a CNN (ResNet-20).
2. ``tc.export_onnx`` against onnxruntime's own quantizers, latency in onnxruntime and file sizes:
   a residual CNN (static W8A8) and a MiniLM-sized BERT encoder built from a config (dynamic int8;
   random weights: latency and bytes only).

Interleaved rounds, medians and the spread of per-round ratios (see :mod:`benchmarks.harness`).

Run: ``python -m benchmarks.deploy`` (``--quick`` for a short run, ``--part weight|onnx``).
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import torchcompress as tc
from benchmarks.harness import Report, time_variants

W4 = tc.QuantConfig(weight=tc.IntSpec(4, granularity="channel"), activation=None)
W4G = tc.QuantConfig(weight=tc.IntSpec(4, granularity="group", group_size=128), activation=None)


def _mlp(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def _variants(model: nn.Module, linear_only: bool) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {"fp32": model}
    q = tc.quantize(copy.deepcopy(model), W4)
    for rt in ("cache", "lowbit", "w4a8"):
        if rt == "w4a8" and not linear_only:
            continue  # no int8 dynamic convolution kernel: convolutions would be cached
        out[f"W4 per-channel, runtime={rt!r}"] = tc.convert(copy.deepcopy(q), runtime=rt)
    if linear_only:
        qg = tc.quantize(copy.deepcopy(model), W4G)
        out["W4 group 128, runtime='cache'"] = tc.convert(copy.deepcopy(qg))
    k = tc.kmeans_quantize(copy.deepcopy(model), bits=4)
    out["k-means 4-bit, runtime='cache'"] = k
    out["k-means 4-bit, runtime='lowbit'"] = tc.quant.set_runtime(copy.deepcopy(k), "lowbit")
    return out


def _mb(model: nn.Module) -> tuple[float, float]:
    """MB stored, MB held at run time (after a forward)."""
    stored = held = 0
    for m in model.modules():
        own = sum(t.numel() * t.element_size() for t in m.state_dict(keep_vars=True).values())
        if any(True for _ in m.children()):
            continue
        stored += own
        held += m.runtime_bytes() if hasattr(m, "runtime_bytes") else own
    return stored / 1e6, held / 1e6


def weight_only(report: Report, quick: bool) -> None:
    width = 2048 if quick else 4096
    cases: list[tuple[str, nn.Module, Callable[[int], torch.Tensor], bool]] = [
        (
            f"Linear stack, 3 x {width}x{width} (weight-bound)",
            _mlp(width, 3),
            lambda b: torch.randn(b, width),
            True,
        ),
        (
            "ResNet-20 (CIFAR shapes)",
            tc.models.resnet20().eval(),
            lambda b: torch.randn(b, 3, 32, 32),
            False,
        ),
    ]
    rounds = 3 if quick else 7
    for title, model, make_x, linear_only in cases:
        torch.manual_seed(0)
        variants = _variants(model, linear_only)
        sizes = {}
        rows: dict[str, dict[str, str]] = {n: {"variant": n} for n in variants}
        for b in (1, 4, 64):
            x = make_x(b)
            with torch.no_grad():
                for m in variants.values():
                    m(x)
            fns = {n: (lambda m=m, x=x: m(x)) for n, m in variants.items()}
            t = time_variants(fns, baseline="fp32", rounds=rounds, min_time=0.1 if quick else 0.3)
            for n in variants:
                lo, hi = t.ratio_range[n]
                rows[n][f"batch {b}"] = f"{t.ratio[n]:.2f}x ({lo:.2f}–{hi:.2f})"
            if b == 1:
                for n, m in variants.items():
                    sizes[n] = _mb(m)
        for n in variants:
            rows[n]["MB stored"] = f"{sizes[n][0]:.1f}"
            rows[n]["MB at run time"] = f"{sizes[n][1]:.1f}"
        report.table(
            list(rows.values()),
            caption=f"**{title}**: latency relative to fp32 (median of per-round ratios, range)",
        )


# --- ONNX ------------------------------------------------------------------------------------


def _session(path: str) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _feed(sess: Any, inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
    names = [i.name for i in sess.get_inputs()]
    feed = {n: inputs[n] for n in names}
    return lambda: sess.run(None, feed)


def _export_fp32(
    model: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], path: str
) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            path,
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["output"],
            dynamic_axes={n: {0: "b"} for n in [*names, "output"]},
        )


def _onnx_rows(
    report: Report,
    title: str,
    files: dict[str, str],
    inputs: dict[str, np.ndarray],
    quick: bool,
) -> None:
    sessions = {n: _session(p) for n, p in files.items()}
    fns = {n: _feed(s, inputs) for n, s in sessions.items()}
    base = next(iter(files))
    t = time_variants(fns, baseline=base, rounds=3 if quick else 7, min_time=0.1 if quick else 0.3)
    ref = fns[base]()[0]
    rows = []
    for n, p in files.items():
        y = fns[n]()[0]
        cos = float(
            torch.nn.functional.cosine_similarity(
                torch.from_numpy(y).reshape(len(y), -1), torch.from_numpy(ref).reshape(len(ref), -1)
            ).mean()
        )
        lo, hi = t.ratio_range[n]
        rows.append(
            {
                "model": n,
                "file MB": f"{os.path.getsize(p) / 1e6:.2f}",
                f"latency vs {base}": f"{t.ratio[n]:.2f}x ({lo:.2f}–{hi:.2f})",
                "median ms": f"{1000 * t.median_s[n]:.2f}",
                "cosine to fp32": f"{cos:.4f}",
            }
        )
    report.table(rows, caption=f"**{title}** (onnxruntime, CPU)")


def onnx_exports(report: Report, quick: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    d = tempfile.mkdtemp()
    # a residual CNN, static W8A8
    torch.manual_seed(0)
    cnn = tc.models.resnet20().eval()
    calib = [torch.randn(16, 3, 32, 32) for _ in range(4)]
    x = torch.randn(32, 3, 32, 32)
    fp = os.path.join(d, "cnn_fp32.onnx")
    _export_fp32(cnn, (x[:1],), ["input"], fp)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.it, None)
            return None if b is None else {"input": b.numpy()}

    ort_static = os.path.join(d, "cnn_ort_static.onnx")
    quantize_static(
        fp,
        ort_static,
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    files = {"onnxruntime fp32": fp, "onnxruntime quantize_static (QDQ)": ort_static}
    q = tc.quantize(copy.deepcopy(cnn), tc.QuantConfig(), calib)
    files["tc.export_onnx (default)"] = tc.export_onnx(q, x[:1], os.path.join(d, "cnn_tc.onnx"))
    files["tc.export_onnx(fuse_residual=True): the torch arithmetic"] = tc.export_onnx(
        q, x[:1], os.path.join(d, "cnn_tc_fused.onnx"), fuse_residual=True
    )
    qu = tc.quantize(copy.deepcopy(cnn), tc.QuantConfig(), calib, fuse_residual=False)
    files["tc.quantize(fuse_residual=False), exported"] = tc.export_onnx(
        qu, x[:1], os.path.join(d, "cnn_tc_unfused.onnx")
    )
    _onnx_rows(report, "ResNet-20, static W8A8, batch 32", files, {"input": x.numpy()}, quick)

    # a MiniLM-sized BERT encoder (random weights), dynamic int8
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=2 if quick else 6,
        num_attention_heads=12,
        intermediate_size=1536,
    )
    torch.manual_seed(0)
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    ids = torch.randint(0, 30522, (8, 54))
    mask = torch.ones_like(ids)

    class Hidden(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    fp = os.path.join(d, "bert_fp32.onnx")
    _export_fp32(Hidden(bert), (ids, mask), ["input_ids", "attention_mask"], fp)
    ort_dyn = os.path.join(d, "bert_ort_dynamic.onnx")
    quantize_dynamic(fp, ort_dyn, per_channel=True, weight_type=QuantType.QInt8)
    q = tc.quantize(Hidden(copy.deepcopy(bert)), tc.QuantConfig(mode="dynamic"))
    files = {
        "onnxruntime fp32": fp,
        "onnxruntime quantize_dynamic (per-channel)": ort_dyn,
        "tc.export_onnx (default: int8 embeddings)": tc.export_onnx(
            q, {"input_ids": ids, "attention_mask": mask}, os.path.join(d, "bert_tc.onnx")
        ),
        "tc.export_onnx, embeddings='float'": tc.export_onnx(
            q,
            {"input_ids": ids, "attention_mask": mask},
            os.path.join(d, "bert_tc_f.onnx"),
            embeddings="float",
        ),
    }
    _onnx_rows(
        report,
        f"BERT encoder of MiniLM's size ({cfg.num_hidden_layers} layers, random weights), dynamic int8, batch 8 x 54 tokens",
        files,
        {"input_ids": ids.numpy(), "attention_mask": mask.numpy()},
        quick,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=["all", "weight", "onnx"], default="all")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    report = Report(
        "deploy",
        "Deployment: weight-only runtime modes and ONNX exports",
        "python -m benchmarks.deploy" + (" --quick" if args.quick else ""),
    )
    report.add(
        "The machine is shared with other jobs and noisy: ratios are medians of per-round ratios "
        "over interleaved rounds, with their range; compare rows of one table only."
    )
    if args.part in ("all", "weight"):
        weight_only(report, args.quick)
    if args.part in ("all", "onnx"):
        onnx_exports(report, args.quick)
    print(report.render())
    report.write()


if __name__ == "__main__":
    main()
