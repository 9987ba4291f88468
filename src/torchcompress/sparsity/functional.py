"""Pure tensor maths of pruning: normalising scores and choosing what to prune.

Everything here is tensor-in, tensor-out, independent of modules, so the structured pruner and
one-shot solvers can reuse it.

Example:
    >>> import torch
    >>> from torchcompress.sparsity.functional import choose
    >>> chosen = choose([torch.tensor([3.0, 1.0, 2.0])], [torch.ones(3, dtype=torch.long)],
    ...                 [torch.zeros(3, dtype=torch.bool)], need=2)
    >>> chosen[0].tolist()
    [False, True, True]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["NORMALIZATIONS", "choose", "normalize_scores", "per_row_keep"]

#: ``PruneConfig(normalize=...)``: name -> ``f(scores, valid) -> scores`` (float64, 1-D), scaling a
#: layer's candidate scores before they are ranked across layers; order within the layer is kept.
NORMALIZATIONS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry(
    "score normalization"
)


def _scaled_by(
    scale: Callable[[torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def normalize(s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        d = scale(s[valid])
        return s / d if float(d) > 0 else s

    return normalize


def _lamp(s: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): ``s_u^2 / sum_{v : s_v >= s_u} s_v^2`` over the layer's candidates."""
    sq = s.pow(2)
    order = torch.where(valid, sq, torch.full_like(sq, -1.0)).argsort(stable=True)
    sorted_sq = torch.where(valid[order], sq[order], torch.zeros_like(sq))
    tail = sorted_sq.flip(0).cumsum(0).flip(0)  # sum of this and every larger score
    lamp = torch.where(tail > 0, sorted_sq / tail.clamp_min(1e-300), torch.zeros_like(tail))
    out = torch.empty_like(s)
    out[order] = lamp
    return out


NORMALIZATIONS.add("none", lambda s, valid: s)
NORMALIZATIONS.add("mean", _scaled_by(lambda v: v.mean()))
NORMALIZATIONS.add("l2", _scaled_by(lambda v: v.norm()))
NORMALIZATIONS.add("max", _scaled_by(lambda v: v.abs().max()))
NORMALIZATIONS.add("lamp", _lamp)


def normalize_scores(scores: torch.Tensor, valid: torch.Tensor, how: str) -> torch.Tensor:
    """Scale one layer's candidate scores before they are ranked across layers.

    Args:
        scores: the layer's candidate scores (1-D).
        valid: candidates that take part (not already pruned); the scale is computed over them.
        how: a name in :data:`NORMALIZATIONS`: ``"none"``, ``"mean"``, ``"l2"``, ``"max"`` or
            ``"lamp"`` (see :class:`~torchcompress.sparsity.PruneConfig`).

    Returns:
        Scores (float64) to compare across layers; order within the layer is unchanged.
    """
    s = scores.double()
    if not bool(valid.any()):
        return s
    return NORMALIZATIONS.get(how)(s, valid)


