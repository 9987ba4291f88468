"""Low-rank factorization of a CIFAR ResNet-18 trained on digits, against tensorly's Tucker-2.

A ResNet-18 (32x32 inputs) is trained on scikit-learn's real 8x8 digits upsampled to 32x32. Then, for
each FLOPs target (MACs of the convolutions), fresh copies are compressed by

- ``svd, auto``: ``tc.factorize`` with ``rank="auto", budget_kind="flops"`` (one global allocation);
- ``svd, layer-wise``: ``tc.factorize`` with ``rank="flops_ratio"`` (every conv at the target);
- ``whitened, auto``: as the first, with SVD-LLM whitening on calibration images (full mode only);
- ``tucker2``: the peer, tensorly's ``partial_tucker`` on modes 0 and 1 of every kxk kernel
  (1x1 -> kxk core -> 1x1, Kim et al. 2016), each layer at the params of the ``svd, layer-wise``
  variant (1x1 convs, where Tucker-2 is a two-factor SVD, take that variant's factorization);

and each is measured for accuracy before and after a short fine-tune, params and MACs (hook
counts of every Conv/Linear actually executed), and CPU latency interleaved against the dense model.

Usage::

    PYTHONPATH=src python -m benchmarks.lowrank_cnn         # full
    PYTHONPATH=src python -m benchmarks.lowrank_cnn --quick   # a few minutes, written under benchmarks/_work/
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import torchcompress as tc
from benchmarks.harness import Report, time_variants

# --- data, training, evaluation (tc.data.digits / tc.finetune / tc.evaluate when available) -----


def digits_loaders(batch_size: int, limit: int | None) -> tuple[Any, Any, str]:
    data_mod = tc.data
    if hasattr(data_mod, "digits"):
        train, test = data_mod.digits(
            batch_size=batch_size, image_size=32, channels=3, test_size=0.25, seed=0
        )
        if limit:
            ds = torch.utils.data.Subset(train.dataset, range(min(limit, len(train.dataset))))
            train = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True)
        return train, test, "tc.data.digits"
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    idx_tr, idx_te = train_test_split(
        range(len(y)), test_size=0.25, random_state=0, stratify=d.target
    )
    if limit:
        idx_tr = idx_tr[:limit]
    g = torch.Generator().manual_seed(0)
    mk = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(
        mk(x[idx_tr], y[idx_tr]), batch_size=batch_size, shuffle=True, generator=g
    )
    test = torch.utils.data.DataLoader(mk(x[idx_te], y[idx_te]), batch_size=256)
    return train, test, "sklearn load_digits, upsampled (local loader)"


def train(model: nn.Module, data: Any, epochs: int, lr: float, steps: int | None = None) -> None:
    if hasattr(tc, "finetune") and _has("torchcompress.train"):
        tc.finetune(model, data, epochs=epochs, steps=steps, lr=lr, progress=False)
        return
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    total = steps or epochs * len(data)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    model.train()
    done = 0
    while done < total:
        for x, y in data:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done >= total:
                break
    model.eval()


def accuracy(model: nn.Module, data: Any) -> float:
    if _has("torchcompress.train"):
        return float(tc.evaluate(model, data, progress=False)["accuracy"])
    model.eval()
    correct = n = 0
    with torch.no_grad():
        for x, y in data:
            correct += int((model(x).argmax(1) == y).sum())
            n += len(y)
    return correct / n


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate BatchNorm running statistics on a few batches (no gradient, no weight change)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.eval()


# --- counting ---------------------------------------------------------------------------------


def count(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(params, MACs) of every Conv/Linear executed on ``x`` (hooks; independent of tc.profile)."""
    macs = 0

    def hook(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            macs += out.numel() * m.in_features

    hs = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return sum(p.numel() for p in model.parameters()), macs


# --- the Tucker-2 peer ---------------------------------------------------------------------------


def tucker2_conv(conv: nn.Conv2d, params: int, n_iter_max: int) -> nn.Module:
    """Tucker-2 of a kxk conv (tensorly ``partial_tucker``, modes 0 and 1) with at most ``params``."""
    import warnings

    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    tl.set_backend("pytorch")
    c_out, c_in = conv.out_channels, conv.in_channels
    k = math.prod(conv.kernel_size)
    bias = c_out if conv.bias is not None else 0

    def cost(a: float) -> tuple[int, int, int]:
        r_out, r_in = max(1, round(a * c_out)), max(1, round(a * c_in))
        return c_in * r_in + r_in * r_out * k + r_out * c_out + bias, r_out, r_in

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid)[0] <= params else (lo, mid)
    _, r_out, r_in = cost(lo)
    W = conv.weight.detach()
    with warnings.catch_warnings():  # tensorly warns when a rank exceeds a small unfolding
        warnings.simplefilter("ignore", UserWarning)
        (core, (u_out, u_in)), _ = partial_tucker(
            W, rank=[r_out, r_in], modes=[0, 1], n_iter_max=n_iter_max, init="svd"
        )
    first = nn.Conv2d(c_in, r_in, 1, bias=False)
    mid = nn.Conv2d(
        r_in,
        r_out,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=False,
    )
    last = nn.Conv2d(r_out, c_out, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(u_in.T.reshape(r_in, c_in, 1, 1))
        mid.weight.copy_(core)
        last.weight.copy_(u_out.reshape(c_out, r_out, 1, 1))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, mid, last)


