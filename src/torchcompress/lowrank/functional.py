"""Pure tensor maths of low-rank factorization: tensor in, tensor out, no modules, no model surgery.

Conventions: a weight matrix ``W`` is ``m x n`` (outputs x inputs; a convolution's kernel reshaped to
``out x in*k*k``, one matrix per group), so a layer computes ``y = W x``. A rank-``r`` factorization
is ``W ~ second @ first`` with ``first`` (``r x n``) applied to the input first and ``second``
(``m x r``) after it; the singular values are split evenly between them (``sqrt(s)`` each), which
keeps both factors equally scaled for training and for quantization.

Costs count what the factorized layer really holds and executes: ``r*(m+n)`` weights (per group)
against ``m*n``, and the same ratio of MACs at every output position. The break-even rank is the
largest ``r`` with ``r*(m+n) < m*n``: at or above it factorizing saves nothing.

Example:
    >>> import torch
    >>> from torchcompress.lowrank import functional as F
    >>> W = torch.randn(64, 32)
    >>> first, second = F.truncated_svd(W, 8)
    >>> first.shape, second.shape
    (torch.Size([8, 32]), torch.Size([64, 8]))
    >>> s = torch.linalg.svdvals(W)
    >>> err = torch.linalg.matrix_norm(W - second @ first) ** 2
    >>> bool(torch.isclose(err, (s[8:] ** 2).sum(), rtol=1e-3))  # Eckart-Young
    True
    >>> F.break_even_rank(64, 64)
    31
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import NumericalError
from ..layers import Geometry, geometry

__all__ = [
    "DiagonalScaling",
    "Identity",
    "Whitening",
    "asvd_scaling",
    "break_even",
    "break_even_rank",
    "conv_patches",
    "dense_params",
    "energy_kept",
    "factorized_params",
    "from_weight_matrix",
    "full_rank",
    "macs_per_position",
    "params_at",
    "rank_for_energy",
    "rank_for_ratio",
    "shape_str",
    "singular_value_threshold",
    "split_factors",
    "svd",
    "svdvals",
    "truncated_svd",
    "weight_matrix",
    "whitening",
]

log = logging.getLogger(__name__)


# --- weight <-> matrices ---------------------------------------------------------------------


def weight_matrix(weight: Tensor, groups: int = 1) -> Tensor:
    """The weight as ``groups`` matrices: ``(groups, out/groups, in/groups*prod(kernel))``.

    A Linear weight (``out x in``) gives ``(1, out, in)``; a Conv weight
    (``out x in/groups x k...``) is reshaped per group, columns ordered like ``F.unfold``'s patches.
    """
    out = weight.shape[0]
    if out % groups:
        raise ValueError(f"out={out} is not divisible by groups={groups}")
    return weight.reshape(groups, out // groups, -1)


def from_weight_matrix(matrices: Tensor, weight_shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`weight_matrix`: ``(groups, m, n)`` back to ``weight_shape``."""
    return matrices.reshape(weight_shape)


# --- SVD ---------------------------------------------------------------------------------------


def _svd_dtype(t: Tensor, at_least: torch.dtype = torch.float32) -> torch.dtype:
    if t.dtype == torch.float64 or at_least == torch.float64:
        return torch.float64
    return torch.float32


#: matrices with at least this many entries are decomposed through their Gram matrix
GRAM_MIN_ENTRIES = 1 << 16


