"""Hugging Face BERT-style models: whole heads and FFN units, config consistency, save/load."""

from __future__ import annotations

import pytest
import torch

import torchcompress as tc
from torchcompress.sparsity import channel_report

from .conftest import run, zero_units

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf


def small_bert(attn: str = "eager") -> torch.nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=16,
    )
    try:
        model = transformers.BertModel(cfg, attn_implementation=attn)
    except TypeError:  # older transformers
        cfg._attn_implementation = attn
        model = transformers.BertModel(cfg)
    return model.eval()


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_heads_and_ffn_units_exact(attn: str) -> None:
    torch.manual_seed(0)
    m = small_bert(attn)
    x = inputs()
    zero_units(m, x)
    ref = run(m, x).last_hidden_state
    tc.prune_channels(m, x, 0.5, criterion="l1")
    got = run(m, x).last_hidden_state
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    for i, layer in enumerate(m.encoder.layer):
        sa = layer.attention.self
        assert sa.num_attention_heads == 2 and sa.all_head_size == 16  # heads of 8 channels
        assert sa.query.out_features == sa.key.out_features == sa.value.out_features == 16
        assert layer.attention.output.dense.in_features == 16
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 24
        assert sa._torchcompress_heads == [0, 2]  # the zeroed heads 1 and 3 went
        assert m.config.pruned_heads[i] == [1, 3]
    assert m.config.num_attention_heads == 4  # the unpruned architecture, as Hugging Face keeps it
    groups = channel_report(m).groups
    assert [g.width for g in groups] == [8, 1, 8, 1]


def test_bert_config_consistent_after_save_and_load(tmp_path) -> None:
    torch.manual_seed(0)
    m = small_bert()
    x = inputs()
    tc.prune_channels(m, x, target={"macs": 0.6})
    path = tmp_path / "bert.safetensors"
    tc.save(m, path)
    fresh = small_bert()
    tc.load(path, fresh)
    torch.testing.assert_close(run(fresh, x).last_hidden_state, run(m, x).last_hidden_state)
    assert fresh.config.pruned_heads == m.config.pruned_heads
    for a, b in zip(m.encoder.layer, fresh.encoder.layer):
        sa, sb = a.attention.self, b.attention.self
        assert (sb.num_attention_heads, sb.all_head_size) == (
            sa.num_attention_heads,
            sa.all_head_size,
        )
        assert sb.query.weight.shape == sa.query.weight.shape
        heads = sb.num_attention_heads
        assert heads * sb.attention_head_size == sb.query.out_features


def test_bert_prunes_again_from_the_pruned_model() -> None:
    torch.manual_seed(0)
    m = small_bert()
    x = inputs()
    tc.prune_channels(m, x, 0.25, criterion="random")
    first = {
        i: list(lay.attention.self._torchcompress_heads) for i, lay in enumerate(m.encoder.layer)
    }
    tc.prune_channels(m, x, 0.5, criterion="random", seed=1)
    for i, layer in enumerate(m.encoder.layer):
        heads = layer.attention.self._torchcompress_heads
        assert set(heads) < set(first[i])  # original head indices, a subset of the first kept
        assert sorted(set(range(4)) - set(heads)) == m.config.pruned_heads[i]
    assert run(m, x).last_hidden_state.shape == (2, 7, 32)


@pytest.mark.slow
def test_real_minilm_heads_and_ffn() -> None:
    from torchcompress.models.hf import load_minilm, sentence_embeddings, tokenize

    model, tok = load_minilm()
    sents = ["A cat sits on the mat.", "Pruning removes whole heads.", "It rains in Paris today."]
    x = tokenize(tok, sents)
    before = sentence_embeddings(model, tok, sents)
    tc.prune_channels(model, x, target={"macs": 0.8}, criterion="l2")
    after = sentence_embeddings(model, tok, sents)
    rep = channel_report(model)
    assert rep.cumulative["macs"] <= 0.8 and rep.cumulative["macs"] >= 0.79
    assert rep.macs_estimated == rep.macs_after
    assert torch.nn.functional.cosine_similarity(before, after).min() > 0.5
    assert tc.profile(model, x).total_params == rep.params_after
