"""Low-rank training: singular-value regularizers, proximal steps, and a train-then-truncate helper.

Training with a penalty on each layer's singular values concentrates its energy in a few of them, so
a later truncation (:func:`~torchcompress.factorize` with an energy rule, or
:func:`~torchcompress.lowrank.retruncate` of already factorized layers) costs little accuracy.

- :class:`SingularValueRegularizer`: ``callable(model) -> scalar``, the sum over the targeted layers
  of a registered penalty of their singular values (:data:`SV_PENALTIES`): ``"nuclear"``
  (``sum s``), ``"hoyer"`` (``sum s / ||s||_2``, scale-invariant; Hoyer 2004, used on singular values
  by Yang et al. 2020, "Learning Low-rank Deep Neural Networks via Singular Vector Orthogonality
  Regularization and Singular Value Sparsification"), ``"hoyer_square"`` (``(sum s)^2 / sum s^2``),
  ``"effective_rank"`` (``exp`` of the entropy of ``s / sum s``; Roy and Vetterli 2007) and
  ``"tail_energy"`` (the energy fraction beyond a target rank ratio ``keep``). Pass it as
  ``tc.finetune(..., regularizer=reg)`` or add ``reg(model)`` to your loss.
  Singular values come from ``torch.linalg.svdvals``, whose gradient ``U diag(g) V^T`` involves no
  ``1/(s_i^2 - s_j^2)`` terms, so it is stable even with repeated singular values. For factorized
  layers the spectrum of ``second @ first`` is taken from an ``r x r`` core (two QRs), never a dense
  matrix.
- :func:`proximal_step` / :class:`SVTCallback`: singular value thresholding
  (``W <- U max(s - lr*strength, 0) V^T``; Cai, Candes and Shen 2010), the proximal step of a
  nuclear-norm penalty, applied after each optimizer step.
- :func:`train_lowrank`: rounds of (train with a regularizer, then factorize / re-truncate).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, SelectionError, check_range
from ..layers import canonical_weight, layer_kind
from ..registry import Registry
from ..select import read_by_parent, select_modules
from . import functional as F
from .config import LowRankConfig
from .modules import LowRankModule, dense_geometry, factorizable

__all__ = [
    "SV_PENALTIES",
    "SVTCallback",
    "SingularValueRegularizer",
    "proximal_step",
    "singular_values",
    "train_lowrank",
]

log = logging.getLogger(__name__)

Patterns = str | Sequence[str] | None

#: name -> penalty(s: (groups, k) singular values, **options) -> scalar Tensor
SV_PENALTIES: Registry[Callable[..., Tensor]] = Registry("singular-value penalty")

_EPS = 1e-12


@SV_PENALTIES.register("nuclear")
def _nuclear(s: Tensor) -> Tensor:
    return s.sum()


@SV_PENALTIES.register("hoyer")
def _hoyer(s: Tensor) -> Tensor:
    return (s.sum(-1) / (s.norm(dim=-1) + _EPS)).sum()


@SV_PENALTIES.register("hoyer_square")
def _hoyer_square(s: Tensor) -> Tensor:
    return (s.sum(-1) ** 2 / ((s**2).sum(-1) + _EPS)).sum()


@SV_PENALTIES.register("effective_rank")
def _effective_rank(s: Tensor) -> Tensor:
    p = s / (s.sum(-1, keepdim=True) + _EPS)
    entropy = -(p * torch.log(p + _EPS)).sum(-1)
    return entropy.exp().sum()


@SV_PENALTIES.register("tail_energy")
def _tail_energy(s: Tensor, keep: float = 0.25) -> Tensor:
    k = max(1, math.ceil(keep * s.shape[-1]))
    e = s**2
    return (e[..., k:].sum(-1) / (e.sum(-1) + _EPS)).sum()


def singular_values(module: nn.Module) -> Tensor:
    """Differentiable singular values of a layer's matrix (per group), ``(groups, k)`` float32+.

    For dense Linear / Conv layers the matrix is the (reshaped) weight; for factorized layers the
    product ``second @ first``, computed from its ``r x r`` core.
    """
    if isinstance(module, LowRankModule):
        first, second = module.factors()
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        first, second = first.to(dtype), second.to(dtype)
        with torch.no_grad():  # orthonormal bases of the factors' spans (no gradient through QR,
            Qb = torch.linalg.qr(second)[
                0
            ]  # whose backward is singular for rank-deficient factors)
            Qa = torch.linalg.qr(first.transpose(-1, -2))[0]
        # s(second @ first) = s(Qb^T second first Qa): an r x r core; its gradient lies in the spans,
        # so treating the bases as constants gives the exact gradient
        core = (Qb.transpose(-1, -2) @ second) @ (first @ Qa)
        return torch.linalg.svdvals(core)
    mats = dense_geometry(module).matrices(canonical_weight(module))
    dtype = torch.float64 if mats.dtype == torch.float64 else torch.float32
    return torch.linalg.svdvals(mats.to(dtype))


def _targets(model: nn.Module, include: Patterns, exclude: Patterns) -> list[tuple[str, nn.Module]]:
    """Dense Linear/Conv layers and factorized layers (not the factors inside them)."""
    lowrank = [n for n, m in model.named_modules() if isinstance(m, LowRankModule)]
    mha = set(read_by_parent(model))

    def ok(name: str, mod: nn.Module) -> bool:
        if isinstance(mod, LowRankModule):
            return True
        if not factorizable(mod) or name in mha:
            return False
        return not any(name.startswith(p + ".") for p in lowrank)

    return select_modules(
        model, include, exclude, types=None, predicate=ok, family="low-rank regularization"
    )


class SingularValueRegularizer:
    """A penalty on the singular values of the targeted layers: ``strength * sum_layers pen(s)``.

    Args:
        penalty: a name in :data:`SV_PENALTIES` (``"nuclear"``, ``"hoyer"``, ``"hoyer_square"``,
            ``"effective_rank"``, ``"tail_energy"``).
        strength: the multiplier.
        include: glob patterns of layers (default: every Linear/Conv and factorized layer).
        exclude: glob patterns to leave out.
        normalize: divide by the number of targeted layers (so ``strength`` does not depend on depth).
        **options: penalty options (``keep=`` for ``"tail_energy"``).

    Each call computes the singular values of every targeted layer (one SVD per layer; an ``r x r``
    one for factorized layers), so on large convolutions it adds noticeably to a training step.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchcompress.lowrank import SingularValueRegularizer
        >>> model = nn.Sequential(nn.Linear(16, 16))
        >>> reg = SingularValueRegularizer("hoyer", strength=1e-3)
        >>> loss = reg(model)
        >>> loss.backward()
        >>> model[0].weight.grad.shape
        torch.Size([16, 16])
    """

    def __init__(
        self,
        penalty: str = "hoyer",
        strength: float = 1e-3,
        *,
        include: Patterns = None,
        exclude: Patterns = None,
        normalize: bool = True,
        **options: Any,
    ) -> None:
        self.fn = SV_PENALTIES.get(penalty)
        self.penalty = penalty
        try:
            inspect.signature(self.fn).bind(torch.ones(1, 1), **options)
        except TypeError:
            raise ConfigError(
                f"SingularValueRegularizer({penalty!r}) takes no option(s) {sorted(options)}."
            ) from None
        check_range("strength", strength, 0.0, owner="SingularValueRegularizer")
        if "keep" in options:
            check_range(
                "keep",
                options["keep"],
                0.0,
                1.0,
                low_inclusive=False,
                owner="SingularValueRegularizer",
            )
        self.strength = strength
        self.include = include
        self.exclude = exclude
        self.normalize = normalize
        self.options = options

    def __call__(self, model: nn.Module) -> Tensor:
        """The penalty of ``model`` (a differentiable scalar on the model's device)."""
        targets = _targets(model, self.include, self.exclude)
        if not targets:
            raise SelectionError(
                f"SingularValueRegularizer found no Linear/Conv or factorized layer in {type(model).__name__}."
            )
        total: Tensor | None = None
        for _, mod in targets:
            p = self.fn(singular_values(mod), **self.options)
            total = p if total is None else total + p
        if self.normalize:
            total = total / len(targets)  # type: ignore[operator]
        return self.strength * total  # type: ignore[operator,return-value]

    def __repr__(self) -> str:
        return f"SingularValueRegularizer({self.penalty!r}, strength={self.strength:g})"


@torch.no_grad()
def proximal_step(
    model: nn.Module, tau: float, *, include: Patterns = None, exclude: Patterns = None
) -> int:
    """Singular value thresholding of every targeted layer: ``s <- max(s - tau, 0)``.

    The proximal operator of ``tau * ||W||_*`` (Cai, Candes and Shen, 2010): after an optimizer step
    with learning rate ``lr`` on the data loss, ``proximal_step(model, lr * strength)`` completes a
    proximal-gradient step for the penalty ``strength * sum ||W||_*``. Factorized layers are
    thresholded through their product and re-split evenly (same rank; values cut to zero can then be
    dropped by :func:`~torchcompress.lowrank.retruncate`).

    Returns:
        The number of singular values set to zero (over all layers).

    Example:
        >>> import torch.nn as nn
        >>> from torchcompress.lowrank import proximal_step
        >>> model = nn.Sequential(nn.Linear(32, 32))
        >>> proximal_step(model, tau=1e3)   # a huge threshold zeroes everything
        32
    """
    check_range("tau", tau, 0.0, owner="proximal_step")
    zeroed = 0
    from .factorizing import _product_svd

    for _, mod in _targets(model, include, exclude):
        if isinstance(mod, LowRankModule):
            U, s, Vh = _product_svd(mod)
            s = (s - tau).clamp_min(0)
            zeroed += int((s == 0).sum())
            first, second = F.split_factors(U, s, Vh, mod.rank)
            mod.set_factors(first, second)
            continue
        g, kind = dense_geometry(mod), layer_kind(mod)
        w = mod.weight
        U, s, Vh = F.svd(g.matrices(canonical_weight(mod, w)))
        s = (s - tau).clamp_min(0)
        zeroed += int((s == 0).sum())
        new = g.from_matrices((U * s.unsqueeze(-2)) @ Vh)
        w.copy_(kind.from_canonical(mod, new).to(w.dtype))  # type: ignore[union-attr]
    return zeroed


class SVTCallback:
    """A training callback applying :func:`proximal_step` with ``tau = lr * strength`` after each step.

    It implements the hooks of ``tc.train.Callback`` (``on_step_end(state)`` reads the learning rate
    from ``state.optimizer``), so it plugs into ``tc.finetune(..., callbacks=[SVTCallback(1e-3)])``;
    in a hand-written loop call ``cb.step(model, lr)`` after ``optimizer.step()``.

    Args:
        strength: nuclear-norm strength (``tau = lr * strength``).
        every: apply every this many optimizer steps (``tau`` scaled accordingly).
        include: glob patterns of layers.
        exclude: glob patterns to leave out.

    Example:
        >>> import torch.nn as nn
        >>> from torchcompress.lowrank import SVTCallback
        >>> cb = SVTCallback(strength=1.0)
        >>> cb.step(nn.Sequential(nn.Linear(8, 8)), lr=1e3)
        8
    """

    def __init__(
        self, strength: float, *, every: int = 1, include: Patterns = None, exclude: Patterns = None
    ) -> None:
        check_range("strength", strength, 0.0, owner="SVTCallback")
        check_range("every", every, 1, owner="SVTCallback")
        self.strength = strength
        self.every = int(every)
        self.include = include
        self.exclude = exclude
        self.zeroed = 0

    def step(self, model: nn.Module, lr: float) -> int:
        """Threshold ``model`` once, for ``every`` steps at learning rate ``lr``."""
        self.zeroed = proximal_step(
            model, lr * self.strength * self.every, include=self.include, exclude=self.exclude
        )
        return self.zeroed

    # tc.train.Callback hooks --------------------------------------------------------------
    def on_train_begin(self, state: Any) -> None:
        """No-op."""

    def on_step_begin(self, state: Any) -> None:
        """No-op."""

    def on_after_backward(self, state: Any) -> None:
        """No-op."""

    def on_step_end(self, state: Any) -> None:
        """Threshold after the optimizer's step (every ``every`` steps)."""
        step = int(getattr(state, "step", 0))
        if step % self.every:
            return
        lr = float(state.optimizer.param_groups[0]["lr"])
        self.step(state.model, lr)

    def on_epoch_end(self, state: Any) -> None:
        """No-op."""

    def on_train_end(self, state: Any) -> None:
        """No-op."""


def _default_train_fn() -> Callable[..., Any]:
    from ..train import finetune

    return finetune


def train_lowrank(
    model: nn.Module,
    data: Any,
    config: LowRankConfig | dict[str, Any] | None = None,
    *,
    rounds: int = 1,
    penalty: str | None = "hoyer",
    strength: float = 1e-3,
    calib_data: Any = None,
    include: Patterns = None,
    exclude: Patterns = None,
    train_fn: Callable[..., Any] | None = None,
    progress: bool | None = None,
    **train_kwargs: Any,
) -> nn.Module:
    """Low-rank training: rounds of training with a singular-value penalty, then truncation.

    Each round trains ``model`` on ``data`` with a :class:`SingularValueRegularizer` (``penalty``,
    ``strength``; ``penalty=None`` trains without one), then cuts ranks with ``config``: targeted
    layers that are still dense are factorized (:func:`~torchcompress.factorize`, with
    ``calib_data`` for data-aware methods), already factorized ones are re-truncated
    (:func:`~torchcompress.lowrank.retruncate`). So a dense model becomes factorized after round 1,
    and later rounds fine-tune the factors and shrink the ranks the penalty made small. An energy
    rule (``LowRankConfig(rank="energy", value=0.95)``) adapts the ranks to what training
    concentrated.

    Args:
        model: the model, modified in place.
        data: training batches for ``train_fn``.
        config: the rank rule for each truncation.
        rounds: train-then-truncate rounds.
        penalty: a name in :data:`SV_PENALTIES`, or ``None``.
        strength: the penalty's multiplier.
        calib_data: calibration data for ``factorize`` (data-aware methods, FLOPs budgets).
        include: glob patterns of layers to regularize and factorize.
        exclude: glob patterns to leave alone.
        train_fn: ``train_fn(model, data, regularizer=..., **train_kwargs)``; default
            :func:`torchcompress.finetune`.
        progress: progress bars for the factorizations.
        **train_kwargs: passed to ``train_fn`` (``epochs=``, ``lr=``, ...).

    Returns:
        ``model``, factorized; :func:`~torchcompress.lowrank.lowrank_report` has the last ranks.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torchcompress.lowrank import train_lowrank, LowRankConfig
        >>> def loop(model, data, regularizer=None, steps=5):
        ...     opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ...     for _ in range(steps):
        ...         x, y = data
        ...         loss = nn.functional.mse_loss(model(x), y) + regularizer(model)
        ...         opt.zero_grad(); loss.backward(); opt.step()
        >>> model = nn.Sequential(nn.Linear(32, 32))
        >>> data = (torch.randn(64, 32), torch.randn(64, 32))
        >>> m = train_lowrank(model, data, LowRankConfig(rank=4), rounds=2, train_fn=loop)
        >>> type(m[0]).__name__, m[0].rank
        ('LowRankLinear', 4)
    """
    from .factorizing import _as_config, factorize, retruncate

    cfg = _as_config(config)
    check_range("rounds", rounds, 1, owner="train_lowrank")
    fn = train_fn or _default_train_fn()
    for i in range(rounds):
        kwargs = dict(train_kwargs)
        if penalty is not None:
            kwargs["regularizer"] = SingularValueRegularizer(
                penalty, strength, include=include, exclude=exclude
            )
        fn(model, data, **kwargs)
        before = [n for n, m in model.named_modules() if isinstance(m, LowRankModule)]
        try:
            factorize(model, cfg, calib_data, include=include, exclude=exclude, progress=progress)
        except SelectionError:
            log.debug("train_lowrank: no dense layer left to factorize in round %d", i)
        if before:
            retruncate(
                model, cfg.replace(method="svd"), calib_data, include=before, progress=progress
            )
    return model
