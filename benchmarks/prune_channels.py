"""Channel pruning against Torch-Pruning at equal MACs: CIFAR ResNet-56, MobileNetV2, the real MiniLM.

For each CNN (ResNet-56 with option-B shortcuts, MobileNetV2 for 32x32 inputs), a dense model is
trained on scikit-learn's 1,797 real handwritten digits (upsampled, 3 channels, 75/25 split; the
weights are cached under ``benchmarks/_work/``), then pruned from the same weights:

- **Torch-Pruning** 1.6 (``MetaPruner``, ``pruning_ratio=0.5``, the classifier ignored) with its
  L2 magnitude importance and with its Taylor importance (gradients of a few training batches);
- **torchcompress** ``tc.prune_channels(target={"macs": r})`` with ``r`` the MACs ratio
  Torch-Pruning reached (so both are compared at equal MACs, counted by ``tc.profile`` at 32x32),
  with the ``l2`` criterion (the same as Torch-Pruning's) and with ``taylor`` on the same batches,
  per group (``scope="local"``, like Torch-Pruning's ratio) and ranked globally.

Every pruned model is fine-tuned with the same budget and its test accuracy reported, with the
time each library took to prune, params and MACs against the dense model, and CPU latency at batch
32 (32x32) against the dense model, timed interleaved in one process (medians of the per-round
ratios and their range).

For the real all-MiniLM-L6-v2 (sentence embeddings), both libraries remove half the attention heads
and half the FFN units of every layer at equal MACs (Torch-Pruning with ``num_heads``,
``prune_num_heads=True``, its hidden size kept by ignoring the layers that write the residual
stream; torchcompress with a MACs target, ``l2`` and the label-free ``wanda`` on calibration
sentences), without fine-tuning: the cosine of the sentence embeddings to the dense model's on
held-out sentences. (A short distillation will join once ``tc.distill`` lands.)

Usage::

    PYTHONPATH=src python -m benchmarks.prune_channels           # full run (results/prune_channels.md)
    PYTHONPATH=src python -m benchmarks.prune_channels --quick   # minutes, written under benchmarks/_work/
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from benchmarks.harness import Report, time_variants

WORK = Path(__file__).resolve().parent / "_work"


def log(msg: str) -> None:
    print(f"[prune_channels {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def accuracy(model: nn.Module, loader: Any) -> float:
    return float(tc.evaluate(model, loader, progress=False)["accuracy"])


def dense_model(
    name: str, build: Callable[[], nn.Module], train: Any, args: argparse.Namespace
) -> nn.Module:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"prune_channels_{name}_{args.image_size}px_{args.base_epochs}ep.pt"
    torch.manual_seed(0)
    model = build()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        log(f"{name}: dense weights from {path.name}")
    else:
        t = time.perf_counter()
        tc.finetune(model, train, epochs=args.base_epochs, lr=0.05, progress=False)
        torch.save(model.state_dict(), path)
        log(f"{name}: trained {args.base_epochs} epochs in {time.perf_counter() - t:.0f}s")
    return model.eval()


def tp_prune(model: nn.Module, x: torch.Tensor, importance: str, batches: list[Any]) -> float:
    import torch_pruning as tp

    t = time.perf_counter()
    imp = (
        tp.importance.MagnitudeImportance(p=2)
        if importance == "l2"
        else tp.importance.TaylorImportance()
    )
    pruner = tp.pruner.MetaPruner(
        model, x, importance=imp, pruning_ratio=0.5, ignored_layers=[classifier(model)]
    )
    if importance == "taylor":
        model.zero_grad()
        for xb, yb in batches:
            F.cross_entropy(model(xb), yb).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def tc_prune(
    model: nn.Module,
    x: torch.Tensor,
    target: float,
    criterion: str,
    batches: list[Any],
    scope: str = "local",
) -> float:
    t = time.perf_counter()
    tc.prune_channels(
        model, x, target={"macs": target}, criterion=criterion, data=batches or None, scope=scope
    )
    return time.perf_counter() - t


def pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def cnn_section(
    report: Report, name: str, build: Callable[[], nn.Module], args: argparse.Namespace
) -> None:
    train, test = tc.data.digits(batch_size=64, image_size=args.image_size, channels=3, seed=0)
    dense = dense_model(name, build, train, args)
    dense_acc = accuracy(dense, test)
    batches = [b for _, b in zip(range(4), train)]
    x32 = torch.randn(1, 3, 32, 32)
    base = tc.profile(dense, x32)
    variants: dict[str, nn.Module] = {}
    rows = []
    tp_macs: dict[str, float] = {}
    plan = [
        ("Torch-Pruning l2 (ratio 0.5)", "tp", "l2"),
        ("Torch-Pruning taylor (ratio 0.5)", "tp", "taylor"),
        ("tc l2 (MACs target = TP's)", "tc", "l2"),
        ("tc taylor (MACs target = TP's)", "tc", "taylor"),
        ("tc taylor, global (MACs target = TP's)", "tc", "taylor-global"),
    ]
    for label, lib, crit in plan:
        torch.manual_seed(0)
        m = copy.deepcopy(dense)
        if lib == "tp":
            seconds = tp_prune(m, x32, crit, batches if crit == "taylor" else [])
        else:
            goal = tp_macs["l2"]
            criterion, _, scope = crit.partition("-")
            data = batches if criterion == "taylor" else []
            seconds = tc_prune(m, x32, goal, criterion, data, scope or "local")
        m.eval()
        prof = tc.profile(m, x32)
        if lib == "tp":
            tp_macs[crit] = prof.total_macs / base.total_macs
        acc0 = accuracy(m, test)
        tc.finetune(m, train, epochs=args.ft_epochs, lr=0.01, progress=False)
        m.eval()
        acc = accuracy(m, test)
        variants[label] = m
        rows.append(
            {
                "variant": label,
                "prune s": f"{seconds:.2f}",
                "params": f"{prof.total_params:,} ({prof.total_params / base.total_params:.3f}x)",
                "MACs": f"{prof.total_macs / 1e6:.1f}M ({prof.total_macs / base.total_macs:.4f}x)",
                "acc. before FT": pct(acc0),
                f"acc. after {args.ft_epochs} ep FT": pct(acc),
            }
        )
        log(f"{name}: {label}: {rows[-1]}")
    xb = torch.randn(32, 3, 32, 32)
    fns = {"dense": lambda: dense(xb)} | {k: (lambda m=m: m(xb)) for k, m in variants.items()}
    timing = time_variants(fns, baseline="dense", rounds=args.rounds, min_time=args.min_time)
    for r in rows:
        lo, hi = timing.ratio_range[r["variant"]]
        r["latency vs dense"] = f"{timing.ratio[r['variant']]:.2f}x ({lo:.2f}–{hi:.2f})"
    report.add(
        f"### {name} (digits at {args.image_size}x{args.image_size}; MACs, params and latency at "
        f"32x32)\n\nDense: {base.total_params:,} params, {base.total_macs / 1e6:.1f}M MACs, test "
        f"accuracy {pct(dense_acc)} after {args.base_epochs} epochs; dense latency "
        f"{1000 * timing.median_s['dense']:.1f} ms per batch of 32."
    )
    report.table(rows)


def minilm_section(report: Report, args: argparse.Namespace) -> None:
    import torch_pruning as tp

    from torchcompress.models.hf import load_minilm, sentence_embeddings, tokenize

    n_cal, n_eval = (32, 64) if args.quick else (128, 256)
    sentences = tc.data.english_sentences(n_cal + n_eval, seed=0)
    calib, evaluation = sentences[:n_cal], sentences[n_cal:]
    dense, tok = load_minilm()
    x = tokenize(tok, calib[:8])
    ref = sentence_embeddings(dense, tok, evaluation)
    batches = [tokenize(tok, calib[i : i + 16]) for i in range(0, n_cal, 16)]
    base = tc.profile(dense, x)
    rows, variants = [], {}

    m = copy.deepcopy(dense)
    attn = [a for a in m.modules() if type(a).__name__ == "BertSelfAttention"]
    heads = {lay: a.num_attention_heads for a in attn for lay in (a.query, a.key, a.value)}
    layers = m.encoder.layer
    ignored = [m.pooler.dense] + [la.attention.output.dense for la in layers]
    ignored += [la.output.dense for la in layers]
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        m,
        x,
        importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"),
        pruning_ratio=0.5,
        num_heads=heads,
        prune_head_dims=False,
        prune_num_heads=True,
        head_pruning_ratio=0.5,
        output_transform=lambda out: out.last_hidden_state.sum(),
        ignored_layers=ignored,
    )
    pruner.step()
    for a in attn:  # Torch-Pruning leaves the head count to the user
        a.num_attention_heads = pruner.num_heads[a.query]
        a.all_head_size = a.query.out_features
    tp_seconds = time.perf_counter() - t
    goal = tc.profile(m, x).total_macs / base.total_macs
    variants["Torch-Pruning l2 (heads 0.5, FFN 0.5)"] = (m, tp_seconds)
    for crit in ("l2", "wanda"):
        mm = copy.deepcopy(dense)
        t = time.perf_counter()
        tc.prune_channels(mm, x, target={"macs": goal}, criterion=crit, data=batches)
        variants[f"tc {crit} (MACs target = TP's)"] = (mm, time.perf_counter() - t)
    for label, (mm, seconds) in variants.items():
        prof = tc.profile(mm, x)
        emb = sentence_embeddings(mm, tok, evaluation)
        cos = torch.nn.functional.cosine_similarity(ref, emb)
        sa = mm.encoder.layer[0].attention.self
        rows.append(
            {
                "variant": label,
                "prune s": f"{seconds:.2f}",
                "heads / FFN (layer 0)": f"{sa.num_attention_heads} / {mm.encoder.layer[0].intermediate.dense.out_features}",
                "params": f"{prof.total_params / 1e6:.2f}M ({prof.total_params / base.total_params:.3f}x)",
                "MACs": f"{prof.total_macs / base.total_macs:.4f}x",
                "cosine mean": f"{float(cos.mean()):.4f}",
                "cosine min": f"{float(cos.min()):.4f}",
            }
        )
        log(f"MiniLM: {rows[-1]}")
    xb = tokenize(tok, evaluation[:32])
    fns = {"dense": lambda: dense(**xb)} | {
        k: (lambda m=m: m(**xb)) for k, (m, _) in variants.items()
    }
    timing = time_variants(fns, baseline="dense", rounds=args.rounds, min_time=args.min_time)
    for r in rows:
        lo, hi = timing.ratio_range[r["variant"]]
        r["latency vs dense"] = f"{timing.ratio[r['variant']]:.2f}x ({lo:.2f}–{hi:.2f})"
    report.add(
        f"### MiniLM (all-MiniLM-L6-v2), no fine-tuning\n\nDense: {base.total_params / 1e6:.2f}M "
        f"params; cosine of {n_eval} held-out sentence embeddings to the dense model's "
        f"({n_cal} calibration sentences for wanda); latency on a batch of 32 sentences "
        f"(dense {1000 * timing.median_s['dense']:.0f} ms)."
    )
    report.table(rows)


def main(argv: list[str] | None = None) -> Report:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="minutes; written under benchmarks/_work/")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--base-epochs", type=int, default=None)
    ap.add_argument("--ft-epochs", type=int, default=None)
    ap.add_argument("--models", default="resnet56,mobilenet_v2,minilm")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    args.image_size = args.image_size or (8 if quick else 16)
    args.base_epochs = args.base_epochs or (3 if quick else 10)
    args.ft_epochs = args.ft_epochs or (1 if quick else 2)
    args.rounds, args.min_time = (3, 0.1) if quick else (7, 0.3)
    cmd = "python -m benchmarks.prune_channels" + (" --quick" if quick else "")
    if args.threads:
        cmd += f" --threads {args.threads}"
    report = Report(
        "prune_channels", "Channel pruning (tc.prune_channels) against Torch-Pruning", cmd
    )
    report.add(
        "Both libraries remove whole channels (heads for MiniLM) and give smaller dense models. "
        "torchcompress meets a MACs target (here Torch-Pruning's own result, so the comparison is "
        "at equal MACs); Torch-Pruning takes a channel ratio. 'prune s' is the wall time of the "
        "pruning call (dependency graph, importance, for torchcompress the target search and a "
        "profile before and after; Taylor includes its gradient passes). Latency ratios are the "
        "median of interleaved rounds against the dense model, with their range (a shared, noisy "
        "machine: read them as rough)."
    )
    builds = {
        "resnet56": lambda: tc.models.resnet.CifarResNet(56, shortcut="B"),
        "mobilenet_v2": lambda: tc.models.create("mobilenet_v2"),
    }
    for name in args.models.split(","):
        if name in builds:
            cnn_section(report, name, builds[name], args)
        elif name == "minilm":
            minilm_section(report, args)
    out = report.write(WORK / "results" if quick else None)
    log(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