def choose(
    scores: Sequence[torch.Tensor],
    sizes: Sequence[torch.Tensor],
    forced: Sequence[torch.Tensor],
    need: int,
    *,
    budgets: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Choose the lowest-scored candidates, across one or more layers, to prune ``need`` weights.

    Candidates are ranked by score (ties broken by layer, then by position, so the result is
    deterministic); a prefix of that ranking is pruned, the one whose total size is closest to
    ``need`` (exact for unit-size candidates). ``budgets[l]`` caps the weights pruned in layer
    ``l`` (from ``min_density``): a layer's candidates beyond its budget are skipped.

    Args:
        scores: per layer, the candidates' scores (comparable across layers).
        sizes: per layer, the alive weights each candidate removes.
        forced: per layer, candidates already fully pruned (always chosen, size 0).
        need: how many more weights to prune.
        budgets: per layer, how many more weights it may lose (``None``: no limit).

    Returns:
        Per layer, a boolean tensor of chosen candidates.

    Raises:
        ConfigError: ``need`` cannot be reached within the budgets.
    """
    device = scores[0].device if scores else torch.device("cpu")
    chosen = [f.clone() for f in forced]
    if need <= 0 or not scores:
        return chosen
    single = len(scores) == 1 and not bool(forced[0].any())
    if single:  # one layer, nothing pruned yet: candidates index themselves
        s, z = scores[0], sizes[0].long()
        lay = torch.zeros(s.numel(), dtype=torch.long, device=device)
        pos = None
    else:
        flat_s, flat_z, flat_l, flat_i = [], [], [], []
        for layer, (sc, sz, f) in enumerate(zip(scores, sizes, forced)):
            idx = (~f).nonzero().reshape(-1)
            flat_s.append(sc[idx])
            flat_z.append(sz.long()[idx])
            flat_l.append(torch.full_like(idx, layer))
            flat_i.append(idx)
        s = torch.cat(flat_s).to(device)
        z = torch.cat(flat_z).to(device)
        lay = torch.cat(flat_l).to(device)
        pos = torch.cat(flat_i).to(device)
    if budgets is None and bool((z == 1).all()):
        # unit candidates (unstructured): the `need` lowest, ties by (layer, position), found with
        # a k-th value instead of a full sort (identical to the stable-sort prefix)
        if s.numel() < need:
            raise ConfigError(
                f"Only {s.numel()} more weights can be pruned, but {need} are needed; lower the sparsity."
            )
        kth = s.kthvalue(need).values
        below = s < kth
        ties = (s == kth).nonzero().reshape(-1)[: need - int(below.sum())]
        picked_mask = below
        picked_mask[ties] = True
        picked = picked_mask.nonzero().reshape(-1)
    else:
        # rank by score; the flat order is (layer, position), so a stable sort breaks ties by both
        order = s.argsort(stable=True)
        z_o, lay_o = z[order], lay[order]
        if budgets is not None:
            # running total per layer in global order; a candidate is allowed while within budget
            by_layer = lay_o.argsort(stable=True)
            cum = z_o[by_layer].cumsum(0)
            starts = torch.zeros(len(scores), dtype=torch.long, device=device)
            counts = torch.bincount(lay_o, minlength=len(scores))
            starts[1:] = counts.cumsum(0)[:-1]
            offset = torch.cat([torch.zeros(1, dtype=torch.long, device=device), cum])[starts]
            within = torch.empty_like(cum)
            within[by_layer] = cum - offset[lay_o[by_layer]]
            b = torch.tensor([int(x) for x in budgets], dtype=torch.long, device=device)
            allowed = within <= b[lay_o]
            order, z_o = order[allowed], z_o[allowed]
        cum = z_o.cumsum(0)
        available = int(cum[-1]) if cum.numel() else 0
        if available < need:
            raise ConfigError(
                f"Only {available} more weights can be pruned within the per-layer limits, but "
                f"{need} are needed; lower the sparsity or min_density."
            )
        k = int(torch.searchsorted(cum, torch.tensor(need, device=device)))  # first cum >= need
        count = k if k > 0 and (need - int(cum[k - 1])) < (int(cum[k]) - need) else k + 1
        picked = order[:count]
    if pos is None:
        chosen[0][picked] = True
        return chosen
    for layer in range(len(scores)):
        sel = pos[picked[lay[picked] == layer]] if len(scores) > 1 else pos[picked]
        chosen[layer][sel] = True
    return chosen


def per_row_keep(scores: torch.Tensor, alive: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask pruning each row of ``(rows, cols)`` to ``sparsity`` (Wanda's per-output scope).

    Already pruned entries stay pruned; a row already sparser than asked keeps its zeros.
    """
    k = round(sparsity * scores.shape[1])
    ninf = torch.tensor(float("-inf"), dtype=torch.float64, device=scores.device)
    s = torch.where(alive, scores.double(), ninf)
    ranks = s.argsort(dim=1, stable=True).argsort(dim=1)
    dead = (~alive).sum(1, keepdim=True)
    prune = ranks < torch.clamp(dead, min=k)
    return alive & ~prune
