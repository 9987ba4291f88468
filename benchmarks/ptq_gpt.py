"""Weight-only 4- and 3-bit quantization of a small GPT-2-style decoder: perplexity of RTN, GPTQ, AWQ.

A GPT-2 (Hugging Face ``GPT2LMHeadModel``, ``Conv1D`` layers) built from a small config is trained
briefly on local text (the Python documentation that ships with the interpreter, tokenized with the
bundled MiniLM's WordPiece tokenizer, its vocabulary restricted to the tokens the text uses), then
quantized. Perplexity is measured on held-out text (the last tenth, never trained or calibrated
on). The trained model is cached under ``benchmarks/_work/``. For scale, the GPTQ paper's OPT-125M:
fp16 27.65, 4-bit RTN 37.28, GPTQ 31.12 (per-row ranges).

Usage::

    python -m benchmarks.ptq_gpt            # trains (a few minutes of CPU, once), then compares
    python -m benchmarks.ptq_gpt --quick    # a shorter training and fewer evaluation sequences
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchcompress as tc
from benchmarks.harness import Report

warnings.filterwarnings("ignore")

WORK = Path(__file__).resolve().parent / "_work"
SEQ = 64
BATCH = 16
VOCAB = 4096  # the most frequent tokens; the rest map to one "unknown" token


def _corpus() -> list[int]:
    """The token ids of the Python documentation topics, in a fixed order."""
    from pydoc_data.topics import topics

    from torchcompress.models.hf import load_minilm

    _, tok = load_minilm()
    ids: list[int] = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            text = " ".join(para.split())
            if text:
                ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    return ids


def _model(vocab: int) -> nn.Module:
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=vocab,
        n_embd=128,
        n_layer=4,
        n_head=4,
        n_positions=SEQ,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _prepare(steps: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """The trained model (cached), the training and held-out token streams, training seconds."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"ptq_gpt_{steps}.pt"
    raw = torch.tensor(_corpus())
    tokens, counts = raw.unique(return_counts=True)
    keep = tokens[counts.argsort(descending=True, stable=True)[: VOCAB - 1]]
    remap = torch.zeros(int(raw.max()) + 1, dtype=torch.long)  # 0: unknown
    remap[keep] = torch.arange(1, len(keep) + 1)
    ids = remap[raw]
    vocab = list(range(len(keep) + 1))
    cut = int(len(ids) * 0.9)
    train, held = ids[:cut], ids[cut:]
    torch.manual_seed(0)
    model = _model(len(vocab))
    if path.exists():
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        return model.eval(), train, held, float(saved["seconds"])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        starts = torch.randint(0, len(train) - SEQ - 1, (BATCH,), generator=g)
        batch = torch.stack([train[s : s + SEQ] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    torch.save({"state": model.state_dict(), "seconds": seconds}, path)
    return model, train, held, seconds


@torch.no_grad()
def _perplexity(model: nn.Module, held: torch.Tensor, n_seq: int) -> float:
    seqs = held[: (len(held) // SEQ) * SEQ].reshape(-1, SEQ)[:n_seq]
    nll, count = 0.0, 0
    for i in range(0, len(seqs), 32):
        batch = seqs[i : i + 32]
        out = model(input_ids=batch, labels=batch)
        n = batch.numel() - batch.shape[0]  # every position but the first predicts a token
        nll += float(out.loss) * n
        count += n
    return math.exp(nll / count)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter training, fewer sequences")
    ap.add_argument("--steps", type=int, default=1500, help="training steps (16 x 64 tokens each)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    quick = args.quick
    steps = 400 if quick else args.steps
    n_eval = 64 if quick else 160
    n_calib = 32 if quick else 64
    grid = 10 if quick else 20

    model, train, held, train_s = _prepare(steps)
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, len(train) - SEQ, (n_calib,), generator=g)
    calib: list[dict[str, Any]] = [
        {"input_ids": torch.stack([train[s : s + SEQ] for s in starts[i : i + 8]])}
        for i in range(0, n_calib, 8)
    ]
    rows = []
    fp = _perplexity(model, held, n_eval)
    rows.append({"variant": "fp32", "perplexity": f"{fp:.2f}", "vs fp32": "—", "compress s": "—"})
    for bits in (4, 3, 2):
        for gran, size in (("channel", None), ("group", 64)):
            spec = tc.IntSpec(bits, symmetric=False, granularity=gran, group_size=size)
            cfg = tc.QuantConfig(weight=spec, activation=None)
            label = f"int{bits} {'per-channel' if size is None else 'group 64'}"
            variants = {
                "RTN": lambda cfg=cfg: tc.quantize(
                    copy.deepcopy(model), cfg, include="transformer.h"
                ),
                "GPTQ": lambda cfg=cfg: tc.gptq(copy.deepcopy(model), cfg, calib),
                "GPTQ act-order": lambda cfg=cfg: tc.gptq(
                    copy.deepcopy(model), cfg, calib, act_order=True
                ),
                "AWQ": lambda cfg=cfg: tc.awq(copy.deepcopy(model), cfg, calib, grid=grid),
            }
            for name, fn in variants.items():
                t = time.perf_counter()
                m = fn()
                s = time.perf_counter() - t
                ppl = _perplexity(m, held, n_eval)
                rows.append(
                    {
                        "variant": f"{label}, {name}",
                        "perplexity": f"{ppl:.2f}",
                        "vs fp32": f"{ppl - fp:+.2f}",
                        "compress s": f"{s:.1f}",
                    }
                )
    params = sum(p.numel() for p in model.parameters())
    rep = Report(
        "ptq_gpt",
        "Post-training: 4-, 3- and 2-bit GPT-2-style decoder (RTN, GPTQ, AWQ)",
        "python -m benchmarks.ptq_gpt" + (" --quick" if quick else ""),
    )
    rep.add(
        f"A GPT-2 (4 layers, width 128, {params / 1e6:.1f}M parameters with a "
        f"{model.config.vocab_size}-token vocabulary, HF `Conv1D` layers) trained for {steps} steps "
        f"of {BATCH} x {SEQ} tokens ({train_s:.0f} s here, cached) on the Python documentation topics "
        f"({len(train) + len(held)} tokens); perplexity on {n_eval} held-out sequences of {SEQ} "
        f"tokens from the last tenth of the text, calibration on {n_calib} training sequences. "
        "The 4 transformer blocks are quantized (weights only, asymmetric ranges); the tied "
        "embedding / LM head stays in float in every variant. 'compress s' is wall time on a "
        "shared, noisy machine."
    )
    rep.table(
        rows,
        caption="**Perplexity** (lower is better; 'vs fp32': the difference in perplexity). The "
        "2-bit rows go beyond the 4 and 3 bits asked for: they show where error compensation "
        "matters on a model this small.",
    )
    rep.add(
        "For scale (GPTQ paper, Table 3, per-row ranges): OPT-125M fp16 27.65, 4-bit RTN 37.28, "
        "GPTQ 31.12; 3-bit GPTQ 53.85. A model this small and this briefly trained is far from "
        "those: probably much of what it predicts comes from its float embedding and head, so quantizing "
        "its blocks moves perplexity little even at 2 bits, and differences under about 0.05 are "
        f"within the sampling noise of {n_eval * SEQ} evaluation tokens. Read the order of the "
        "methods, not the sizes."
    )
    path = rep.write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
