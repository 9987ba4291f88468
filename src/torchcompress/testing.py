"""Toy models the test suites share (and that make quick experiments easy).

Small enough to compress, train and profile in milliseconds on a CPU, and built to cover the cases
the verbs must handle:

- :class:`TinyCNN`: conv-BN-ReLU twice (the second strided), global pooling and a classifier: the
  usual shape of a CNN to prune, fold or quantize.
- :class:`MixedConvNet`: one convolution of each flavour (plain, strided and dilated, grouped,
  depthwise) and a classifier: what factorization and layer-kind handling must get right.
- :class:`BranchyNet`: a residual add, a concatenation, a depthwise convolution, BatchNorms and a
  Linear after a flatten: the graph shapes a new user's CNN has.
- :class:`EmbeddingLSTM`: an embedding, an LSTM (which no family compresses) and a Linear head.
- :class:`SharedLinear`: one Linear called twice in a forward.
- :class:`BlockNet`: repeated pre-norm MLP blocks in an ``nn.ModuleList`` (what the block-by-block
  methods walk), and :func:`tiny_bert`, :func:`tiny_gpt2`, :func:`tiny_llama` (Hugging Face models
  built from small configs; they need ``transformers``) with :func:`token_batches` to feed them.

:func:`assert_unchanged` checks that a failed verb left a model exactly as it was.

Nothing here is seeded: seed torch before building one when the weights must repeat.

Example:
    >>> import torch
    >>> from torchcompress.testing import TinyCNN
    >>> _ = torch.manual_seed(0)
    >>> TinyCNN()(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "BlockNet",
    "BranchyNet",
    "EmbeddingLSTM",
    "MixedConvNet",
    "SharedLinear",
    "TinyCNN",
    "assert_unchanged",
    "fingerprint",
    "tiny_bert",
    "tiny_gpt2",
    "tiny_llama",
    "token_batches",
]


class TinyCNN(nn.Module):
    """Conv-BN-ReLU, a strided conv-BN-ReLU, global average pooling, a linear classifier.

    Inputs ``(N, 3, H, W)``; outputs ``(N, 4)``. The first convolution has no bias (a BatchNorm
    follows), the second has one.

    Example:
        >>> import torch
        >>> TinyCNN()(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 4])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


class MixedConvNet(nn.Module):
    """One convolution of each flavour, then a classifier.

    ``conv1`` plain (3 -> 24), ``conv2`` strided and dilated without bias (24 -> 32), ``conv3``
    grouped (2 groups), ``dw`` depthwise, global average pooling and ``fc`` (32 -> 10). Inputs
    ``(N, 3, H, W)``; outputs ``(N, 10)``.

    Example:
        >>> import torch
        >>> MixedConvNet()(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 10])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1)
        self.conv2 = nn.Conv2d(24, 32, 3, stride=2, padding=2, dilation=2, bias=False)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x``."""
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.dw(x))
        return self.fc(self.pool(x).flatten(1))


class _MLPBlock(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class BlockNet(nn.Module):
    """``blocks`` pre-norm residual MLP blocks (LayerNorm, Linear, ReLU, Linear) and a head.

    Inputs ``(N, width)`` (or ``(N, T, width)``); outputs ``(N, classes)``. The blocks sit in
    ``self.blocks``, an ``nn.ModuleList``, as in a transformer.

    Example:
        >>> import torch
        >>> BlockNet()(torch.randn(2, 16)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self, width: int = 16, hidden: int = 32, blocks: int = 3, classes: int = 4
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_MLPBlock(width, hidden) for _ in range(blocks))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks, then the head."""
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def tiny_bert(layers: int = 2, hidden: int = 32, vocab: int = 64) -> nn.Module:
    """A small ``transformers.BertModel`` (post-norm encoder, GELU FFN), in eval mode.

    Example:
        >>> from torchcompress.testing import tiny_bert, token_batches
        >>> tiny_bert()(**token_batches(1)[0]).last_hidden_state.shape  # doctest: +SKIP
        torch.Size([4, 12, 32])
    """
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    return transformers.BertModel(cfg).eval()


def tiny_gpt2(layers: int = 2, hidden: int = 32, vocab: int = 64) -> nn.Module:
    """A small ``transformers.GPT2LMHeadModel`` (pre-norm decoder, HF ``Conv1D`` layers), in eval mode."""
    import transformers

    cfg = transformers.GPT2Config(
        vocab_size=vocab,
        n_embd=hidden,
        n_layer=layers,
        n_head=4,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama(layers: int = 2, hidden: int = 32, vocab: int = 64) -> nn.Module:
    """A small ``transformers.LlamaForCausalLM`` (RMSNorm, gated SiLU MLP, rotary), in eval mode."""
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def token_batches(
    n: int = 4, batch: int = 4, length: int = 12, vocab: int = 64, *, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of random token ids with attention masks (the last sample padded).

    Example:
        >>> b = token_batches(2)
        >>> len(b), tuple(b[0]["input_ids"].shape), int(b[0]["attention_mask"][-1].sum())
        (2, (4, 12), 9)
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, length), generator=g)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length - 3 :] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


