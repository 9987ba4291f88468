"""Block dataflow: layer order, groups sharing an input, who else reads it, on real architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.batches import Batch
from torchcompress.calibration import find_blocks
from torchcompress.calibration.dataflow import analyze
from torchcompress.testing import BlockNet, token_batches

transformers = pytest.importorskip("transformers")

from torchcompress.testing import tiny_bert, tiny_gpt2, tiny_llama  # noqa: E402


def _first_block_flow(model: nn.Module):
    captured = {}

    from torchcompress.calibration import SequentialRunner

    def transform(block):
        if block.index == 0:
            captured["flow"] = analyze(block.module, block.batches()[0])
            captured["block"] = block.module

    SequentialRunner(model, token_batches(1)).run(transform)
    return captured["flow"]


def test_bert_groups_are_never_exclusive() -> None:
    flow = _first_block_flow(tiny_bert())
    groups = [(g.layers, g.exclusive) for g in flow.groups]
    assert groups == [
        (["attention.self.query", "attention.self.key", "attention.self.value"], False),
        (["attention.output.dense"], True),
        (["intermediate.dense"], False),  # the LayerNorm's output also feeds the residual
        (["output.dense"], True),
    ]
    assert flow.groups[0].source.input  # the block's input: no producer inside the block
    assert flow.groups[2].source.module == "attention.output.LayerNorm"
    assert flow.groups[3].source.module == "intermediate.intermediate_act_fn"  # a GELU
    assert flow.order == [n for g in flow.groups for n in g.layers]


def test_gpt2_pre_norm_inputs_are_exclusive() -> None:
    flow = _first_block_flow(tiny_gpt2())
    by_layer = {tuple(g.layers): g for g in flow.groups}
    assert list(by_layer) == [("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)]
    assert by_layer[("attn.c_attn",)].exclusive
    assert by_layer[("attn.c_attn",)].source.module == "ln_1"
    assert by_layer[("mlp.c_fc",)].source.module == "ln_2"


def test_llama_gate_and_up_share_the_norm_output() -> None:
    flow = _first_block_flow(tiny_llama())
    groups = {tuple(g.layers): g for g in flow.groups}
    assert ("mlp.gate_proj", "mlp.up_proj") in groups
    down = groups[("mlp.down_proj",)]
    assert down.exclusive
    op = down.source.op
    assert op is not None and op.func_name in ("mul", "__mul__")  # act(gate) * up
    up_out = op.inputs[1].tensor
    assert flow.consumers(up_out) == [op]


def test_repeated_layer_and_outputs() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.head = nn.Linear(4, 4)

        def forward(self, x):
            h = self.fc(self.fc(x))
            return h, self.head(h)

    flow = analyze(Twice(), Batch(args=(torch.randn(2, 4),)))
    assert flow.repeated == {"fc"}
    assert [g.layers for g in flow.groups] == [["fc"], ["fc"], ["head"]]
    assert not any(g.exclusive for g in flow.groups)  # fc: twice; head's input is also returned


def test_sizes_and_dropout_do_not_count_as_readers() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4)
            self.drop = nn.Dropout(0.1)
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            h = self.drop(self.norm(x))
            assert h.shape[-1] == 4 and h.size(0) == 2
            return x + self.fc(h)

    flow = analyze(Block(), Batch(args=(torch.randn(2, 4),)))
    (group,) = flow.groups
    assert group.exclusive and group.source.module == "norm"


def test_blocknet_blocks() -> None:
    model = BlockNet()
    (_, block), *_ = find_blocks(model)
    flow = analyze(block, Batch(args=(torch.randn(3, 16),)))
    assert [(g.layers, g.exclusive) for g in flow.groups] == [(["fc1"], True), (["fc2"], True)]
    relu = flow.groups[1].source.op
    assert relu is not None and relu.func_name == "relu"
