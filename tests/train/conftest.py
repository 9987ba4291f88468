"""Shared helpers of the trainer tests: preset-logits models, tiny data, a recording callback."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchcompress.train import Callback


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; on a shared, loaded machine more threads spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Fixed(nn.Module):
    """Returns preset logits (one row per sample index given as input)."""

    def __init__(self, logits: torch.Tensor, wrap: str = "tensor") -> None:
        super().__init__()
        self.register_buffer("table", logits)
        self.wrap = wrap
        self.grad_enabled: list[bool] = []
        self.child = nn.Linear(1, 1)

    def forward(self, idx: torch.Tensor):
        self.grad_enabled.append(torch.is_grad_enabled())
        out = self.table[idx]
        if self.wrap == "tuple":
            return out, "aux"
        if self.wrap == "object":
            return type("Out", (), {"logits": out})()
        if self.wrap == "dict":
            return {"logits": out, "hidden": out}
        return out


def tiny_data(n=40, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4))


class Recorder(Callback):
    def __init__(self):
        self.events: list[tuple[str, int]] = []
        self.lrs: list[float] = []
        self.training: list[bool] = []

    def on_train_begin(self, s):
        self.events.append(("train_begin", s.step))

    def on_step_begin(self, s):
        self.events.append(("step_begin", s.step))
        self.lrs.append(s.lr)
        self.training.append(s.model.training)

    def on_after_backward(self, s):
        assert all(p.grad is not None for p in s.model.parameters())
        self.events.append(("after_backward", s.step))

    def on_step_end(self, s):
        self.events.append(("step_end", s.step))

    def on_epoch_end(self, s):
        self.events.append(("epoch_end", s.step))

    def on_train_end(self, s):
        self.events.append(("train_end", s.step))


# --- tiny Hugging Face models built from configs (no weights are downloaded) ----------------------

VOCAB = 50


def gpt2(seed: int = 0) -> nn.Module:
    """A 2-layer GPT-2 language model, dropout off (train and eval modes compute the same)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama(seed: int = 0) -> nn.Module:
    """A 2-layer LLaMA-style causal LM (RMSNorm, rotary positions, grouped-query attention)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def bert_config(**kwargs):
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **kwargs,
    )


def lm_batches(n: int = 3, batch: int = 4, length: int = 10, seed: int = 0) -> list[dict]:
    """``{input_ids, attention_mask, labels}`` batches, labels = ids with some positions -100."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (batch, length), generator=g)
        labels = ids.clone()
        labels[0, : 2 + i] = -100  # e.g. a prompt that is not scored: a different count per batch
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out
