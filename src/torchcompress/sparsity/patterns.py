"""Sparsity patterns: how a weight is cut into units that are pruned together.

A pattern turns per-weight scores into *candidates* (units of pruning, each with a score, the number
of still-alive weights it would remove, and whether it is already fully pruned), and turns the chosen
candidates back into a keep-mask. The pruner selects candidates (per layer, per output row, or across
layers) without knowing the pattern, so a new pattern (blocks, kernels, ...) is one class.

Weights are seen in the canonical layout ``(out, in, *kernel)`` (see
:mod:`torchcompress.layers`). Built in:

- ``"unstructured"``: every weight is its own unit;
- ``"n:m"``: at most ``n`` non-zeros in every ``m`` consecutive weights along the input dimension
  (for convolutions: along the input channels, at each kernel tap, as NVIDIA's sparse tensor cores
  and ``torch.sparse.to_sparse_semi_structured`` expect). ``m`` must divide the input dimension
  (``in_features``, or ``in_channels / groups``);
- ``"channel"`` (alias ``"filter"``): whole output channels (rows of the weight, conv filters), with
  their bias entries, for mask-based structured sparsity. Physical removal of channels is
  ``tc.prune_channels``, which reuses these groups.

Example:
    >>> import torch
    >>> from torchcompress.sparsity.patterns import NMPattern
    >>> p = NMPattern(n=2, m=4)
    >>> w = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    >>> alive = torch.ones_like(w, dtype=torch.bool)
    >>> p.candidates(w.abs(), alive, "sum").scores.tolist()  # cost of N:M-ing the block
    [3.0]
    >>> p.expand(torch.ones(1, dtype=torch.bool), w.abs(), alive).int().tolist()
    [[1, 0, 1, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ShapeError
from ..layers import LayerKind
from ..registry import Registry

__all__ = [
    "PATTERNS",
    "Candidates",
    "ChannelPattern",
    "NMPattern",
    "Pattern",
    "UnstructuredPattern",
    "make_pattern",
    "reduce_groups",
]


@dataclass
class Candidates:
    """The units a pattern offers for pruning in one layer.

    Attributes:
        scores: one score per candidate (lower is pruned first), float.
        sizes: alive weights pruning the candidate would remove, int64.
        forced: candidates that are already fully pruned (size 0, always kept pruned).
    """

    scores: torch.Tensor
    sizes: torch.Tensor
    forced: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


def reduce_groups(contrib: torch.Tensor, how: str) -> torch.Tensor:
    """Reduce per-weight contributions ``(groups, size)`` to one score per group.

    ``"sum"`` adds them (L1 norm for ``|w|``); ``"l2"`` takes the square root of the sum (L2 norm
    for ``w**2``).
    """
    s = contrib.sum(-1)
    return s.clamp_min(0).sqrt() if how == "l2" else s


class Pattern:
    """Base class of sparsity patterns (see the module docstring)."""

    name: str = ""
    #: whether the pattern prunes whole output channels (and so masks their bias too)
    masks_bias: bool = False

    def check(self, layer_name: str, kind: LayerKind, module: nn.Module) -> None:
        """Raise a clear error if the layer cannot take this pattern."""

    def full(self, sparsity: float) -> bool:
        """Whether ``sparsity`` means "every candidate" (N:M at its natural sparsity)."""
        return False

    def max_sparsity(self) -> float:
        """The highest sparsity the pattern can reach (just below 1 unless bounded)."""
        return 1.0

    def max_group_size(self, w: torch.Tensor) -> int:
        """The most weights one candidate can remove (the rounding granularity of a target)."""
        return 1

    def candidates(self, scores: torch.Tensor, alive: torch.Tensor, reduce: str) -> Candidates:
        """Candidates from per-weight ``scores`` and the current keep-mask ``alive`` (canonical)."""
        raise NotImplementedError

    def expand(
        self, chosen: torch.Tensor, scores: torch.Tensor, alive: torch.Tensor
    ) -> torch.Tensor:
        """The new keep-mask (canonical shape) after pruning the ``chosen`` candidates."""
        raise NotImplementedError

    def bias_keep(self, chosen: torch.Tensor, out_features: int) -> torch.Tensor | None:
        """Keep-mask for the bias when whole outputs are pruned, else ``None``."""
        return None

    def group_matrix(self, w: torch.Tensor) -> torch.Tensor:
        """The canonical weight regrouped ``(groups, group_size)`` (differentiable; for regularizers)."""
        raise NotImplementedError


PATTERNS: Registry[type[Pattern]] = Registry("sparsity pattern")


@PATTERNS.register("unstructured")
class UnstructuredPattern(Pattern):
    """Each weight is pruned on its own."""

    name = "unstructured"

    def candidates(self, scores: torch.Tensor, alive: torch.Tensor, reduce: str) -> Candidates:
        s = reduce_groups(scores.reshape(-1, 1), reduce)
        a = alive.reshape(-1)
        return Candidates(scores=s, sizes=a.long(), forced=~a)

    def expand(
        self, chosen: torch.Tensor, scores: torch.Tensor, alive: torch.Tensor
    ) -> torch.Tensor:
        return alive & ~chosen.reshape(alive.shape)

    def group_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w.reshape(-1, 1)


def _blocks(t: torch.Tensor, m: int) -> torch.Tensor:
    """``(out, in, *k)`` -> ``(blocks, m)``: ``m`` consecutive input indices at each (out, tap)."""
    return t.movedim(1, -1).reshape(-1, m)


def _unblocks(b: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    moved = (shape[0], *shape[2:], shape[1])
    return b.reshape(moved).movedim(-1, 1)


@PATTERNS.register("n:m")
class NMPattern(Pattern):
    """N:M semi-structured sparsity: at most ``n`` non-zeros in each ``m`` consecutive inputs.

    At its natural sparsity ``1 - n/m`` every block is pruned to N:M. A lower sparsity N:M-prunes
    only the blocks where it costs least (the sum of the scores it removes), which is how gradual
    N:M schedules ramp up; the layer is then N:M only in part.

    Args:
        n: weights kept per block.
        m: block length along the input dimension.
    """

    name = "n:m"

    def __init__(self, n: int = 2, m: int = 4) -> None:
        self.n = int(n)
        self.m = int(m)

    def check(self, layer_name: str, kind: LayerKind, module: nn.Module) -> None:
        shape = kind.canonical_shape(module)
        n_in = shape[1]
        if n_in % self.m:
            what = "in_channels/groups" if len(shape) > 2 else "the input dimension"
            raise ShapeError(
                f"Layer {layer_name!r} ({kind.describe(module)}) cannot take the {self.n}:{self.m} "
                f"pattern: {what} = {n_in} is not a multiple of m={self.m}. Exclude it "
                f"(exclude=[{layer_name!r}]) or give it another pattern with "
                f"overrides={{{layer_name!r}: {{'pattern': 'unstructured'}}}}."
            )

    def full(self, sparsity: float) -> bool:
        return abs(sparsity - self.max_sparsity()) < 1e-9

    def max_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def max_group_size(self, w: torch.Tensor) -> int:
        return self.m - self.n

    def candidates(self, scores: torch.Tensor, alive: torch.Tensor, reduce: str) -> Candidates:
        s = _blocks(scores, self.m)
        a = _blocks(alive, self.m)
        dead = (~a).sum(-1)
        need = (self.m - self.n - dead).clamp_min(0)
        inf = torch.tensor(float("inf"), dtype=s.dtype, device=s.device)
        ordered = torch.where(a, s, inf).sort(dim=-1, stable=True).values
        take = torch.arange(self.m, device=s.device).unsqueeze(0) < need.unsqueeze(1)
        contrib = torch.where(take, ordered, torch.zeros((), dtype=s.dtype, device=s.device))
        return Candidates(
            scores=reduce_groups(contrib, reduce), sizes=need.long(), forced=need == 0
        )

    def expand(
        self, chosen: torch.Tensor, scores: torch.Tensor, alive: torch.Tensor
    ) -> torch.Tensor:
        s = _blocks(scores, self.m)
        a = _blocks(alive, self.m)
        ninf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
        order = torch.where(a, s, ninf).argsort(dim=-1, stable=True)
        ranks = order.argsort(dim=-1)
        prune = (ranks < (self.m - self.n)) & chosen.reshape(-1, 1)
        return _unblocks(a & ~prune, alive.shape)

    def group_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return _blocks(w, self.m)


@PATTERNS.register("channel")
class ChannelPattern(Pattern):
    """Whole output channels: rows of the weight (conv filters), with their bias entries."""

    name = "channel"
    masks_bias = True

    def candidates(self, scores: torch.Tensor, alive: torch.Tensor, reduce: str) -> Candidates:
        rows = scores.shape[0]
        a = alive.reshape(rows, -1)
        contrib = torch.where(
            a, scores.reshape(rows, -1), torch.zeros((), dtype=scores.dtype, device=scores.device)
        )
        sizes = a.sum(-1).long()
        return Candidates(scores=reduce_groups(contrib, reduce), sizes=sizes, forced=sizes == 0)

    def expand(
        self, chosen: torch.Tensor, scores: torch.Tensor, alive: torch.Tensor
    ) -> torch.Tensor:
        view = (-1,) + (1,) * (alive.dim() - 1)
        return alive & ~chosen.reshape(view)

    def bias_keep(self, chosen: torch.Tensor, out_features: int) -> torch.Tensor | None:
        return ~chosen.reshape(out_features)

    def max_group_size(self, w: torch.Tensor) -> int:
        return int(w[0].numel()) if w.numel() else 1

    def group_matrix(self, w: torch.Tensor) -> torch.Tensor:
        return w.reshape(w.shape[0], -1)


PATTERNS.add("filter", ChannelPattern)


def make_pattern(name: str, n: int = 2, m: int = 4) -> Pattern:
    """Instantiate the registered pattern ``name`` (``n`` and ``m`` are used by ``"n:m"``)."""
    cls = PATTERNS.get(name)
    if cls is NMPattern or (isinstance(cls, type) and issubclass(cls, NMPattern)):
        return cls(n=n, m=m)
    return cls()