class BranchyNet(nn.Module):
    """A stem, a residual block, a concatenation, a depthwise conv and a Linear after a flatten.

    Inputs ``(N, 3, 8, 8)``; outputs ``(N, 5)``. Every convolution is followed by a BatchNorm.

    Example:
        >>> import torch
        >>> BranchyNet()(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 5])
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.res = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.side = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x``."""
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(x + self.bn1(self.res(x)))
        x = torch.cat([x, self.side(x)], dim=1)
        x = torch.relu(self.bn2(self.dw(x)))
        return self.fc(torch.flatten(x, 1))


class EmbeddingLSTM(nn.Module):
    """Token ids ``(N, T)`` -> embedding -> LSTM -> Linear on the last step: ``(N, classes)``.

    Example:
        >>> import torch
        >>> EmbeddingLSTM()(torch.randint(0, 20, (2, 6))).shape
        torch.Size([2, 3])
    """

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Classify the sequences ``ids``."""
        out, _ = self.lstm(self.emb(ids))
        return self.head(out[:, -1])


class SharedLinear(nn.Module):
    """``s(relu(s(relu(a(x)))))``: the Linear ``s`` is called twice. Inputs and outputs ``(N, 8)``.

    Example:
        >>> import torch
        >>> SharedLinear()(torch.randn(2, 8)).shape
        torch.Size([2, 8])
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.s = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run ``a`` once and ``s`` twice."""
        return self.s(torch.relu(self.s(torch.relu(self.a(x)))))


def _bits(t: torch.Tensor) -> tuple[Any, ...]:
    """A tensor's dtype, shape and bytes (NaNs compare equal to themselves)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    data = flat.view(torch.uint8) if flat.numel() and flat.element_size() else flat
    return (t.dtype, tuple(t.shape), data.clone())


_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything :func:`assert_unchanged` compares: the state (bit for bit), the identity of
    every parameter and buffer, module classes, hooks, parametrizations, train/eval flags,
    ``requires_grad``, gradients, and the model's own attributes (a bound ``forward``, history)."""
    mods = dict(model.named_modules())
    params = {f"{n}.{k}" if n else k: p for n, m in mods.items() for k, p in m._parameters.items()}
    buffers = {f"{n}.{k}" if n else k: b for n, m in mods.items() for k, b in m._buffers.items()}
    return {
        "state": {k: _bits(v) for k, v in model.state_dict(keep_vars=True).items()},
        "identity": {k: id(t) for k, t in {**params, **buffers}.items()},
        "classes": {n: type(m) for n, m in mods.items()},
        "hooks": {n: tuple(len(getattr(m, h, {}) or {}) for h in _HOOKS) for n, m in mods.items()},
        "parametrizations": {
            n: {k: [type(p) for p in v] for k, v in getattr(m, "parametrizations", {}).items()}
            for n, m in mods.items()
        },
        "training": {n: m.training for n, m in mods.items()},
        "requires_grad": {k: p.requires_grad for k, p in params.items() if p is not None},
        "grads": {
            k: None if p.grad is None else _bits(p.grad) for k, p in params.items() if p is not None
        },
        "attributes": {
            k: v for k, v in model.__dict__.items() if not k.startswith("_") and k != "training"
        },
        "private": sorted(model.__dict__),
        "history": repr(getattr(model, "_torchcompress_history", None)),
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and len(a) == 3 and isinstance(a[2], torch.Tensor):
        return (
            isinstance(b, tuple)
            and a[:2] == b[:2]
            and a[2].shape == b[2].shape
            and torch.equal(a[2], b[2])
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or a == b


@contextlib.contextmanager
def assert_unchanged(model: nn.Module) -> Iterator[None]:
    """Check that ``model`` is exactly as it was after the block (whether or not it raised).

    Compares :func:`fingerprint` before and after and raises ``AssertionError`` naming every part
    that changed. Use it around a verb that must fail cleanly::

        with assert_unchanged(model), pytest.raises(tc.errors.ConfigError):
            tc.quantize(model, bad_config)

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 2)
        >>> with assert_unchanged(m):
        ...     _ = m(torch.randn(1, 2))
        >>> try:
        ...     with assert_unchanged(m):
        ...         _ = m.eval()
        ... except AssertionError as e:
        ...     print(e)
        the model changed: training ((the model))
    """
    before = fingerprint(model)
    try:
        yield
    finally:
        after = fingerprint(model)
        changed = [k for k in before if not _same(before[k], after[k])]
        if changed:
            detail = []
            for k in changed:
                if isinstance(before[k], dict) and isinstance(after[k], dict):
                    keys = sorted(
                        {
                            str(n) or "(the model)"
                            for n in set(before[k]) | set(after[k])
                            if not _same(before[k].get(n), after[k].get(n))
                        }
                    )
                    detail.append(f"{k} ({', '.join(keys[:8])})" if keys else k)
                else:
                    detail.append(k)
            raise AssertionError("the model changed: " + "; ".join(detail))
