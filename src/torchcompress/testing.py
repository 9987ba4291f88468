"""Toy models the test suites share (and that make quick experiments easy).

Small enough to compress, train and profile in milliseconds on a CPU, and built to cover the cases
the verbs must handle:

- :class:`TinyCNN`: conv-BN-ReLU twice (the second strided), global pooling and a classifier: the
  usual shape of a CNN to prune, fold or quantize.
- :class:`MixedConvNet`: one convolution of each flavour (plain, strided and dilated, grouped,
  depthwise) and a classifier: what factorization and layer-kind handling must get right.
- :class:`BlockNet`: repeated pre-norm MLP blocks in an ``nn.ModuleList`` (what the block-by-block
  methods walk), and :func:`tiny_bert`, :func:`tiny_gpt2`, :func:`tiny_llama` (Hugging Face models
  built from small configs; they need ``transformers``) with :func:`token_batches` to feed them.

Nothing here is seeded: seed torch before building one when the weights must repeat.

Example:
    >>> import torch
    >>> from torchcompress.testing import TinyCNN
    >>> _ = torch.manual_seed(0)
    >>> TinyCNN()(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BlockNet",
    "MixedConvNet",
    "TinyCNN",
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
