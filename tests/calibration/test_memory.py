"""Calibration on a 24-block transformer built from a config keeps bounded memory: statistics have
fixed-size accumulators whatever the amount of data, and the block-by-block runner holds one
block's statistics at a time (benchmarks/calibration_memory.py measures the resident memory)."""

from __future__ import annotations

import pytest
import torch

from torchcompress.calibration import SequentialRunner, collect
from torchcompress.layers import layer_kind

transformers = pytest.importorskip("transformers")


def gpt2(blocks: int = 24, width: int = 32):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=64,
        n_embd=width,
        n_layer=blocks,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def data(batches: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 64, (2, 16), generator=g)} for _ in range(batches)]


def _nbytes(stats, name: str) -> int:
    return sum(st[name].numel() * st[name].element_size() for st in stats.values())


@pytest.mark.hf
@pytest.mark.slow
def test_accumulators_do_not_grow_with_data_and_the_runner_holds_one_block() -> None:
    model = gpt2()
    layers = [n for n, m in model.named_modules() if layer_kind(m) is not None and n != "lm_head"]
    assert len(layers) == 24 * 4
    sizes = {}
    for batches in (1, 2):
        stats = collect(
            model, data(batches), {n: ["xtx", "input_sq"] for n in layers}, progress=False
        )
        assert all(st.count("xtx") > 0 for st in stats.values())
        sizes[batches] = (_nbytes(stats, "xtx"), _nbytes(stats, "input_sq"))
    assert sizes[1] == sizes[2]
    widths = [layer_kind(model.get_submodule(n)).geometry(model.get_submodule(n)).n for n in layers]
    assert sizes[1][0] == sum(8 * n * n for n in widths)  # E[x x^T]: n x n float64 per layer
    per_block: list[int] = []

    def transform(block) -> None:
        per_block.append(_nbytes(block.collect(["xtx"]), "xtx"))

    SequentialRunner(model, data(2), progress=False).run(transform)
    assert len(per_block) == 24 and max(per_block) * 24 == sizes[1][0]
