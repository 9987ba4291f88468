"""Quantized CNNs: accuracy, stored bytes and CPU latency, against torch.ao and onnxruntime.

CIFAR ResNet-20 and MobileNetV2 trained briefly on scikit-learn's real handwritten digits (upsampled
to 32x32), then: W8A8 static with each observer, W4 and W3 weight-only (per channel and per group),
k-means 4-bit. Peers: torch's built-in static int8 (torch.ao FX prepare/convert with the x86 qconfig:
fused conv+ReLU modules and quantized adds, as its eager flow runs them) and onnxruntime's static
int8 (``quantize_static``, QDQ, u8 activations, s8 per-channel weights), against ``tc.export_onnx``.

Usage::

    python -m benchmarks.quant_cnn            # full
    python -m benchmarks.quant_cnn --quick    # a minute or two
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
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from benchmarks.harness import Report, time_variants

warnings.filterwarnings("ignore")


# --- data and training (tc.data.digits / tc.finetune when available) ------------------------


def _digits(
    batch_size: int = 64,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    if hasattr(tc.data, "digits"):
        train, test = tc.data.digits(batch_size=batch_size, image_size=32, channels=3, seed=0)
        return list(train), list(test)
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.5) / 0.5
    y = torch.tensor(d.target)
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=0.25, random_state=0, stratify=d.target
    )
    g = torch.Generator().manual_seed(0)
    perm = torch.tensor(idx_tr)[torch.randperm(len(idx_tr), generator=g)]

    def batches(idx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (x[idx[i : i + batch_size]], y[idx[i : i + batch_size]])
            for i in range(0, len(idx), batch_size)
        ]

    return batches(perm), batches(torch.tensor(idx_te))


def _train(model: nn.Module, train: list[Any], epochs: int) -> nn.Module:
    if hasattr(tc, "finetune"):
        try:
            return tc.finetune(model, train, epochs=epochs, lr=0.05, progress=False)
        except AttributeError:
            pass
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * len(train)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for xb, yb in train:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def _accuracy(fn: Callable[[torch.Tensor], torch.Tensor], test: list[Any]) -> float:
    right = total = 0
    for xb, yb in test:
        right += int((fn(xb).argmax(1) == yb).sum())
        total += len(yb)
    return right / total


def _bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


# --- peers ----------------------------------------------------------------------------------


def _torch_ao(model: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    pc = PrepareCustomConfig().set_non_traceable_module_classes([tc.models.PadShortcut])
    m = prepare_fx(
        copy.deepcopy(model).eval(),
        get_default_qconfig_mapping("x86"),
        (calib[0],),
        prepare_custom_config=pc,
    )
    with torch.no_grad():
        for xb in calib:
            m(xb)
    return convert_fx(m)


def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _ort_fn(sess: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def _ort_static(fp_path: str, out_path: str, calib: list[torch.Tensor]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"input": x.numpy()}

    quantize_static(
        fp_path,
        out_path,
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )


def _export_fp32(model: nn.Module, path: str) -> None:
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 32, 32),),
            path,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "b"}, "output": {0: "b"}},
        )


# --- the benchmark --------------------------------------------------------------------------


def _weight_only(model: nn.Module, bits: int, group: int | None) -> nn.Module:
    m = copy.deepcopy(model)
    if group is None:
        return tc.quantize(
            m, tc.QuantConfig(weight=tc.IntSpec(bits, granularity="channel"), activation=None)
        )

    # per group where the group size divides a layer's inputs, per channel elsewhere
    def divides(mod: nn.Module) -> bool:
        w = mod.weight
        return w[0].numel() % group == 0

    names = [
        n for n, mod in m.named_modules() if isinstance(mod, nn.Linear | nn.Conv2d) and divides(mod)
    ]
    tc.quantize(
        m,
        tc.QuantConfig(
            weight=tc.IntSpec(bits, granularity="group", group_size=group), activation=None
        ),
        include=names,
    )
    rest = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear | nn.Conv2d)]
    if rest:
        tc.quantize(
            m,
            tc.QuantConfig(weight=tc.IntSpec(bits, granularity="channel"), activation=None),
            include=rest,
        )
    return m


def run_model(
    name: str, report: Report, quick: bool, data: tuple[list[Any], list[Any]]
) -> dict[str, Any]:
    train, test = data
    torch.manual_seed(0)
    model = tc.models.create(name)
    epochs = 2 if quick else (12 if name == "resnet20" else 8)
    model = _train(model, train, epochs).eval()
    calib = [xb for xb, _ in train[: (2 if quick else 8)]]
    threads = torch.get_num_threads()
    xb = torch.randn(64, 3, 32, 32)
    rounds, min_time = (3, 0.3) if quick else (9, 1.0)

    rows: list[dict[str, str]] = []
    fp_acc = _accuracy(model, test)
    fp_bytes = _bytes(model)
    rows.append(
        {
            "variant": "fp32",
            "accuracy": f"{fp_acc:.4f}",
            "stored": f"{fp_bytes / 1e3:.0f} kB",
            "bytes vs fp32": "1.00x",
            "kernel": "fp32",
        }
    )
    observers = (
        ["minmax", "kl"] if quick else ["minmax", "moving_minmax", "percentile", "mse", "kl"]
    )
    converted: dict[str, nn.Module] = {}
    fakes: dict[str, nn.Module] = {}
    for obs in observers:
        cfg = tc.QuantConfig(observer=obs, weight_observer="minmax")
        q = tc.quantize(copy.deepcopy(model), cfg, calib)
        c = tc.convert(copy.deepcopy(q))
        key = f"W8A8 static, {obs}"
        converted[key], fakes[key] = c, q
    if not quick:
        q = tc.quantize(
            copy.deepcopy(model), tc.QuantConfig(observer="minmax", weight_observer="sawb"), calib
        )
        converted["W8A8 static, minmax acts, sawb weights"] = tc.convert(copy.deepcopy(q))
        fakes["W8A8 static, minmax acts, sawb weights"] = q
    wo = [(4, None), (4, 16)] if quick else [(4, None), (4, 16), (3, None), (3, 16)]
    for bits, group in wo:
        key = f"W{bits} weight-only, " + ("per-channel" if group is None else f"group {group}")
        q = _weight_only(model, bits, group)
        converted[key], fakes[key] = tc.convert(copy.deepcopy(q)), q
    km = tc.kmeans_quantize(copy.deepcopy(model), bits=4)
    converted["k-means 4-bit"], fakes["k-means 4-bit"] = km, km
    for key, c in converted.items():
        acc = _accuracy(c, test)
        acc_fq = _accuracy(fakes[key], test)
        layer = next((m for m in c.modules() if hasattr(m, "kernel_note")), None)
        note = layer.kernel_note() if layer is not None else "codebook, dequantized on the fly"
        rows.append(
            {
                "variant": key,
                "accuracy": f"{acc:.4f}"
                + ("" if abs(acc - acc_fq) < 1e-9 else f" (fake-quant {acc_fq:.4f})"),
                "stored": f"{_bytes(c) / 1e3:.0f} kB",
                "bytes vs fp32": f"{_bytes(c) / fp_bytes:.2f}x",
                "kernel": note,
            }
        )
    ao = _torch_ao(model, calib)
    rows.append(
        {
            "variant": "torch.ao static int8 (x86, FX)",
            "accuracy": f"{_accuracy(ao, test):.4f}",
            "stored": "(torch quantized tensors)",
            "bytes vs fp32": "",
            "kernel": "fbgemm/oneDNN quantized modules",
        }
    )

    # --- latency ------------------------------------------------------------------------
    main_key = "W8A8 static, minmax"
    unfused = tc.quantize(
        copy.deepcopy(model), tc.QuantConfig(observer="minmax"), calib, fuse_residual=False
    )
    unfused_c = tc.convert(copy.deepcopy(unfused))
    rows.append(
        {
            "variant": f"{main_key}, fuse_residual=False",
            "accuracy": f"{_accuracy(unfused_c, test):.4f}",
            "stored": f"{_bytes(unfused_c) / 1e3:.0f} kB",
            "bytes vs fp32": f"{_bytes(unfused_c) / fp_bytes:.2f}x",
            "kernel": "int8 oneDNN kernel, residual adds re-quantized",
        }
    )
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    xcl = xb.contiguous(memory_format=torch.channels_last)
    fns: dict[str, Callable[[], Any]] = {
        "torch fp32": lambda: model(xb),
        "torch fp32, channels_last": lambda: cl_model(xcl),
        f"tc.convert {main_key}": lambda: converted[main_key](xb),
        f"tc.convert {main_key}, fuse_residual=False": lambda: unfused_c(xb),
        "torch.ao static int8": lambda: ao(xb),
        "torch.ao static int8, channels_last input": lambda: ao(xcl),
        "tc.convert W4 per-channel (runtime='cache')": lambda: converted[
            "W4 weight-only, per-channel"
        ](xb),
        "k-means 4-bit (runtime='cache')": lambda: km(xb),
    }
    onnx_rows: list[dict[str, str]] = []
    sessions: dict[str, Any] = {}
    try:
        d = tempfile.mkdtemp()
        fp_path = os.path.join(d, f"{name}_fp32.onnx")
        _export_fp32(model, fp_path)
        ort_q = os.path.join(d, f"{name}_ort_int8.onnx")
        _ort_static(fp_path, ort_q, calib)
        tc_path = os.path.join(d, f"{name}_tc.onnx")
        tc.export_onnx(fakes[main_key], torch.randn(1, 3, 32, 32), tc_path)
        tc_path2 = os.path.join(d, f"{name}_tc_unfused.onnx")
        tc.export_onnx(unfused, torch.randn(1, 3, 32, 32), tc_path2)
        files = {
            "onnxruntime fp32": fp_path,
            "onnxruntime quantize_static (QDQ u8/s8)": ort_q,
            f"tc.export_onnx {main_key}": tc_path,
            f"tc.export_onnx {main_key}, fuse_residual=False": tc_path2,
        }
        sessions = {k: _session(v, threads) for k, v in files.items()}
        for k, s in sessions.items():
            f = _ort_fn(s)
            fns[k] = lambda f=f: f(xb)
            onnx_rows.append(
                {
                    "runtime": k,
                    "accuracy": f"{_accuracy(f, test):.4f}",
                    "file kB": f"{os.path.getsize(files[k]) / 1e3:.0f}",
                }
            )
    except ImportError as e:
        onnx_rows.append({"runtime": f"skipped: {e}"})
    timing = time_variants(fns, baseline="torch fp32", rounds=rounds, min_time=min_time)

    report.add(
        f"### {name}\n\nTrained {epochs} epochs on digits (fp32 test accuracy {fp_acc:.4f}); calibration: {len(calib)} training batches of 64. Latency: batch of 64 images, {threads} threads."
    )
    report.table(rows, caption="**Accuracy and stored bytes** (converted models)")
    trows = [timing.row(k) for k in fns]
    report.table(trows, caption="**CPU latency** (interleaved rounds; ratio to torch fp32, NCHW)")
    if onnx_rows:
        report.table(onnx_rows, caption="**onnxruntime accuracy**")
    ours = timing.ratio[f"tc.convert {main_key}"]
    ao_r = timing.ratio["torch.ao static int8"]
    text = (
        f"tc.convert's W8A8 model runs at {ours:.2f}x of fp32 ({'faster' if ours < ao_r else 'slower'} than "
        f"torch.ao's static int8 at {ao_r:.2f}x; {ours / ao_r:.2f}x its time)."
    )
    if sessions:
        peer = "onnxruntime quantize_static (QDQ u8/s8)"
        fused_k = f"tc.export_onnx {main_key}"
        unfused_k = f"tc.export_onnx {main_key}, fuse_residual=False"
        best = min((fused_k, unfused_k), key=lambda k: timing.ratio[k])
        text += (
            f" In onnxruntime, our exported QDQ models run at {timing.ratio[fused_k]:.2f}x "
            f"(default export) and {timing.ratio[unfused_k]:.2f}x (quantized with fuse_residual=False) of torch "
            f"fp32, vs {timing.ratio[peer]:.2f}x for onnxruntime's own static quantizer (the "
            f"faster of ours takes {timing.ratio[best] / timing.ratio[peer]:.2f}x its time; "
            "ratios are medians of per-round ratios to torch fp32)."
        )
    wo_r = timing.ratio["tc.convert W4 per-channel (runtime='cache')"]
    km_r = timing.ratio["k-means 4-bit (runtime='cache')"]
    text += (
        " Weight-only and k-means models store fewer bytes; with the default runtime='cache' they "
        "dequantize once and run the float kernels (float weights in memory; see the deployment "
        f"section for the other modes): {wo_r:.2f}x of fp32 for W4 per-channel, {km_r:.2f}x for "
        "k-means."
    )
    report.add(text)
    return {"timing": timing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="resnet20,mobilenet_v2")
    args = ap.parse_args()
    rep = Report(
        "quant_cnn",
        "Quantization: CNNs on digits (tc.convert vs torch.ao and onnxruntime)",
        "python -m benchmarks.quant_cnn" + (" --quick" if args.quick else ""),
    )
    rep.add(
        "Accuracy on the 450 held-out digits; bytes are the converted model's state (what tc.save "
        "stores). W8A8 uses the default config (per-channel int8 weights, 7-bit on CPUs whose int8 "
        "kernels saturate; uint8 per-tensor activations) with the named activation observer; "
        "graph mode keeps activations integer between layers."
    )
    data = _digits()
    for name in args.models.split(","):
        run_model(name, rep, args.quick, data)
    print(f"wrote {rep.write()}")


if __name__ == "__main__":
    main()