def _gram_svd(work: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD from the eigendecomposition of the smaller Gram matrix, in float64.

    Much faster than a direct SVD on CPU for large matrices (one ``m*m*n`` product and an
    ``min(m,n)``-sized ``eigh``). Singular values below ``1e-10 * s_max`` get zero singular vectors
    (they are noise at this precision and contribute nothing to a truncation).
    """
    M = work.double()
    m, n = M.shape[-2:]
    wide = m <= n
    G = M @ M.transpose(-1, -2) if wide else M.transpose(-1, -2) @ M
    evals, evecs = torch.linalg.eigh(G)
    evals = evals.flip(-1).clamp_min(0)
    evecs = evecs.flip(-1)
    s = evals.sqrt()
    tiny = s <= s[..., :1] * 1e-10
    inv = torch.where(tiny, torch.zeros_like(s), 1.0 / torch.where(tiny, torch.ones_like(s), s))
    if wide:
        U = evecs
        Vh = (U.transpose(-1, -2) @ M) * inv.unsqueeze(-1)
    else:
        Vh = evecs.transpose(-1, -2)
        U = (M @ evecs) * inv.unsqueeze(-2)
    s = torch.where(tiny, torch.zeros_like(s), s)
    return U, s, Vh


def svd(
    matrix: Tensor, *, dtype: torch.dtype | None = None, driver: str = "auto"
) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``matrix = U diag(s) Vh`` (batched over leading dimensions).

    Args:
        matrix: ``(..., m, n)``.
        dtype: working precision (default: float32, float64 for float64 input).
        driver: ``"gram"`` (eigendecomposition of the smaller Gram matrix in float64, the default
            for matrices of at least :data:`GRAM_MIN_ENTRIES` entries: 10-50x faster than LAPACK's
            SVD on CPU for weight-sized matrices, and accurate for every singular value above
            ``1e-8 * s_max``), ``"lapack"`` (``torch.linalg.svd``), or ``"auto"``.

    Raises:
        NumericalError: the matrix holds NaN or Inf.
    """
    work = matrix.to(dtype or _svd_dtype(matrix))
    if not torch.isfinite(work).all():
        raise NumericalError("The matrix to factorize holds NaN or Inf values.")
    if driver == "auto":
        driver = "gram" if work.shape[-1] * work.shape[-2] >= GRAM_MIN_ENTRIES else "lapack"
    if driver == "gram":
        U, s, Vh = _gram_svd(work)
        return U.to(work.dtype), s.to(work.dtype), Vh.to(work.dtype)
    try:
        return torch.linalg.svd(work, full_matrices=False)
    except RuntimeError:  # rare LAPACK non-convergence: fall back to the Gram route
        U, s, Vh = _gram_svd(work)
        return U.to(work.dtype), s.to(work.dtype), Vh.to(work.dtype)


def svdvals(matrix: Tensor, *, driver: str = "auto") -> Tensor:
    """Singular values (descending, batched) with the same drivers as :func:`svd` (no gradient)."""
    work = matrix.detach()
    if not torch.isfinite(work).all():
        raise NumericalError("The matrix to factorize holds NaN or Inf values.")
    if driver == "auto":
        driver = "gram" if work.shape[-1] * work.shape[-2] >= GRAM_MIN_ENTRIES else "lapack"
    if driver == "gram":
        M = work.double()
        G = M @ M.transpose(-1, -2) if M.shape[-2] <= M.shape[-1] else M.transpose(-1, -2) @ M
        return torch.linalg.eigvalsh(G).flip(-1).clamp_min(0).sqrt().to(_svd_dtype(work))
    return torch.linalg.svdvals(work.to(_svd_dtype(work)))


def split_factors(u: Tensor, s: Tensor, vh: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(first, second)`` of rank ``rank`` from an SVD, singular values split evenly.

    ``first = sqrt(s_r) vh_r`` (``r x n``), ``second = u_r sqrt(s_r)`` (``m x r``); batched over
    leading dimensions.
    """
    root = s[..., :rank].clamp_min(0).sqrt()
    first = root.unsqueeze(-1) * vh[..., :rank, :]
    second = u[..., :, :rank] * root.unsqueeze(-2)
    return first, second


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The best rank-``rank`` approximation ``second @ first`` of ``matrix`` (Eckart-Young).

    The error is ``||matrix - second @ first||_F^2 = sum_{i > rank} s_i^2``, the smallest of any
    rank-``rank`` matrix (Eckart and Young, 1936). Returns factors in ``matrix``'s dtype.

    Args:
        matrix: ``m x n`` (or batched ``... x m x n``).
        rank: ``1 <= rank <= min(m, n)``.
    """
    m, n = matrix.shape[-2:]
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"rank={rank} must be in [1, min(m, n)={min(m, n)}] for a {m}x{n} matrix")
    U, s, Vh = svd(matrix)
    first, second = split_factors(U, s, Vh, rank)
    return first.to(matrix.dtype), second.to(matrix.dtype)


def energy_kept(singular_values: Tensor, rank: int) -> float:
    """Fraction of ``sum(s^2)`` in the first ``rank`` singular values (summed over groups).

    ``singular_values`` is ``(k,)`` or ``(groups, k)``, each row sorted descending. An all-zero
    spectrum keeps everything (1.0).
    """
    s2 = singular_values.double() ** 2
    total = float(s2.sum())
    if total <= 0.0:
        return 1.0
    return float(s2[..., :rank].sum()) / total


def rank_for_energy(singular_values: Tensor, energy: float) -> int:
    """The smallest rank whose :func:`energy_kept` reaches ``energy`` (in (0, 1]).

    For grouped spectra ``(groups, k)`` the rank is common to all groups and the energy pooled.
    """
    s2 = (singular_values.double() ** 2).reshape(-1, singular_values.shape[-1]).sum(0)
    total = float(s2.sum())
    k = int(s2.numel())
    if total <= 0.0:
        return 1
    cum = torch.cumsum(s2, 0) / total
    # tolerance: energy=1.0 must be reachable despite rounding in the cumulative sum
    idx = int(torch.searchsorted(cum, torch.tensor(energy - 1e-12, dtype=cum.dtype)))
    return min(idx + 1, k)


def singular_value_threshold(matrix: Tensor, tau: float) -> Tensor:
    """The proximal operator of ``tau * ||.||_*`` (singular value soft-thresholding).

    ``U diag(max(s - tau, 0)) Vh`` (Cai, Candes and Shen, 2010, "A singular value thresholding
    algorithm for matrix completion"): one proximal-gradient step for a nuclear-norm penalty, applied
    after the optimizer's step with ``tau = lr * strength``. Batched; returns ``matrix``'s dtype.
    """
    U, s, Vh = svd(matrix)
    s = (s - tau).clamp_min(0)
    return ((U * s.unsqueeze(-2)) @ Vh).to(matrix.dtype)


# --- costs --------------------------------------------------------------------------------------


def dense_params(m: int, n: int, groups: int = 1, bias: bool = False) -> int:
    """Parameters of the dense layer: ``groups*m*n`` (+ ``groups*m`` bias)."""
    return groups * m * n + (groups * m if bias else 0)


def factorized_params(m: int, n: int, rank: int, groups: int = 1, bias: bool = False) -> int:
    """Parameters of the factorized layer: ``groups*rank*(m+n)`` (+ ``groups*m`` bias).

    ``m``, ``n`` are per group; MACs per output position follow the same formula without the bias.
    """
    return groups * rank * (m + n) + (groups * m if bias else 0)


def break_even_rank(m: int, n: int) -> int:
    """The largest rank at which factorizing an ``m x n`` matrix is strictly cheaper (may be 0).

    ``r*(m+n) < m*n``; e.g. 31 for 64x64 (half rank saves nothing on a square layer).
    """
    return max(0, math.ceil(m * n / (m + n)) - 1)


def full_rank(geometry: Geometry) -> int:
    """``min(m, n)``: the largest rank a factorization of the layer's matrices can have."""
    return min(geometry.m, geometry.n)


def break_even(geometry: Geometry) -> int:
    """The largest rank strictly cheaper than the dense layer (0: never), see :func:`break_even_rank`."""
    return break_even_rank(geometry.m, geometry.n)


def params_at(geometry: Geometry, rank: int | None) -> int:
    """Parameters (with the bias) of the layer factorized at ``rank`` (``None``: dense)."""
    g = geometry
    if rank is None:
        return dense_params(g.m, g.n, g.groups, g.bias)
    return factorized_params(g.m, g.n, rank, g.groups, g.bias)


def macs_per_position(geometry: Geometry, rank: int | None) -> int:
    """MACs per output position (token or pixel) at ``rank`` (``None``: dense, ``out * n``)."""
    g = geometry
    if rank is None:
        return g.macs(1)
    return g.groups * rank * (g.m + g.n)


def shape_str(geometry: Geometry) -> str:
    """``"out x in"`` or the conv kernel shape, e.g. ``"64x32x3x3"`` (``/g4`` for groups)."""
    s = "x".join(str(d) for d in geometry.weight_shape)
    return s + (f"/g{geometry.groups}" if geometry.groups > 1 else "")


def rank_for_ratio(m: int, n: int, ratio: float, groups: int = 1, bias: bool = False) -> int:
    """The largest rank whose factorized params are at most ``ratio`` x the dense params (may be 0).

    With ``bias=False`` this is also the rank for a MACs (FLOPs) ratio.
    """
    budget = ratio * dense_params(m, n, groups, bias) - (groups * m if bias else 0)
    per_rank = groups * (m + n)
    # tolerate float round-off at exact multiples
    return max(0, math.floor(budget / per_rank + 1e-9))


# --- activation statistics -> transforms -------------------------------------------------------


@dataclass
class Identity:
    """No transform (plain SVD): ``W -> W``."""

    kind: str = "identity"

    def right(self, matrix: Tensor) -> Tensor:
        """``matrix @ S`` (here ``matrix``)."""
        return matrix

    def unright(self, matrix: Tensor) -> Tensor:
        """``matrix @ S^-1`` (here ``matrix``)."""
        return matrix


@dataclass
class DiagonalScaling:
    """ASVD's scaling ``S = diag(scale)``: factorize ``W S``, then undo with ``S^-1``."""

    scale: Tensor  # (n,) or (groups, n)
    kind: str = "diagonal"

    def right(self, matrix: Tensor) -> Tensor:
        """``matrix @ diag(scale)``."""
        return matrix * self.scale.to(matrix.dtype).unsqueeze(-2)

    def unright(self, matrix: Tensor) -> Tensor:
        """``matrix @ diag(1/scale)``."""
        return matrix / self.scale.to(matrix.dtype).unsqueeze(-2)


@dataclass
class Whitening:
    """SVD-LLM's whitening ``S`` with ``S S^T = E[x x^T]`` (+ damping).

    ``kind`` is ``"cholesky"`` (``S`` lower triangular) or ``"eigh"`` (``S = Q diag(sqrt(l))``, the
    fallback). Batched over groups: ``factor`` is ``(groups, n, n)``.
    """

    factor: Tensor
    kind: str = "cholesky"
    damping: float = 0.0
    eigvals: Tensor | None = None  # eigh only: clamped eigenvalues (groups, n)
    eigvecs: Tensor | None = None

    def right(self, matrix: Tensor) -> Tensor:
        """``matrix @ S``."""
        return matrix @ self.factor.to(matrix.dtype)

    def unright(self, matrix: Tensor) -> Tensor:
        """``matrix @ S^-1`` (a triangular solve for Cholesky)."""
        if self.kind == "cholesky":
            L = self.factor.to(matrix.dtype)
            return torch.linalg.solve_triangular(L, matrix, upper=False, left=False)
        if self.eigvals is None or self.eigvecs is None:
            raise RuntimeError("an eigh Whitening needs its eigenvalues and eigenvectors")
        inv_root = self.eigvals.to(matrix.dtype).rsqrt()
        return (matrix * inv_root.unsqueeze(-2)) @ self.eigvecs.to(matrix.dtype).transpose(-1, -2)


Transform = Identity | DiagonalScaling | Whitening


def asvd_scaling(abs_mean: Tensor, alpha: float = 0.5, floor: float = 1e-4) -> DiagonalScaling:
    """ASVD's input scaling ``S_ii = mean|x_i| ** alpha`` (Yuan et al., 2023).

    Features that never fire are floored at ``floor * max(S)`` so that ``S`` stays invertible.

    Raises:
        NumericalError: the statistics hold NaN/Inf.
    """
    if not torch.isfinite(abs_mean).all():
        raise NumericalError("The activation statistics hold NaN or Inf values.")
    scale = abs_mean.double().clamp_min(0) ** alpha
    top = scale.amax(dim=-1, keepdim=True)
    top = torch.where(top > 0, top, torch.ones_like(top))
    return DiagonalScaling(scale=torch.maximum(scale, floor * top))


def whitening(second_moment: Tensor, damping: float = 1e-3, tries: int = 4) -> Whitening:
    """A whitening factor ``S`` of ``H = E[x x^T]``: ``S S^T = H + damping * mean(diag H) * I``.

    Computed in float64. The Cholesky factor is tried with damping ``damping``, then 10x, 100x,
    1000x larger; if all fail (an indefinite ``H`` from round-off), an eigendecomposition with
    eigenvalues clamped at the damping floor is used. An all-zero ``H`` (inputs that are always zero)
    gives the identity, i.e. plain SVD.

    Args:
        second_moment: ``(n, n)`` or ``(groups, n, n)``, symmetric positive semi-definite.
        damping: relative damping (SVD-LLM issues #6/#24: an undamped factor fails on big models).
        tries: Cholesky attempts before falling back to ``eigh``.

    Raises:
        NumericalError: ``H`` holds NaN or Inf.
    """
    H = second_moment.double()
    if H.dim() == 2:
        H = H.unsqueeze(0)
    if not torch.isfinite(H).all():
        raise NumericalError("The input second moment holds NaN or Inf values.")
    H = 0.5 * (H + H.transpose(-1, -2))
    n = H.shape[-1]
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    scale = torch.diagonal(H, dim1=-2, dim2=-1).mean(-1)  # (groups,)
    dead = scale <= 0
    scale = torch.where(dead, torch.ones_like(scale), scale)
    H = torch.where(dead[:, None, None], eye.expand_as(H), H)
    lam = max(damping, 1e-12)
    for _ in range(tries):
        Hd = H + (lam * scale)[:, None, None] * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info.abs().sum()) == 0 and torch.isfinite(L).all():
            return Whitening(factor=L, kind="cholesky", damping=lam)
        lam *= 10.0
    log.info("whitening: Cholesky failed up to damping %.1e; using eigh", lam / 10)
    evals, evecs = torch.linalg.eigh(H)
    floor = (max(damping, 1e-12) * scale)[:, None]
    evals = torch.maximum(evals, floor) + floor
    factor = evecs * evals.sqrt().unsqueeze(-2)
    return Whitening(factor=factor, kind="eigh", damping=damping, eigvals=evals, eigvecs=evecs)


# --- convolution patches ----------------------------------------------------------------------


def conv_patches(x: Tensor, conv: nn.Module) -> Tensor:
    """The input patches a convolution multiplies by its reshaped weight.

    Returns ``(N*L, in*prod(kernel))`` rows (``L`` output positions), columns ordered like
    ``conv.weight.reshape(out, -1)``, honouring stride, padding (ints, ``"same"``, ``"valid"``),
    ``padding_mode`` and dilation, so ``rows @ W.T`` equals the convolution (without bias, for
    ``groups=1``; for grouped convs, column block ``j`` belongs to group ``j``). The rows come from
    :meth:`torchcompress.layers.LayerKind.input_rows`.
    """
    geo = geometry(conv)
    chunks = [
        rows.transpose(0, 1).reshape(rows.shape[1], -1)
        for rows in geo.layer_kind.input_rows(geo, x)
    ]
    return torch.cat(chunks, 0)
