"""Block-by-block runs on a tiny BERT and a tiny GPT-2: exact inputs, masks in every block, transforms."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from torchcompress.calibration import Block, SequentialRunner, collect, find_blocks
from torchcompress.errors import CalibrationError, SelectionError

transformers = pytest.importorskip("transformers")


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2, n_positions=32)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _data() -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for length in (7, 5):
        ids = torch.randint(0, 50, (2, length), generator=g)
        mask = torch.ones(2, length, dtype=torch.long)
        mask[1, length - 2 :] = 0  # padding: the mask changes the result
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _block_io(model: nn.Module, blocks: list[tuple[str, nn.Module]], data: list) -> tuple:
    """Every block's hidden-state input and output in a plain forward of the whole model."""
    ins: dict[int, list[Tensor]] = {k: [] for k in range(len(blocks))}
    outs: dict[int, list[Tensor]] = {k: [] for k in range(len(blocks))}
    handles = []
    for k, (_, mod) in enumerate(blocks):
        handles.append(
            mod.register_forward_pre_hook(
                lambda m, a, kw, k=k: ins[k].append(a[0]), with_kwargs=True
            )
        )
        handles.append(
            mod.register_forward_hook(
                lambda m, a, o, k=k: outs[k].append(o[0] if isinstance(o, tuple) else o)
            )
        )
    with torch.no_grad():
        for batch in data:
            model(**batch)
    for h in handles:
        h.remove()
    return ins, outs


@pytest.mark.parametrize(
    ("make", "container"), [(_bert, "encoder.layer"), (_gpt2, "transformer.h")]
)
def test_identity_transform_reproduces_every_block(make: Any, container: str) -> None:
    model, data = make(), _data()
    blocks = find_blocks(model)
    assert [n for n, _ in blocks] == [f"{container}.{i}" for i in range(3)]
    ref_in, ref_out = _block_io(model, blocks, data)
    seen: list[tuple[int, list]] = []

    def transform(block: Block) -> None:
        seen.append((block.index, block.inputs))

    use_cache = getattr(model.config, "use_cache", None)
    outputs = SequentialRunner(model, data).run(transform)
    assert [k for k, _ in seen] == [0, 1, 2]
    for k, inputs in seen:
        assert len(inputs) == 2
        for b, (args, _) in enumerate(inputs):
            assert torch.equal(args[0], ref_in[k][b])  # bit for bit
    for b in range(2):
        assert torch.equal(outputs[b], ref_out[2][b])
    assert getattr(model.config, "use_cache", None) == use_cache  # restored
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_attention_masks_and_keywords_reach_every_block() -> None:
    model, data = _gpt2(), _data()
    captured: list[tuple] = []
    SequentialRunner(model, data).run(lambda block: captured.append(block.inputs))
    for inputs in captured:
        for b, (args, kwargs) in enumerate(inputs):
            masks = [a for a in args[1:] if isinstance(a, Tensor)]
            assert masks, "the attention mask is passed to every block"
            first = next(a for a in captured[0][b][0][1:] if isinstance(a, Tensor))
            assert torch.equal(masks[0], first)
            assert kwargs.get("use_cache") is False  # caches are off while running block by block
            assert kwargs["position_ids"].shape[-1] == data[b]["input_ids"].shape[-1]
    # without the padding mask the second sample's hidden states differ: the mask was used
    unmasked = [{"input_ids": d["input_ids"]} for d in data]
    other: list[tuple] = []
    SequentialRunner(model, unmasked).run(lambda block: other.append(block.inputs))
    assert not torch.allclose(other[2][0][0][0][1], captured[2][0][0][0][1])


class PassThrough(nn.Module):
    """A replacement block that returns its hidden states unchanged."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


def test_a_transform_changes_what_the_next_block_sees() -> None:
    model, data = _bert(), _data()
    blocks = find_blocks(model)
    base_in, _ = _block_io(model, blocks, data)
    captured: dict[int, list] = {}

    def transform(block: Block) -> nn.Module | None:
        captured[block.index] = block.inputs
        if block.index == 0:
            with torch.no_grad():
                block.module.output.dense.weight.mul_(0.5)  # in place
            return None
        if block.index == 1:
            return PassThrough()  # replaced: block 2 sees block 1's input
        return None

    SequentialRunner(model, data, blocks="encoder.layer").run(transform)
    assert isinstance(model.encoder.layer[1], PassThrough)
    assert not torch.allclose(captured[1][0][0][0], base_in[1][0])
    torch.testing.assert_close(captured[2][0][0][0], captured[1][0][0][0])
    # what the runner fed each block is what the transformed model computes
    new_in, _ = _block_io(model, find_blocks(model, "encoder.layer"), data)
    for k in range(3):
        torch.testing.assert_close(captured[k][1][0][0], new_in[k][1], rtol=1e-5, atol=1e-6)


def test_statistics_of_a_block_equal_those_of_the_whole_model() -> None:
    model, data = _gpt2(), _data()
    names = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    full = collect(model, data, {f"transformer.h.1.{n}": ["xtx"] for n in names})
    per_block: dict[int, Any] = {}
    SequentialRunner(model, data).run(
        lambda block: per_block.__setitem__(block.index, block.collect(["xtx"]))
    )
    assert sorted(per_block[1]) == sorted(names)  # every weight layer of the block
    for n in names:
        assert torch.equal(per_block[1][n]["xtx"], full[f"transformer.h.1.{n}"]["xtx"])
        assert per_block[1][n].rows == full[f"transformer.h.1.{n}"].rows


def test_find_blocks_by_name_and_clear_errors() -> None:
    model = _bert()
    assert [n for n, _ in find_blocks(model, "encoder.layer")][-1] == "encoder.layer.2"
    assert [n for n, _ in find_blocks(model, ["encoder.layer.0", "encoder.layer.2"])] == [
        "encoder.layer.0",
        "encoder.layer.2",
    ]
    with pytest.raises(
        SelectionError, match=r"'encoder\.layers' matches no module.*'encoder\.layer'"
    ):
        find_blocks(model, "encoder.layers")
    with pytest.raises(SelectionError, match=r"Block 'encoder\.layer\.9' matches no module"):
        find_blocks(model, ["encoder.layer.9"])
    with pytest.raises(SelectionError, match="no repeated blocks"):
        find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))


class Skips(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))
        self.spare = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))

    def forward(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x)
        return x


def test_a_block_the_data_never_reaches_is_an_error_and_nothing_is_left_behind() -> None:
    model = Skips().train()
    with pytest.raises(CalibrationError, match=r"never reached block 'spare\.0'"):
        SequentialRunner(model, torch.randn(4, 3), blocks="spare").run(lambda b: None)
    assert model.training and all(not m._forward_pre_hooks for m in model.modules())
    out = SequentialRunner(model, torch.randn(4, 3), blocks="blocks").run(lambda b: None)
    assert out[0].shape == (4, 3) and model.training
