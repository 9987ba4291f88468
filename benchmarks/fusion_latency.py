"""Latency of BatchNorm-fused models: tc.fuse against torch.fx's fuser, side by side.

For each model (eval mode, random BatchNorm statistics so that folding is really exercised) three
variants are timed in one process, interleaved round by round with
:func:`benchmarks.harness.time_variants`: the unfused model (the baseline), ``tc.fuse`` (the model
edited in place) and ``torch.fx.experimental.optimization.fuse`` (which returns a GraphModule, and
needs the model to trace). Inputs are 32x32 images at batch 32 and batch 1. The largest difference
of each fused model's outputs from the unfused outputs, relative to the largest output magnitude,
is reported with the timings.

Usage::

    python -m benchmarks.fusion_latency           # full: 9 rounds of >= 0.5 s per variant
    python -m benchmarks.fusion_latency --quick   # 2 short rounds, to check that it runs
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import torchcompress as tc
from benchmarks.harness import Report, Timing, time_variants

MODELS: list[tuple[str, Callable[[], nn.Module]]] = [
    ("resnet20 (A)", lambda: tc.models.resnet20(shortcut="A")),
    ("resnet56 (A)", lambda: tc.models.resnet56(shortcut="A")),
    ("resnet56 (B)", lambda: tc.models.resnet56(shortcut="B")),
    ("resnet18", tc.models.resnet18),
    ("mobilenet_v2", tc.models.mobilenet_v2),
]


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(1 + 0.1 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model


def count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fx_fuse(model: nn.Module) -> nn.Module:
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 short rounds, to check that it runs")
    args = ap.parse_args()
    rounds, min_time = (2, 0.05) if args.quick else (9, 0.5)
    batches = (1,) if args.quick else (32, 1)
    models = MODELS[:1] + MODELS[2:3] if args.quick else MODELS

    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for name, build in models:
        base = randomize_bn(build()).eval()
        ours = tc.fuse(copy.deepcopy(base))
        peers: dict[str, nn.Module] = {"tc.fuse": ours}
        peer_error = ""
        try:
            peers["fx fuse"] = fx_fuse(base).eval()
        except Exception as e:
            peer_error = f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
        for bs in batches:
            x = torch.randn(bs, 3, 32, 32)
            with torch.inference_mode():
                ref = base(x)
                scale = ref.abs().max().item() or 1.0
                diffs = {k: (m(x) - ref).abs().max().item() / scale for k, m in peers.items()}
            variants = {"unfused": lambda m=base, x=x: m(x)}
            variants.update({k: (lambda m=m, x=x: m(x)) for k, m in peers.items()})
            timing = time_variants(variants, baseline="unfused", rounds=rounds, min_time=min_time)
            records.append(
                {
                    "model": name,
                    "batch": bs,
                    "timing": timing,
                    "diffs": diffs,
                    "peer_error": peer_error,
                    "bn": (count_bn(base), count_bn(ours)),
                }
            )
            rows.extend(_rows(name, bs, timing, diffs, peer_error))

    command = "python -m benchmarks.fusion_latency" + (" --quick" if args.quick else "")
    report = Report("fusion_latency", "Fusion: BatchNorm folding and CPU latency", command)
    report.add(
        "Eval-mode latency of each model with its BatchNorms folded, against the unfused model, "
        f"measured side by side in one process ({rounds} interleaved rounds of at least "
        f"{min_time} s per variant; medians, and the median and range of per-round ratios). "
        "`fx fuse` is `torch.fx.experimental.optimization.fuse`, the peer a PyTorch user reaches "
        "for. Inputs are 32x32 images; BatchNorm statistics are random so that folding changes "
        "the weights."
    )
    report.table(
        rows,
        columns=[
            "model",
            "batch",
            "variant",
            "median ms",
            "ratio to unfused",
            "ratio range",
            "max rel diff",
            "note",
        ],
    )
    report.add(commentary(records))
    path = report.write()
    print(f"wrote {path}")


def _rows(
    name: str, bs: int, t: Timing, diffs: dict[str, float], peer_error: str
) -> list[dict[str, Any]]:
    out = []
    for variant in ["unfused", "tc.fuse", "fx fuse"]:
        if variant not in t.median_s:
            out.append(
                {"model": name, "batch": bs, "variant": variant, "note": f"failed: {peer_error}"}
            )
            continue
        r = t.row(variant)
        out.append(
            {
                "model": name,
                "batch": bs,
                "variant": variant,
                "median ms": r["median ms"],
                "ratio to unfused": r["ratio to unfused"],
                "ratio range": r["ratio range"],
                "max rel diff": "" if variant == "unfused" else f"{diffs[variant]:.1e}",
            }
        )
    return out


def _verdict(lo: float, hi: float, med: float) -> str:
    if hi < 1.0:
        return f"faster in every round ({med:.2f}x)"
    if lo > 1.0:
        return f"slower in every round ({med:.2f}x)"
    return f"within run-to-run noise ({med:.2f}x, rounds {lo:.2f}–{hi:.2f}x)"


def commentary(records: list[dict[str, Any]]) -> str:
    lines = ["**What the numbers say**", ""]
    worst = max(max(r["diffs"].values()) for r in records)
    removed = all(r["bn"][1] == 0 for r in records)
    lines.append(
        f"- Outputs: the largest difference of a fused model from the unfused one is "
        f"{worst:.1e} of the largest output (float32 rounding); tc.fuse left "
        + (
            "no BatchNorm in any model."
            if removed
            else "some BatchNorms in place (see the pairs it refused)."
        )
    )
    for variant in ("tc.fuse", "fx fuse"):
        verdicts = []
        for r in records:
            t: Timing = r["timing"]
            if variant not in t.ratio:
                continue
            lo, hi = t.ratio_range[variant]
            verdicts.append(
                f"{r['model']} batch {r['batch']}: {_verdict(lo, hi, t.ratio[variant])}"
            )
        if verdicts:
            lines.append(f"- {variant}: " + "; ".join(verdicts) + ".")
    failed = sorted({r["model"] for r in records if r["peer_error"]})
    if failed:
        ours_all = all(r["bn"][1] == 0 for r in records if r["model"] in failed)
        lines.append(
            f"- fx fuse could not fuse {', '.join(failed)} (the model does not trace with torch.fx: "
            f"{next(r['peer_error'] for r in records if r['peer_error'])}); tc.fuse analysed the "
            "traceable parts and "
            + (
                "folded every BatchNorm there."
                if ours_all
                else "folded the pairs it could prove safe."
            )
        )
    ours = [r["timing"].ratio["tc.fuse"] for r in records]
    lines.append(
        f"- Across all runs the median tc.fuse/unfused ratio ranges {min(ours):.2f}–{max(ours):.2f}x. "
        "Folding removes one elementwise pass per BatchNorm; whether that shows in wall-clock time "
        "depends on how much of the forward those passes take on this CPU."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
