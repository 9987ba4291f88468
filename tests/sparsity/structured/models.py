"""Small models for the channel-pruning tests: one dependency case each."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualNet(nn.Module):
    """Stem, two residual blocks (identity and 1x1 projection shortcuts), pooling, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.a1 = nn.Conv2d(8, 12, 3, padding=1)
        self.a2 = nn.Conv2d(12, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 10, 3, stride=2, padding=1)
        self.b2 = nn.Conv2d(10, 16, 3, padding=1)
        self.proj = nn.Conv2d(8, 16, 1, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(x + self.a2(F.relu(self.a1(x))))
        x = F.relu(self.proj(x) + self.b2(F.relu(self.b1(x))))
        return self.fc(x.mean((2, 3)))


class ConcatNet(nn.Module):
    """Dense connectivity: a concatenation feeds a convolution at offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 10, 3, padding=1)
        self.c3 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a))
        y = torch.relu(self.c3(torch.cat([a, b], dim=1)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class ChunkNet(nn.Module):
    """A convolution's output chunked in two, each half to its own branch, then concatenated."""

    def __init__(self, explicit: bool = False) -> None:
        super().__init__()
        self.explicit = explicit
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.left = nn.Conv2d(6, 4, 3, padding=1)
        self.right = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        a, b = torch.split(h, [6, 6], dim=1) if self.explicit else h.chunk(2, dim=1)
        y = torch.cat([self.left(a), self.right(b)], dim=1)
        return self.fc(y.mean((2, 3)))


class FlattenNet(nn.Module):
    """Conv, BN, flatten straight into a Linear (each channel is a block of 16 features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class NormNet(nn.Module):
    """GroupNorm and LayerNorm after layers, and an SE-style channel gate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.gn = nn.GroupNorm(3, 12)
        self.se1 = nn.Linear(12, 4)
        self.se2 = nn.Linear(4, 12)
        self.fc1 = nn.Linear(12, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gn(self.conv(x)))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(x.mean((2, 3))))))
        x = x * s[:, :, None, None]
        return self.fc2(torch.relu(self.ln(self.fc1(x.mean((2, 3))))))


class Attention(nn.Module):
    """Multi-head self-attention written by hand: heads found from a fixed head size."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, -1, self.head_dim).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        y = att.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class TinyTransformer(nn.Module):
    """Token embedding, two pre-norm blocks (own attention and an FFN), mean pooling, classifier."""

    def __init__(self, dim: int = 16, heads: int = 4, hidden: int = 32, vocab: int = 20) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "attn": Attention(dim, heads),
                        "fc1": nn.Linear(dim, hidden),
                        "fc2": nn.Linear(hidden, dim),
                    }
                )
            )
        self.head = nn.Linear(dim, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for blk in self.blocks:
            x = x + blk["attn"](x)
            x = x + blk["fc2"](F.gelu(blk["fc1"](x)))
        return self.head(x.mean(1))


class MHANet(nn.Module):
    """nn.MultiheadAttention in a classifier (its embedding may shrink with its heads)."""

    def __init__(self, dim: int = 16, heads: int = 4, batch_first: bool = True) -> None:
        super().__init__()
        self.inp = nn.Linear(6, dim)
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.ff1 = nn.Linear(dim, 24)
        self.ff2 = nn.Linear(24, dim)
        self.head = nn.Linear(dim, 3)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.mha(h, h, h, need_weights=False)
        h = h + a
        h = h + self.ff2(torch.relu(self.ff1(h)))
        return self.head(h.mean(1 if self.batch_first else 0))
