"""Second-order (Optimal Brain Surgeon) maths shared by GPTQ and SparseGPT.

Both methods compress one weight matrix ``W`` (rows: outputs, columns: inputs) so that the layer's
outputs on calibration inputs ``X`` change least, ``min ||W X^T - W' X^T||^2``, whose Hessian in each
row is ``H = 2 X^T X``. They fix one column at a time (quantize it: GPTQ, Frantar et al. 2023;
prune part of it: SparseGPT, Frantar & Alistarh 2023) and move the columns not yet fixed to absorb
the error, with the closed-form OBS update ``delta = -err / [H^-1]_jj * [H^-1]_j,j:`` read off the
upper Cholesky factor of ``H^-1``. Here, tensor in, tensor out:

- :func:`damped_hessian`: ``H = 2 E[x x^T]`` with *dead* inputs (never non-zero in the data) given
  a unit diagonal, plus ``damp * mean(diag H)`` on the diagonal;
- :func:`inverse_cholesky`: the upper Cholesky factor of ``H^-1``, or a
  :class:`~torchcompress.errors.NumericalError` that says to raise the damping or add calibration
  samples;
- :func:`obs_sweep`: the column-by-column sweep with lazy batch updates (blocks of ``block_size``
  columns: updates inside a block are applied at once, the rest of the matrix is updated once per
  block), calling a technique's ``compress(column)`` for what each column becomes.

Example:
    >>> import torch
    >>> from torchcompress.calibration.second_order import damped_hessian, inverse_cholesky, obs_sweep
    >>> x = torch.randn(256, 8, dtype=torch.float64) @ torch.randn(8, 8, dtype=torch.float64)
    >>> h, dead = damped_hessian(x.T @ x / 256, damp=0.01)
    >>> u = inverse_cholesky(h)
    >>> w = torch.randn(4, 8, dtype=torch.float64)
    >>> q, _ = obs_sweep(w, u, lambda col: col.weight.round())  # round each column, compensate
    >>> bool((q == q.round()).all())  # every column ended on the integer grid
    True
    >>> rtn = ((x @ (w - w.round()).T) ** 2).sum()
    >>> bool(((x @ (w - q).T) ** 2).sum() < rtn)  # and the outputs moved less than rounding alone
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError, NumericalError, ShapeError

__all__ = ["Column", "damped_hessian", "inverse_cholesky", "obs_sweep"]


def damped_hessian(xtx: Tensor, damp: float = 0.01, *, name: str = "") -> tuple[Tensor, Tensor]:
    """The damped layer Hessian ``2 E[x x^T] + damp * mean(diag) * I`` and the dead inputs.

    Args:
        xtx: ``E[x x^T]``, ``(n, n)`` (the ``xtx`` calibration statistic of one group).
        damp: the damping, a fraction of the mean diagonal (GPTQ's ``percdamp``, 0.01 by default).
        name: the layer's name, for messages.

    Returns:
        ``(H, dead)``: ``H`` in float64; ``dead`` is a bool ``(n,)`` of inputs that were zero on every
        calibration row (their diagonal is set to 1 so ``H`` stays invertible; the weights reading
        them can be anything, GPTQ sets them to zero).

    Raises:
        ConfigError: ``damp`` is negative.
        ShapeError: ``xtx`` is not square.
    """
    if isinstance(damp, bool) or not isinstance(damp, int | float) or damp < 0:
        raise ConfigError(
            f"damp must be a number >= 0 (a fraction of the mean diagonal), got {damp!r}."
        )
    if xtx.dim() != 2 or xtx.shape[0] != xtx.shape[1]:
        raise ShapeError(f"{name or 'xtx'}: E[x x^T] must be square, got {tuple(xtx.shape)}.")
    h = 2 * xtx.detach().to(torch.float64)
    diag = torch.diagonal(h)
    dead = diag == 0
    if bool(dead.any()):
        h = h.clone()
        idx = dead.nonzero().flatten()
        h[idx, idx] = 1.0
        diag = torch.diagonal(h)
    live = diag[~dead]
    mean = float(live.mean()) if live.numel() else 1.0
    h = h + torch.eye(h.shape[0], dtype=h.dtype, device=h.device) * (damp * mean)
    return h, dead


def inverse_cholesky(h: Tensor, *, name: str = "", damp: float | None = None) -> Tensor:
    """The upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), in ``H``'s dtype.

    Row ``j`` of ``U`` divided by ``U[j, j]`` is the OBS update of the columns after ``j`` once the
    columns before ``j`` are fixed (what GPTQ and SparseGPT apply column by column).

    Args:
        h: a symmetric positive definite ``(n, n)`` matrix (see :func:`damped_hessian`).
        name: the layer's name, for messages.
        damp: the damping used, for messages.

    Raises:
        NumericalError: ``H`` (or its inverse) is not positive definite: too few calibration rows
            for the number of inputs, or too little damping.
    """

    def fail(step: str) -> NumericalError:
        used = "" if damp is None else f" (damp={damp:g})"
        return NumericalError(
            f"{name or 'A layer'}: the Cholesky factorisation of {step} failed: the Hessian "
            f"2 X^T X of its {h.shape[0]} inputs is not positive definite{used}. Raise the damping "
            "or add calibration samples."
        )

    if not bool(torch.isfinite(h).all()):
        raise NumericalError(
            f"{name or 'A layer'}: its Hessian 2 X^T X holds NaN or Inf; check the model and the "
            "calibration data (e.g. an fp16 overflow)."
        )
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise fail("the damped Hessian")
    hinv = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0 or not bool(torch.isfinite(upper).all()):
        raise fail("the inverse Hessian")
    return upper


@dataclass
class Column:
    """What :func:`obs_sweep` shows ``compress`` about the column it fixes next.

    Attributes:
        index: the column's index ``j`` in the matrix.
        offset: its position in the current block.
        block: the current block's columns as they stand (``(rows, width)``; column ``offset`` and
            those after it already include every update so far; do not modify).
        hinv_diag: the diagonal of the block's part of ``U`` (``[U]_jj``; SparseGPT's saliency
            ``w^2 / [U]_jj^2``).
        rest: the columns after the block (updated lazily: they lack this block's updates so far).
    """

    index: int
    offset: int
    block: Tensor
    hinv_diag: Tensor
    rest: Tensor

    @property
    def weight(self) -> Tensor:
        """The column's current values, ``(rows,)``."""
        return self.block[:, self.offset]

    def ahead(self, width: int) -> Tensor:
        """The current values of columns ``j .. j + width - 1`` (fewer at the end of the matrix)."""
        inside = self.block[:, self.offset : self.offset + width]
        if inside.shape[1] >= width or self.rest.shape[1] == 0:
            return inside
        return torch.cat([inside, self.rest[:, : width - inside.shape[1]]], dim=1)


def obs_sweep(
    weight: Tensor,
    hinv_upper: Tensor,
    compress: Callable[[Column], Tensor],
    *,
    block_size: int = 128,
) -> tuple[Tensor, Tensor]:
    """Fix the columns of ``weight`` one by one, moving those not yet fixed to absorb the error.

    For each column ``j`` (in order), ``q = compress(column)`` is what the column becomes (its
    quantized values, or its values with some entries pruned to zero), ``err = (w_j - q) / U_jj`` and
    the columns after ``j`` receive ``-err U_j,j:`` (the OBS update, exact for the quadratic loss
    ``||(W - W') X^T||^2`` with ``H = 2 X^T X``). Updates are applied lazily: within a block of
    ``block_size`` columns at once, and to the rest of the matrix once per block (Frantar et al. 2023).

    Args:
        weight: ``(rows, n)``; not modified.
        hinv_upper: ``(n, n)``, the upper Cholesky factor of the damped inverse Hessian
            (:func:`inverse_cholesky`).
        compress: ``compress(column) -> (rows,)`` values the column takes.
        block_size: columns per lazy-update block (128 in the papers).

    Returns:
        ``(W', loss)``: the compressed matrix (in ``weight``'s dtype, column ``j`` equal to what
        ``compress`` returned for it) and, per row, the loss ``sum_j (w_j - q_j)^2 / (2 U_jj^2)`` the
        sweep incurred.

    Raises:
        ConfigError: ``block_size`` is not a positive int.
        ShapeError: the shapes do not match.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive int, got {block_size!r}.")
    rows, n = weight.shape
    if tuple(hinv_upper.shape) != (n, n):
        raise ShapeError(
            f"The inverse Hessian factor is {tuple(hinv_upper.shape)}, the weight has {n} columns."
        )
    dtype = hinv_upper.dtype
    w = weight.detach().to(dtype).clone()
    out = torch.zeros_like(w)
    loss = torch.zeros(rows, dtype=dtype, device=w.device)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        block = w[:, i1:i2].clone()
        errs = torch.zeros_like(block)
        u1 = hinv_upper[i1:i2, i1:i2]
        diag = torch.diagonal(u1)
        rest = w[:, i2:]
        for i in range(i2 - i1):
            col = block[:, i].clone()
            q = compress(Column(i1 + i, i, block, diag, rest)).to(dtype)
            if q.shape != col.shape:
                raise ShapeError(
                    f"compress returned {tuple(q.shape)} for column {i1 + i}; expected {tuple(col.shape)}."
                )
            out[:, i1 + i] = q
            d = diag[i]
            err = (col - q) / d
            loss += (col - q).pow(2) / (2 * d * d)
            block[:, i:] -= err.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            errs[:, i] = err
        if i2 < n:
            w[:, i2:] -= errs @ hinv_upper[i1:i2, i2:]
    return out.to(weight.dtype), loss
