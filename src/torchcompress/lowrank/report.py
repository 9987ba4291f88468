"""The per-layer report of a factorization: chosen ranks, energy kept, cost before and after.

:func:`~torchcompress.factorize` stores a :class:`LowRankReport` on the model;
:func:`lowrank_report` returns it (or, for a model without one, e.g. after :func:`torchcompress.load`,
a report rebuilt from the factorized layers it holds, without the energies). ``str(report)``
is the table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["LayerReport", "LowRankReport", "lowrank_report"]

_REPORT_ATTR = "_torchcompress_lowrank_report"


@dataclass
class LayerReport:
    """One targeted layer.

    Attributes:
        name: qualified module name.
        type: the dense layer's class name.
        shape: weight shape (``/gN`` for grouped convs).
        rank: the chosen rank (per group), ``None`` if it stayed dense.
        full_rank: ``min(out, in)`` of its matrix (per group).
        break_even: the largest rank that is still cheaper than dense.
        energy_kept: fraction of the (method's) spectrum energy kept (1.0 when dense; ``None`` if
            unknown). For the whitened method this is the fraction of output energy preserved.
        params_before: params of the dense layer (weight and bias).
        params_after: params after.
        macs_before: MACs per calibration batch (``None`` when no data was seen).
        macs_after: likewise after.
        factorized: whether it was replaced.
        reason: why it stayed dense (empty if factorized).
        note: what became of the layer's earlier compression (e.g. a pruning mask dropped: the
            factors are dense).
    """

    name: str
    type: str
    shape: str
    rank: int | None
    full_rank: int
    break_even: int
    energy_kept: float | None
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    factorized: bool = False
    reason: str = ""
    note: str = ""


@dataclass
class LowRankReport:
    """What a factorization did, layer by layer and in total.

    Attributes:
        rule: the rule, e.g. ``"params_ratio=0.5, svd"``.
        layers: one :class:`LayerReport` per targeted layer.
        budget: the asked budget for ``"auto"`` (fraction), else ``None``.
        budget_kind: ``"params"`` or ``"flops"`` for ``"auto"``.
        calib_batches: calibration batches used (0: none).
        seconds: ``{"calibration": ..., "decomposition": ...}`` wall time.
    """

    rule: str
    layers: list[LayerReport] = field(default_factory=list)
    budget: float | None = None
    budget_kind: str | None = None
    calib_batches: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def factorized(self) -> list[str]:
        """Names of the layers that were factorized."""
        return [la.name for la in self.layers if la.factorized]

    @property
    def params_before(self) -> int:
        """Params of the targeted layers before."""
        return sum(la.params_before for la in self.layers)

    @property
    def params_after(self) -> int:
        """Params of the targeted layers after."""
        return sum(la.params_after for la in self.layers)

    @property
    def params_ratio(self) -> float:
        """``params_after / params_before`` over the targeted layers."""
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def macs_ratio(self) -> float | None:
        """MACs after / before over the targeted layers (``None`` without calibration sizes)."""
        if any(la.macs_before is None for la in self.layers) or not self.layers:
            return None
        before = sum(la.macs_before or 0 for la in self.layers)
        after = sum(la.macs_after or 0 for la in self.layers)
        return after / before if before else 1.0

    @property
    def achieved(self) -> float | None:
        """For ``"auto"``: the achieved ratio of what the budget counts."""
        if self.budget_kind == "flops":
            return self.macs_ratio
        if self.budget_kind == "params":
            return self.params_ratio
        return None

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per layer (for tables, DataFrames, JSON)."""
        return [asdict(la) for la in self.layers]

    def to_dict(self) -> dict[str, Any]:
        """The whole report as plain data."""
        return {
            "rule": self.rule,
            "budget": self.budget,
            "budget_kind": self.budget_kind,
            "achieved": self.achieved,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_ratio": self.params_ratio,
            "macs_ratio": self.macs_ratio,
            "calib_batches": self.calib_batches,
            "seconds": dict(self.seconds),
            "layers": self.rows(),
        }

    def summary(self) -> str:
        """One line: layers factorized, params (and MACs) ratio, budget asked and achieved."""
        n = len(self.factorized)
        s = f"{n}/{len(self.layers)} layers factorized ({self.rule}); params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.3f}x)"
        if self.macs_ratio is not None:
            s += f", MACs {self.macs_ratio:.3f}x"
        if self.budget is not None and self.achieved is not None:
            s += f"; budget {self.budget:g}x {self.budget_kind}, achieved {self.achieved:.4f}x"
        return s

    def __repr__(self) -> str:
        return f"LowRankReport({self.summary()})"

    def __str__(self) -> str:
        head = ["layer", "shape", "rank", "break-even", "energy", "params", "MACs", "note"]
        body = []
        for la in self.layers:
            params = f"{la.params_before:,} -> {la.params_after:,}"
            macs = (
                f"{la.macs_after / la.macs_before:.2f}x"
                if la.macs_before and la.macs_after is not None
                else "-"
            )
            energy = "-" if la.energy_kept is None else f"{la.energy_kept:.4f}"
            rank = f"{la.rank}/{la.full_rank}" if la.rank is not None else f"dense/{la.full_rank}"
            note = "; ".join(filter(None, [la.reason, la.note]))
            body.append([la.name, la.shape, rank, str(la.break_even), energy, params, macs, note])
        widths = [
            max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)
        ]
        lines = [
            "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in body]
        return self.summary() + "\n" + "\n".join(lines)


def set_report(model: nn.Module, report: LowRankReport) -> None:
    """Attach ``report`` to ``model`` (kept through ``copy.deepcopy``)."""
    object.__setattr__(model, _REPORT_ATTR, report)


def lowrank_report(model: nn.Module) -> LowRankReport:
    """The report of the last :func:`~torchcompress.factorize` (or ``retruncate``) on ``model``.

    If the model carries none (it was loaded with :func:`torchcompress.load`, or factorized layers
    were built by hand), a report is rebuilt from the factorized layers it holds: ranks and params,
    with ``energy_kept`` and MACs unknown.

    Example:
        >>> import torch.nn as nn, torchcompress as tc
        >>> m = tc.factorize(nn.Sequential(nn.Linear(64, 64)), tc.LowRankConfig(rank=8))
        >>> tc.lowrank.lowrank_report(m).layers[0].rank
        8
    """
    from .modules import LowRankModule

    stored = getattr(model, _REPORT_ATTR, None)
    if isinstance(stored, LowRankReport):
        return stored
    rep = LowRankReport(rule="(rebuilt from the model's factorized layers)")
    for name, mod in model.named_modules():
        if isinstance(mod, LowRankModule):
            first, second = mod.factors()
            g, m, r = second.shape
            n = first.shape[-1]
            bias = mod.bias is not None
            from . import functional as F

            rep.layers.append(
                LayerReport(
                    name=name,
                    type=type(mod).__name__,
                    shape=f"{g * m}x{n}" + (f"/g{g}" if g > 1 else ""),
                    rank=r,
                    full_rank=min(m, n),
                    break_even=F.break_even_rank(m, n),
                    energy_kept=None,
                    params_before=F.dense_params(m, n, g, bias),
                    params_after=F.factorized_params(m, n, r, g, bias),
                    factorized=True,
                )
            )
    return rep