def tucker2_model(
    dense: nn.Module, layerwise: nn.Module, n_iter_max: int
) -> tuple[nn.Module, float]:
    """Tucker-2 of every kxk conv of ``dense`` at the params of the same layer in ``layerwise``."""
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Conv2d):
            continue
        ref = layerwise.get_submodule(name)
        if not isinstance(ref, tc.lowrank.LowRankConv2d):
            continue  # left dense there too
        if math.prod(mod.kernel_size) == 1 or mod.groups != 1:
            new: nn.Module = copy.deepcopy(ref)  # Tucker-2 of a 1x1 conv is a two-factor SVD
        else:
            new = tucker2_conv(mod, sum(p.numel() for p in ref.parameters()), n_iter_max)
        tc.select.set_module(model, name, new)
    return model.eval(), time.perf_counter() - t0


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="small run, written under benchmarks/_work/"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--retrain", action="store_true", help="retrain the dense model even if cached")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quick = args.quick
    targets = (0.5,) if quick else (0.75, 0.5, 0.35)
    epochs = 1 if quick else 4
    ft_steps = 2 if quick else 16
    limit = 256 if quick else None
    tucker_iters = 1 if quick else 10

    train_data, test_data, data_src = digits_loaders(64, limit)
    dense = tc.models.create("resnet18", num_classes=10)
    cache = (
        Path(__file__).resolve().parent
        / "_work"
        / f"resnet18_digits_e{epochs}_n{limit or 'all'}.safetensors"
    )
    t0 = time.perf_counter()
    if cache.exists() and not args.retrain:
        tc.load(cache, dense)
        trained = f"loaded from {cache.name} (trained {epochs} epochs by an earlier run)"
    else:
        train(dense, train_data, epochs=epochs, lr=0.05)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tc.save(dense, cache)
        trained = f"trained {epochs} epoch(s) in {time.perf_counter() - t0:.0f} s"
    dense.eval()
    acc_dense = accuracy(dense, test_data)
    x_count = next(iter(test_data))[0][:1]
    p_dense, macs_dense = count(dense, x_count)
    calib = [b[0][:32] for _, b in zip(range(1 if quick else 4), train_data)]
    # quick mode: only the first two stages, to check that everything runs
    convs = [
        n
        for n, m in dense.named_modules()
        if isinstance(m, nn.Conv2d) and (not quick or n.startswith(("layer1", "layer2")))
    ]

    rows: list[dict[str, str]] = []
    models: dict[str, nn.Module] = {"dense": dense}
    summary: dict[tuple[float, str], dict[str, float]] = {}

    def record(target: float, label: str, model: nn.Module, seconds: float) -> None:
        params, macs = count(model, x_count)
        acc0 = accuracy(model, test_data)
        recal = copy.deepcopy(model)
        recalibrate_bn(recal, calib)
        acc_bn = accuracy(recal, test_data)
        tuned = copy.deepcopy(model)
        train(tuned, train_data, epochs=1, lr=0.01, steps=ft_steps)
        acc1 = accuracy(tuned, test_data)
        models[f"{target:.2f} {label}"] = model
        summary[(target, label)] = {
            "acc_bn": acc_bn,
            "acc0": acc0,
            "acc1": acc1,
            "params": params / p_dense,
            "macs": macs / macs_dense,
        }
        rows.append(
            {
                "FLOPs target": f"{target:.2f}x",
                "variant": label,
                "params": f"{params / p_dense:.3f}x",
                "MACs": f"{macs / macs_dense:.3f}x",
                "acc": f"{acc0:.4f}",
                "acc, BN re-estimated": f"{acc_bn:.4f}",
                f"acc after {ft_steps}-step FT": f"{acc1:.4f}",
                "compress s": f"{seconds:.1f}",
                "latency": "",
            }
        )

    for target in targets:
        variants: list[tuple[str, tc.LowRankConfig]] = [
            ("svd, auto", tc.LowRankConfig(rank="auto", budget=target, budget_kind="flops")),
            ("svd, layer-wise", tc.LowRankConfig(rank="flops_ratio", value=target)),
        ]
        if not quick:
            variants.append(
                (
                    "whitened, auto",
                    tc.LowRankConfig(
                        rank="auto", budget=target, budget_kind="flops", method="whitened"
                    ),
                )
            )
        layerwise = None
        for label, cfg in variants:
            m = copy.deepcopy(dense)
            t0 = time.perf_counter()
            tc.factorize(m, cfg, calib, include=convs, progress=False)
            record(target, label, m.eval(), time.perf_counter() - t0)
            if label == "svd, layer-wise":
                layerwise = m
        assert layerwise is not None
        tucker, secs = tucker2_model(dense, layerwise, tucker_iters)
        record(target, "tucker2 (tensorly)", tucker, secs)

    # latency: every variant against dense, interleaved, batch 32
    xb = next(iter(test_data))[0][:32]

    def fwd(m: nn.Module) -> Callable[[], Any]:
        return lambda: m(xb)

    timing = time_variants(
        {k: fwd(v) for k, v in models.items()},
        baseline="dense",
        rounds=3 if quick else 7,
        min_time=0.2 if quick else 0.5,
    )
    for row in rows:
        key = f"{float(row['FLOPs target'][:-1]):.2f} {row['variant']}"
        lo, hi = timing.ratio_range[key]
        row["latency"] = f"{timing.ratio[key]:.2f}x ({lo:.2f}–{hi:.2f})"

    name = "lowrank_cnn"
    command = "PYTHONPATH=src python -m benchmarks.lowrank_cnn" + (" --quick" if quick else "")
    rep = Report(name, "Low-rank factorization: CIFAR ResNet-18 on digits vs Tucker-2", command)
    scope = "every conv" if not quick else "the convs of layer1 and layer2 (quick mode)"
    rep.add(
        f"ResNet-18 (CIFAR stem, {p_dense:,} params, {macs_dense / 1e6:.1f}M MACs per 32x32 image) on "
        f"{data_src}, {trained}: test accuracy **{acc_dense:.4f}**. Targeted: {scope}; the classifier "
        "stays dense. Params and MACs are of the whole model, counted by hooks on the layers that run. "
        "`acc`: straight after compression; `BN re-estimated`: after recomputing the BatchNorm statistics "
        f"on {len(calib)} batches of 32 training images (no weight changes); fine-tune: {ft_steps} SGD steps "
        "at lr 0.01, cosine. Latency: median ratio to the dense model over interleaved rounds (batch 32, "
        "CPU; range in brackets). `tucker2` holds each layer at the params of `svd, layer-wise` (its MACs "
        f"follow from that), `partial_tucker(init='svd', n_iter_max={tucker_iters})` in float32. "
        "`compress s`: wall time of the decomposition (for ours, `tc.factorize` including calibration)."
    )
    rep.table(rows)
    lines = []
    for target in targets:
        s_auto = summary[(target, "svd, auto")]
        s_lw = summary[(target, "svd, layer-wise")]
        tk = summary[(target, "tucker2 (tensorly)")]
        lat = {
            k: timing.ratio[f"{target:.2f} {k}"]
            for k in ("svd, auto", "svd, layer-wise", "tucker2 (tensorly)")
        }
        lines.append(
            f"- {target:.2f}x FLOPs: channel SVD (layer-wise) {s_lw['acc0']:.3f} / {s_lw['acc_bn']:.3f} with BN "
            f"re-estimated / {s_lw['acc1']:.3f} fine-tuned, against Tucker-2 {tk['acc0']:.3f} / {tk['acc_bn']:.3f} / "
            f"{tk['acc1']:.3f} at the same params (MACs {s_lw['macs']:.2f}x vs {tk['macs']:.2f}x); the global "
            f"allocation: {s_auto['acc0']:.3f} / {s_auto['acc_bn']:.3f} / {s_auto['acc1']:.3f}. Latency: SVD auto "
            f"{lat['svd, auto']:.2f}x, layer-wise {lat['svd, layer-wise']:.2f}x, Tucker-2 "
            f"{lat['tucker2 (tensorly)']:.2f}x of dense."
        )
    best_ft = max(summary.items(), key=lambda kv: kv[1]["acc1"])
    lines.append(
        f"- Highest accuracy after fine-tuning: `{best_ft[0][1]}` at {best_ft[0][0]:.2f}x FLOPs "
        f"({best_ft[1]['acc1']:.3f}; dense {acc_dense:.3f})."
    )
    t_ours = [float(r["compress s"]) for r in rows if not r["variant"].startswith("tucker")]
    t_tk = [float(r["compress s"]) for r in rows if r["variant"].startswith("tucker")]
    lines.append(
        f"- Decomposition time: ours {min(t_ours):.1f}–{max(t_ours):.1f} s per model, tensorly Tucker-2 "
        f"{min(t_tk):.1f}–{max(t_tk):.1f} s."
    )
    rep.add("\n".join(lines))
    out = rep.write(Path(__file__).resolve().parent / "_work" if quick else None)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
