"""int8 MiniLM: tc.convert vs torch's built-in dynamic int8, and tc.export_onnx vs onnxruntime's quantizer.

The real pretrained all-MiniLM-L6-v2 on real English sentences (calibration and evaluation
sentences are disjoint). Fidelity is the cosine of the sentence embeddings to fp32 (mean and min
over the evaluation sentences); speed is the latency of one forward on a batch, timed side by side
with fp32 (interleaved rounds, median of per-round ratios).

Usage::

    python -m benchmarks.quant_minilm            # full
    python -m benchmarks.quant_minilm --quick    # about a minute
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import warnings
from typing import Any

import numpy as np
import torch

import torchcompress as tc
from benchmarks.harness import Report, time_variants
from torchcompress.models.hf import load_minilm, sentence_embeddings, tokenize

warnings.filterwarnings("ignore")


def _torch_dynamic(model: torch.nn.Module, per_channel: bool) -> torch.nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec: Any = {torch.nn.Linear: per_channel_dynamic_qconfig} if per_channel else {torch.nn.Linear}
    return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def _cos(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    c = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return float(c.mean()), float(c.min())


def _pool(hidden: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    h = torch.from_numpy(hidden)
    m = torch.from_numpy(mask).unsqueeze(-1).to(h.dtype)
    e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(e, dim=-1)


def _ort_session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _ort_embed(sess: Any, tok: Any, sentences: list[str], bs: int = 32) -> torch.Tensor:
    names = {i.name for i in sess.get_inputs()}
    out = []
    for i in range(0, len(sentences), bs):
        enc = tokenize(tok, sentences[i : i + bs])
        feed = {k: v.numpy() for k, v in enc.items() if k in names}
        hidden = sess.run(None, feed)[0]
        out.append(_pool(hidden, enc["attention_mask"].numpy()))
    return torch.cat(out)


def _export_fp32(model: torch.nn.Module, enc: dict[str, torch.Tensor], path: str) -> None:
    """The float model through the same keyword-input wrapper tc.export_onnx uses."""
    from torchcompress.quant.onnx_export import _KeywordInputs

    names = list(enc)
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        torch.onnx.export(
            _KeywordInputs(model, names),
            tuple(enc[n] for n in names),
            path,
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_axes=axes,
        )


def _gemm_bound(
    model: torch.nn.Module, tokens: int, fp32_forward_s: float, rounds: int, min_time: float
) -> tuple[list[dict[str, str]], float, float, float]:
    """Time fp32 ``F.linear`` against fbgemm's ``linear_dynamic`` on every Linear shape of the model.

    Returns the per-shape rows, the int8/fp32 ratio of all the model's GEMMs together, the share
    of the fp32 forward spent in them, and the latency bound that follows: (1 - share) + share *
    ratio, what an int8 model whose only change is its GEMMs could reach.
    """
    shapes: dict[tuple[int, int], int] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            key = (m.in_features, m.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    prev = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    rows, fp_total, q_total = [], 0.0, 0.0
    try:
        for (k, n), count in sorted(shapes.items()):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(tokens, k, generator=gen)
            w = torch.randn(n, k, generator=gen)
            b = torch.randn(n, generator=gen)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                qw = torch.quantize_per_channel(
                    w,
                    (w.abs().amax(1) / 63).double(),
                    torch.zeros(n, dtype=torch.long),
                    0,
                    torch.qint8,
                )
            packed = torch.ops.quantized.linear_prepack(qw, b)
            t = time_variants(
                {
                    "fp32": lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b),
                    "int8": lambda x=x, p=packed: torch.ops.quantized.linear_dynamic(x, p, False),
                },
                baseline="fp32",
                rounds=rounds,
                min_time=min_time / 3,
            )
            fp_total += count * t.median_s["fp32"]
            q_total += count * t.median_s["int8"]
            rows.append(
                {
                    "GEMM (tokens x in -> out)": f"{tokens} x {k} -> {n}",
                    "layers": str(count),
                    "fp32 ms": f"{1000 * t.median_s['fp32']:.2f}",
                    "int8 ms": f"{1000 * t.median_s['int8']:.2f}",
                    "int8 / fp32": f"{t.ratio['int8']:.2f}x",
                }
            )
    finally:
        torch.backends.quantized.engine = prev
    ratio = q_total / fp_total
    share = min(1.0, fp_total / fp32_forward_s)
    return rows, ratio, share, (1 - share) + share * ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer sentences and timing rounds")
    args = ap.parse_args()
    quick = args.quick
    n_calib, n_eval = (16, 48) if quick else (128, 384)
    rounds, min_time = (3, 0.3) if quick else (9, 1.5)
    threads = torch.get_num_threads()

    model, tok = load_minilm()
    sents = tc.data.english_sentences(n_calib + n_eval, seed=0)
    calib_s, eval_s = sents[:n_calib], sents[n_calib:]
    calib = [tokenize(tok, calib_s[i : i + 16]) for i in range(0, n_calib, 16)]
    ref = sentence_embeddings(model, tok, eval_s)
    batch = tokenize(tok, eval_s[:32])

    variants: dict[str, torch.nn.Module] = {"fp32": model}
    notes: dict[str, str] = {"fp32": "the pretrained model"}
    variants["tc int8 (default: QuantConfig(mode='dynamic'))"] = tc.convert(
        tc.quantize(copy.deepcopy(model), tc.QuantConfig(mode="dynamic"))
    )
    notes["tc int8 (default: QuantConfig(mode='dynamic'))"] = (
        "per-channel weights, per-tensor dynamic uint8 activations"
    )
    tok_cfg = tc.QuantConfig(
        mode="dynamic", activation=tc.IntSpec(8, symmetric=False, signed=False, granularity="token")
    )
    variants["tc int8 per-token activations"] = tc.convert(
        tc.quantize(copy.deepcopy(model), tok_cfg)
    )
    notes["tc int8 per-token activations"] = "per-channel weights, per-token dynamic activations"
    variants["tc int8 static (percentile)"] = tc.convert(
        tc.quantize(
            copy.deepcopy(model),
            tc.QuantConfig(observer="percentile", weight_observer="minmax"),
            calib,
        )
    )
    notes["tc int8 static (percentile)"] = (
        "activation ranges calibrated on the calibration sentences"
    )
    variants["torch quantize_dynamic (per-tensor)"] = _torch_dynamic(model, False)
    notes["torch quantize_dynamic (per-tensor)"] = "torch.ao default qconfig"
    variants["torch quantize_dynamic (per-channel)"] = _torch_dynamic(model, True)
    notes["torch quantize_dynamic (per-channel)"] = "per_channel_dynamic_qconfig"

    fidelity = {}
    for name, m in variants.items():
        emb = sentence_embeddings(m, tok, eval_s)
        fidelity[name] = _cos(emb, ref)

    def fwd(m: torch.nn.Module) -> Any:
        return lambda: m(**batch)

    timing = time_variants(
        {k: fwd(m) for k, m in variants.items()}, baseline="fp32", rounds=rounds, min_time=min_time
    )

    gemm_rows, gemm_ratio, gemm_share, gemm_bound = _gemm_bound(
        model,
        int(batch["input_ids"].numel()),
        timing.median_s["fp32"],
        rounds,
        min_time,
    )

    # --- ONNX ------------------------------------------------------------------------------
    onnx_rows: list[dict[str, str]] = []
    onnx_timing = None
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        d = tempfile.mkdtemp()
        fp_path = os.path.join(d, "minilm_fp32.onnx")
        _export_fp32(model, batch, fp_path)
        ort_q = os.path.join(d, "minilm_ort_int8.onnx")
        quantize_dynamic(fp_path, ort_q, per_channel=True, weight_type=QuantType.QInt8)
        tc_path = os.path.join(d, "minilm_tc.onnx")
        tc_fake = tc.quantize(copy.deepcopy(model), tc.QuantConfig(mode="dynamic"))
        names = list(batch)
        axes = {n: {0: "batch", 1: "seq"} for n in names}
        axes["last_hidden_state"] = {0: "batch", 1: "seq"}
        tc.export_onnx(
            tc_fake,
            dict(batch),
            tc_path,
            input_names=names,
            output_names=["last_hidden_state", "pooler_output"],
            dynamic_axes=axes,
        )
        sessions = {
            "onnxruntime fp32": _ort_session(fp_path, threads),
            "onnxruntime quantize_dynamic (per-channel)": _ort_session(ort_q, threads),
            "tc.export_onnx (default int8 recipe)": _ort_session(tc_path, threads),
        }
        feed = {k: v.numpy() for k, v in batch.items()}
        ofid = {k: _cos(_ort_embed(s, tok, eval_s), ref) for k, s in sessions.items()}
        sizes = {
            "onnxruntime fp32": os.path.getsize(fp_path),
            "onnxruntime quantize_dynamic (per-channel)": os.path.getsize(ort_q),
            "tc.export_onnx (default int8 recipe)": os.path.getsize(tc_path),
        }
        fns = {"torch fp32": fwd(model)}
        for k, s in sessions.items():
            fns[k] = lambda s=s: s.run(None, {i.name: feed[i.name] for i in s.get_inputs()})
        onnx_timing = time_variants(fns, baseline="torch fp32", rounds=rounds, min_time=min_time)
        for k in sessions:
            onnx_rows.append(
                {
                    "runtime / quantizer": k,
                    "cosine mean": f"{ofid[k][0]:.4f}",
                    "cosine min": f"{ofid[k][1]:.4f}",
                    "latency vs torch fp32": f"{onnx_timing.ratio[k]:.2f}x",
                    "vs onnxruntime fp32": f"{onnx_timing.median_s[k] / onnx_timing.median_s['onnxruntime fp32']:.2f}x",
                    "file MB": f"{sizes[k] / 1e6:.1f}",
                }
            )
    except ImportError as e:  # onnxruntime missing
        onnx_rows.append({"runtime / quantizer": f"skipped: {e}"})

    # --- report ---------------------------------------------------------------------------
    rep = Report(
        "quant_minilm",
        "Quantization: int8 MiniLM (tc.convert vs torch, tc.export_onnx vs onnxruntime)",
        "python -m benchmarks.quant_minilm" + (" --quick" if quick else ""),
    )
    rep.add(
        f"all-MiniLM-L6-v2 (real pretrained weights), {n_eval} evaluation sentences from "
        f"`tc.data.english_sentences` ({n_calib} other sentences calibrate the static variant); "
        f"latency of one forward on a batch of {batch['input_ids'].shape[0]} sentences "
        f"({batch['input_ids'].shape[1]} tokens), {threads} threads, {rounds} interleaved rounds. "
        "Cosine: sentence embeddings (mean pooling) against fp32."
    )
    rows = []
    for name in variants:
        lo, hi = timing.ratio_range[name]
        rows.append(
            {
                "variant": name,
                "cosine mean": f"{fidelity[name][0]:.4f}",
                "cosine min": f"{fidelity[name][1]:.4f}",
                "latency vs fp32": f"{timing.ratio[name]:.2f}x",
                "ratio range": f"{lo:.2f}–{hi:.2f}x",
                "median ms": f"{1000 * timing.median_s[name]:.1f}",
                "what": notes[name],
            }
        )
    rep.table(rows, caption="**PyTorch, CPU**")
    default = "tc int8 (default: QuantConfig(mode='dynamic'))"
    torch_best = max(
        ("torch quantize_dynamic (per-tensor)", "torch quantize_dynamic (per-channel)"),
        key=lambda k: fidelity[k][0],
    )
    cos_ok = fidelity[default][0] >= 0.99
    lat_ok = timing.ratio[default] <= 0.65
    vs_torch = timing.median_s[default] / timing.median_s["torch quantize_dynamic (per-tensor)"]
    rep.add(
        f"The default recipe reaches cosine {fidelity[default][0]:.4f} (min {fidelity[default][1]:.4f}) "
        f"at {timing.ratio[default]:.2f}x of fp32 latency ({'meets' if cos_ok else 'misses'} the 0.99 "
        f"cosine target, {'meets' if lat_ok else 'misses'} the 0.65x latency target); torch's built-in "
        f"per-tensor dynamic int8 reaches {fidelity['torch quantize_dynamic (per-tensor)'][0]:.4f} at "
        f"{timing.ratio['torch quantize_dynamic (per-tensor)']:.2f}x, its best configuration here "
        f"({torch_best}) {fidelity[torch_best][0]:.4f}. Ours takes {vs_torch:.2f}x the time of torch's "
        "built-in. Both call fbgemm's int8 GEMM; the cosine gap is the activation range: torch "
        "quantizes activations to 7 bits (reduce_range) and weights per tensor, we keep 8-bit "
        "activations and restrict the per-channel weights to 7 bits instead, which is exact on this "
        "CPU (AVX2 without VNNI saturates full 8-bit pairs) and costs far less accuracy."
    )
    rep.table(
        gemm_rows,
        caption="**Where the time goes**: every Linear shape of the model, fp32 `F.linear` against "
        "fbgemm's dynamic int8 GEMM (per-channel weights) on random data of the same size",
    )
    rep.add(
        f"Together the model's GEMMs take {gemm_share:.0%} of the fp32 forward, and the int8 GEMMs "
        f"take {gemm_ratio:.2f}x of their fp32 time, so an int8 model whose only change is its GEMMs "
        f"is bounded at about {gemm_bound:.2f}x of fp32 latency on this machine; the default recipe "
        f"reaches {timing.ratio[default]:.2f}x (query/key/value share one GEMM; the rest is the "
        "attention, GELU, LayerNorm and embedding work that stays in float)."
    )
    if onnx_timing is not None:
        rep.table(onnx_rows, caption="**onnxruntime, CPU** (same model, same sentences)")
        ours = "tc.export_onnx (default int8 recipe)"
        peer = "onnxruntime quantize_dynamic (per-channel)"
        rep.add(
            f"Exported with `tc.export_onnx`, the default int8 model runs in onnxruntime at "
            f"{onnx_timing.median_s[ours] / onnx_timing.median_s[peer]:.2f}x the latency of "
            f"onnxruntime's own dynamic quantizer on the same model, with cosine "
            f"{ofid[ours][0]:.4f} vs {ofid[peer][0]:.4f} (the export writes the same "
            "DynamicQuantizeLinear/MatMulInteger form with our per-channel int8 weights; "
            "onnxruntime's u8*s8 kernels saturate on AVX2 like fbgemm's, so the 7-bit weights of "
            "the default recipe keep the exported model exact there too)."
        )
    path = rep.write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
