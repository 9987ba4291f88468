"""MAC counts of tc.profile against the peer counters, with an analytic reference.

Counters: ``tc.profile``, fvcore ``FlopCountAnalysis``, ptflops (``pytorch`` and ``aten`` backends),
thop, and ``torch.utils.flop_counter.FlopCounterMode`` (which reports FLOPs; divided by 2 here).
Cases: ResNet-56, MobileNetV2, the real pretrained MiniLM on a batch of real English sentences, a
ViT-style attention block written with ``F.scaled_dot_product_attention``, and an
``nn.MultiheadAttention`` block. Every model runs in eval mode under ``no_grad`` (inference, the
setting in which torch takes its fused attention fast path). Each peer gets a fresh copy of the
model (thop adds buffers to the model it counts), runs inside ``try/except``, and failures are
recorded. The analytic column is computed from the layer shapes by closed-form formulas written in
this script (convolution and linear layers, plus QKᵀ and AV for attention), not by any counter.

Usage::

    python -m benchmarks.profile_counters           # full: batch 1 images, 16 sentences
    python -m benchmarks.profile_counters --quick   # small inputs, to check that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from benchmarks.harness import Report
from torchcompress.batches import Batch

# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    model: nn.Module
    batch: Batch
    analytic: int
    analytic_note: str


def conv_linear_macs(model: nn.Module, batch: Batch) -> int:
    """Analytic conv + linear MACs from each layer's shapes (forward hooks read the shapes only)."""
    total = 0

    def hook(m: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            n, c_out, h, w = out.shape
            total += n * c_out * h * w * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total += inputs[0].numel() // m.in_features * m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            batch(model)
    finally:
        for h in handles:
            h.remove()
    return total


class SDPABlock(nn.Module):
    """A ViT-style attention block: fused qkv projection, SDPA, output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class MHABlock(nn.Module):
    """Self-attention with nn.MultiheadAttention (batch_first, no weights: the fast-path case)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def attention_block_macs(n: int, tokens: int, dim: int) -> int:
    projections = n * tokens * dim * 3 * dim + n * tokens * dim * dim
    attention = 2 * n * tokens * tokens * dim  # QKᵀ and AV over all heads
    return projections + attention


def build_cases(quick: bool) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    skipped: list[str] = []
    image = Batch(args=(torch.randn(1, 3, 32, 32),))
    for name in ("resnet56", "mobilenet_v2"):
        model = tc.models.create(name).eval()
        cases.append(
            Case(
                name,
                model,
                image,
                conv_linear_macs(model, image),
                "conv + linear MACs from the layer shapes",
            )
        )
    try:
        from torchcompress.models.hf import load_minilm

        model, tok = load_minilm()
        sentences = tc.data.english_sentences(4 if quick else 16, seed=0)
        enc = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
        kwargs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        n, length = kwargs["input_ids"].shape
        cfg = model.config
        d, ff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
        linear = layers * n * length * (4 * d * d + 2 * d * ff) + n * d * d  # + pooler
        attention = layers * 2 * n * length * length * d
        cases.append(
            Case(
                f"MiniLM ({n}x{length} tokens)",
                model.eval(),
                Batch(kwargs=kwargs),
                linear + attention,
                f"linear {linear:,} + attention QKᵀ/AV {attention:,}",
            )
        )
    except Exception as e:  # transformers or the model package missing
        skipped.append(f"MiniLM: {type(e).__name__}: {e}")
    tokens, dim, heads = (64, 128, 4) if quick else (196, 256, 4)
    x = Batch(args=(torch.randn(1, tokens, dim),))
    for label, block in (("SDPA block", SDPABlock), ("nn.MultiheadAttention", MHABlock)):
        cases.append(
            Case(
                f"{label} (N={tokens}, d={dim})",
                block(dim, heads).eval(),
                x,
                attention_block_macs(1, tokens, dim),
                "projections + QKᵀ + AV",
            )
        )
    return cases, skipped


# --------------------------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------------------------


def _quiet() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def count_tc(model: nn.Module, batch: Batch) -> int:
    return tc.profile(model, batch).total_macs


def count_fvcore(model: nn.Module, batch: Batch) -> int:
    from fvcore.nn import FlopCountAnalysis

    inputs: Any = batch.args if batch.args else tuple(batch.kwargs.values())
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(analysis.total())


def _ptflops(backend: str) -> Callable[[nn.Module, Batch], int]:
    def count(model: nn.Module, batch: Batch) -> int:
        from ptflops import get_model_complexity_info

        if batch.kwargs:
            res: tuple[int, ...] = (1,)

            def constructor(_: tuple[int, ...]) -> dict[str, Any]:
                return dict(batch.kwargs)
        else:
            x = batch.args[0]
            res = tuple(x.shape[1:])

            def constructor(_: tuple[int, ...]) -> Any:
                return x

        macs, _ = get_model_complexity_info(
            model,
            res,
            input_constructor=constructor,
            as_strings=False,
            print_per_layer_stat=False,
            backend=backend,
        )
        if macs is None:
            raise RuntimeError("ptflops returned None (it caught an exception internally)")
        # ptflops adds a batch dim of 1 to input_res when there is no constructor; ours is exact
        return int(macs)

    return count


def count_thop(model: nn.Module, batch: Batch) -> int:
    import thop

    if batch.kwargs:
        # thop passes inputs positionally; BertModel takes (input_ids, attention_mask, token_type_ids)
        inputs = tuple(batch.kwargs[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    else:
        inputs = batch.args
    macs, _ = thop.profile(model, inputs=inputs, verbose=False)
    return int(macs)


def count_flop_counter(model: nn.Module, batch: Batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        batch(model)
    return int(counter.get_total_flops()) // 2  # FLOPs = 2 x MACs


COUNTERS: dict[str, Callable[[nn.Module, Batch], int]] = {
    "tc.profile": count_tc,
    "fvcore": count_fvcore,
    "ptflops (pytorch)": _ptflops("pytorch"),
    "ptflops (aten)": _ptflops("aten"),
    "thop": count_thop,
    "FlopCounterMode ÷2": count_flop_counter,
}


@dataclass
class Result:
    macs: int | None
    error: str = ""
    added_keys: int = 0
    seconds: float = 0.0


def run_counter(fn: Callable[[nn.Module, Batch], int], case: Case) -> Result:
    model = copy.deepcopy(case.model).eval()
    keys = set(model.state_dict())
    t0 = time.perf_counter()
    try:
        with _quiet(), torch.no_grad():
            macs = fn(model, case.batch)
    except Exception as e:
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return Result(None, msg[:120], seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    added = len(set(model.state_dict()) - keys)
    return Result(macs, added_keys=added, seconds=seconds)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_m(n: int | None) -> str:
    return "failed" if n is None else f"{n / 1e6:,.2f}M"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, to check that it runs")
    args = ap.parse_args()

    torch.manual_seed(0)
    cases, skipped = build_cases(args.quick)
    results: dict[str, dict[str, Result]] = {c: {} for c in COUNTERS}
    for case in cases:
        for cname, fn in COUNTERS.items():
            results[cname][case.name] = run_counter(fn, case)

    command = "python -m benchmarks.profile_counters" + (" --quick" if args.quick else "")
    report = Report("profile_counters", "Profiler: MAC counts against the peer counters", command)
    report.add(
        "Multiply-accumulates of one inference forward (eval, `no_grad`) as reported by each "
        "counter, against an analytic count computed from the layer shapes by closed-form formulas. "
        "`FlopCounterMode` reports FLOPs and is halved here; fvcore, ptflops and thop report MACs "
        "(under the name 'flops'). Each peer ran on a fresh copy of the model; a failure is "
        "recorded, not hidden."
    )
    report.table(
        [
            {"case": c.name, "analytic MACs": f"{c.analytic:,}", "analytic counts": c.analytic_note}
            for c in cases
        ],
        caption="**Cases**",
    )
    rows = []
    for cname in COUNTERS:
        row = {"counter": cname}
        for case in cases:
            r = results[cname][case.name]
            if r.macs is None:
                row[case.name] = "failed"
            else:
                row[case.name] = f"{fmt_m(r.macs)} ({r.macs / case.analytic:.3f}x)"
        rows.append(row)
    report.table(rows, caption="**MACs (ratio to analytic)**")

    fail_rows = [
        {"counter": cname, "case": case, "error": r.error}
        for cname in COUNTERS
        for case, r in results[cname].items()
        if r.macs is None
    ]
    if fail_rows:
        report.table(fail_rows, caption="**Failures**")
    state_rows = [
        {
            "counter": cname,
            "state_dict keys added (all cases)": sum(r.added_keys for r in res.values()),
            "counting time, s (all cases)": f"{sum(r.seconds for r in res.values()):.2f}",
        }
        for cname, res in results.items()
    ]
    report.table(state_rows, caption="**State left in the model, and time spent counting**")
    report.add(commentary(cases, results, skipped))
    path = report.write()
    print(f"wrote {path}")


def commentary(cases: list[Case], results: dict[str, dict[str, Result]], skipped: list[str]) -> str:
    lines = ["**What the numbers say**", ""]
    attention = [
        c for c in cases if "MiniLM" in c.name or "block" in c.name or "Multihead" in c.name
    ]
    for cname, res in results.items():
        exact, off, failed = [], [], []
        for case in cases:
            r = res[case.name]
            if r.macs is None:
                failed.append(case.name)
                continue
            ratio = r.macs / case.analytic
            if abs(ratio - 1) <= 0.001:
                exact.append(case.name)
            else:
                off.append(f"{case.name} {ratio:.3f}x")
        parts = [
            f"- **{cname}**: within 0.1% of the analytic count on {len(exact)} of {len(cases)} cases"
        ]
        if off:
            parts.append("; off on " + ", ".join(off))
        if failed:
            parts.append("; failed on " + ", ".join(failed))
        added = sum(r.added_keys for r in res.values())
        if added:
            parts.append(f"; it added {added} tensors to the counted models' state_dict")
        lines.append("".join(parts) + ".")
    # attention shortfalls, computed
    short = []
    for cname, res in results.items():
        for case in attention:
            r = res[case.name]
            if r.macs is not None and r.macs < 0.99 * case.analytic:
                missing = 1 - r.macs / case.analytic
                short.append(f"{cname} on {case.name} ({missing:.0%} of the MACs missing)")
    if short:
        lines += ["", "Counters that miss attention work: " + "; ".join(short) + "."]
    else:
        lines += ["", "No counter missed attention work in this run."]
    cnn = [c for c in cases if c not in attention]
    over = sorted(
        {
            cname
            for cname, res in results.items()
            for c in cnn
            if res[c.name].macs is not None and res[c.name].macs > 1.0005 * c.analytic
        }
    )
    if over:
        lines += [
            "",
            f"On the CNNs, {', '.join(over)} report more than the conv + linear MACs: they also "
            "count BatchNorm, pooling, activations or bias additions as operations. tc.profile "
            "counts matmul-like work only (documented in `torchcompress.profiling`).",
        ]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
