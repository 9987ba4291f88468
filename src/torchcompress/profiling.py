"""What a model costs: parameters, MACs, FLOPs and stored bytes, per layer and in total.

:func:`profile` runs the model once on example inputs and counts, for every layer:

- **params**: the parameters it holds (``nn.Parameter`` elements; tied tensors counted once);
- **nonzero params**: how many of them are non-zero;
- **MACs**: the multiply-accumulates of the matmul-like work its kernels execute (dense work);
- **effective MACs**: the MACs a sparsity-aware kernel would need (only non-zero weights, only the
  unmasked part of causal attention). A dense kernel still runs all the MACs: the table says so;
- **FLOPs**: ``2 x MACs`` (one multiply and one add per MAC), unless a registered cost says otherwise;
- **bytes**: the bytes of its ``state_dict`` tensors as stored (parameters and persistent buffers,
  each in its own dtype; tied tensors once), i.e. what :func:`torchcompress.save` writes.

What is counted as MACs (exactly, for any shape, batch and device):

- ``nn.Linear`` / ``F.linear`` (any leading dimensions), ``nn.Bilinear`` / ``F.bilinear``;
- ``nn.Conv1d/2d/3d`` / ``F.conv*d`` and the transposed convolutions (groups, stride, dilation,
  padding, padding modes): ``output elements x in_channels/groups x kernel elements``, which
  includes the products with zero padding, as every dense kernel computes them;
- ``matmul`` / ``@`` / ``mm`` / ``bmm`` / ``mv`` / ``dot`` / ``inner`` / ``outer`` / ``addmm`` /
  ``baddbmm`` / ``addbmm`` / ``addmv`` / ``addr`` / ``tensordot`` / ``linalg.vecdot`` /
  ``linalg.multi_dot`` (in the optimal order torch uses) / ``_int_mm``;
- ``einsum`` with any equation: the product of the sizes of every index of each pairwise
  contraction, contracting left to right as torch does (indices that occur in one operand only are
  summed first and cost no MAC; a single-operand einsum costs none). With ``opt_einsum`` installed
  and enabled, torch may contract three or more operands in a cheaper order than counted here;
- ``F.scaled_dot_product_attention``: ``QKᵀ`` and ``AV`` (any batch/head shapes, grouped-query
  attention included). A causal mask is counted as the full matrix in MACs (dense kernels compute
  it); the effective MACs count only the unmasked part;
- ``nn.MultiheadAttention`` and ``F.multi_head_attention_forward``: the in- and out-projections and
  both attention products, with ``kdim``/``vdim``, ``batch_first``, ``add_bias_kv`` and
  ``add_zero_attn``. Counted the same on the fused fast path (eval + no_grad) and the slow path
  (while profiling, torch takes the slow path, which does the same arithmetic);
- ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: the input and recurrent matmuls of every gate, layer and
  direction (and the LSTM projection).

What is **not** counted in MACs or FLOPs: element-wise work (bias additions, activations, residual
additions, normalisation, softmax, scaling and masking in attention, pooling, dropout), embedding
lookups, and anything inside TorchScript modules. Peers differ exactly in these (some count BN at 2
or 4 operations per element); we leave them out so that MACs mean matmul work and compare across
tools. A layer holding weights that did work the profiler cannot count is flagged in its note.

Functional calls made outside any layer (``torch.matmul`` in a custom attention, ``F.linear``,
Hugging Face BERT's eager attention) are caught with a :class:`torch.overrides.TorchFunctionMode`
and attributed to the innermost module whose forward was running; work inside a layer with a
registered cost (:mod:`torchcompress.costs`) is counted once, by that cost. Compression families
register the cost of their own modules there; :func:`register_op_cost` adds a formula for another
functional op.

Example:
    >>> import torch
    >>> from torch import nn
    >>> import torchcompress as tc
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
    ...                       nn.Linear(8 * 32 * 32, 10))
    >>> p = tc.profile(model, torch.randn(1, 3, 32, 32))
    >>> p.total_macs == 8 * 27 * 32 * 32 + 8 * 32 * 32 * 10
    True
    >>> p["0"].macs, p.total_params
    (221184, 82154)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .batches import Batch, as_batch
from .costs import LayerCost, lookup_cost, register_cost
from .errors import ConfigError, ShapeError, TorchCompressError
from .select import matches, select_modules

__all__ = [
    "LayerProfile",
    "OpCost",
    "Profile",
    "describe_inputs",
    "einsum_macs",
    "example_batch",
    "format_bytes",
    "format_count",
    "profile",
    "register_op_cost",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------


def format_count(n: int | float) -> str:
    """A count in human units: ``950``, ``40.55M``, ``1.20G``."""
    n = float(n)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def format_bytes(n: int | float) -> str:
    """Bytes in binary units: ``512 B``, ``1.04 MiB``."""
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------------------------
# Functional op formulas
# --------------------------------------------------------------------------------------------


@dataclass
class OpCost:
    """The cost of one functional call: dense MACs, effective MACs and an optional note."""

    macs: int
    effective_macs: int | None = None
    note: str = ""


#: ``density(t)``: the fraction of non-zero elements of a model weight ``t`` (1.0 for activations).
Density = Callable[[Any], float]
OpCostFn = Callable[[tuple[Any, ...], dict[str, Any], Any, Density], OpCost]

_OPS: dict[Any, OpCostFn] = {}


def register_op_cost(*funcs: Any) -> Callable[[OpCostFn], OpCostFn]:
    """Decorator registering a MAC formula for functional ops seen by :func:`profile`.

    The formula is called as ``fn(args, kwargs, output, density)`` after the op ran, with the op's
    arguments and result; ``density(tensor)`` is the fraction of non-zero elements when the tensor
    is a parameter or buffer of the profiled model (1.0 otherwise), for effective MACs. It returns an
    :class:`OpCost`. Register every spelling the op is called by (``torch.mm`` and ``Tensor.mm``).

    Example:
        >>> import torch
        >>> from torchcompress.profiling import OpCost, register_op_cost
        >>> @register_op_cost(torch.cdist)
        ... def _cdist(args, kwargs, out, density):
        ...     return OpCost(macs=out.numel() * args[0].shape[-1])
    """
    if not funcs:
        raise TypeError("register_op_cost takes one or more functions.")

    def decorator(fn: OpCostFn) -> OpCostFn:
        for f in funcs:
            _OPS[f] = fn
        return fn

    return decorator


def _arg(
    args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any = None
) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _numel(t: Any) -> int:
    return int(t.numel()) if isinstance(t, torch.Tensor) else 0


def _scaled(macs: int, density: float) -> int:
    return macs if density >= 1.0 else round(macs * density)


def _mm_like(a_index: int, a_name: str, b_index: int, b_name: str) -> OpCostFn:
    """``out.numel() * a.shape[-1]``: exact for matmul/mm/bmm/mv/dot with broadcasting."""

    def fn(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
        a = _arg(args, kwargs, a_index, a_name)
        b = _arg(args, kwargs, b_index, b_name)
        if not isinstance(out, torch.Tensor) or not isinstance(a, torch.Tensor):
            return OpCost(0)
        k = a.shape[-1] if a.dim() else 1
        macs = out.numel() * k
        d = min(density(a), density(b))
        return OpCost(macs, _scaled(macs, d))

    return fn


_T = torch.Tensor
register_op_cost(torch.matmul, _T.matmul, _T.__matmul__, torch.linalg.matmul)(
    _mm_like(0, "input", 1, "other")
)
register_op_cost(torch.mm, _T.mm, torch.bmm, _T.bmm, torch.mv, _T.mv, torch.dot, _T.dot)(
    _mm_like(0, "input", 1, "mat2")
)
register_op_cost(torch.inner, _T.inner)(_mm_like(0, "input", 1, "other"))
register_op_cost(torch._int_mm)(_mm_like(0, "input", 1, "mat2"))
register_op_cost(torch.addmm, _T.addmm, _T.addmm_, torch.baddbmm, _T.baddbmm, _T.baddbmm_)(
    _mm_like(1, "mat1", 2, "mat2")
)


@register_op_cost(_T.__rmatmul__)
def _rmatmul(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    other = _arg(args, kwargs, 1, "other")
    if not isinstance(out, torch.Tensor) or not isinstance(other, torch.Tensor):
        return OpCost(0)
    macs = out.numel() * (other.shape[-1] if other.dim() else 1)
    return OpCost(macs, _scaled(macs, min(density(args[0]), density(other))))


@register_op_cost(torch.addbmm, _T.addbmm, _T.addbmm_)
def _addbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    b1, b2 = _arg(args, kwargs, 1, "batch1"), _arg(args, kwargs, 2, "batch2")
    macs = _numel(b1) * int(b2.shape[-1])
    return OpCost(macs, _scaled(macs, min(density(b1), density(b2))))


@register_op_cost(torch.addmv, _T.addmv, _T.addmv_)
def _addmv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    mat, vec = _arg(args, kwargs, 1, "mat"), _arg(args, kwargs, 2, "vec")
    macs = _numel(mat)
    return OpCost(macs, _scaled(macs, min(density(mat), density(vec))))


@register_op_cost(torch.outer, _T.outer, torch.ger, _T.ger)
def _outer(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    return OpCost(_numel(out))


@register_op_cost(torch.addr, _T.addr, _T.addr_)
def _addr(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    return OpCost(_numel(out))


@register_op_cost(torch.linalg.vecdot)
def _vecdot(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    x, y = args[0], args[1]
    dim = _arg(args, kwargs, 2, "dim", -1)
    size = max(int(x.shape[dim]), int(y.shape[dim]))
    return OpCost(_numel(out) * size)


@register_op_cost(torch.tensordot)
def _tensordot(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    a = args[0]
    dims = _arg(args, kwargs, 2, "dims", 2)
    if isinstance(dims, torch.Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        contracted = math.prod(a.shape[a.dim() - dims :]) if dims else 1
    else:
        dims_a = dims[0]
        dims_a = [dims_a] if isinstance(dims_a, int) else list(dims_a)
        contracted = math.prod(int(a.shape[d]) for d in dims_a)
    macs = _numel(out) * int(contracted)
    return OpCost(macs, _scaled(macs, min(density(a), density(args[1]))))


def _chain_macs(shapes: list[tuple[int, int]]) -> int:
    """Minimal MACs of a matrix chain (the order torch.linalg.multi_dot picks)."""
    n = len(shapes)
    if n < 2:
        return 0
    dims = [shapes[0][0]] + [s[1] for s in shapes]
    cost = [[0] * n for _ in range(n)]
    for length in range(1, n):
        for i in range(n - length):
            j = i + length
            cost[i][j] = min(
                cost[i][k] + cost[k + 1][j] + dims[i] * dims[k + 1] * dims[j + 1]
                for k in range(i, j)
            )
    return cost[0][n - 1]


@register_op_cost(torch.linalg.multi_dot, torch.chain_matmul)
def _multi_dot(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    tensors = args[0] if len(args) == 1 and isinstance(args[0], list | tuple) else args
    tensors = list(tensors)
    shapes: list[tuple[int, int]] = []
    for i, t in enumerate(tensors):
        if t.dim() == 1:
            shapes.append((1, int(t.shape[0])) if i == 0 else (int(t.shape[0]), 1))
        else:
            shapes.append((int(t.shape[0]), int(t.shape[1])))
    return OpCost(_chain_macs(shapes))


@register_op_cost(torch._C._nn.linear)
def _linear_fn(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
    n_out = int(w.shape[0]) if w.dim() == 2 else 1
    macs = _numel(x) * n_out
    return OpCost(macs, _scaled(macs, density(w)))


@register_op_cost(torch.bilinear)
def _bilinear_fn(
    args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density
) -> OpCost:
    w = _arg(args, kwargs, 2, "weight")
    _, in1, in2 = (int(s) for s in w.shape)
    # y_o = sum_i x1_i (sum_j W_oij x2_j): in1*in2 + in1 MACs per output element
    macs = _numel(out) * in1 * (in2 + 1)
    return OpCost(macs, _scaled(macs, density(w)))


def _conv_fn(transposed: bool) -> OpCostFn:
    def fn(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
        x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        # weight: (out, in/groups, *k) for conv, (in, out/groups, *k) for the transposed conv
        per = math.prod(int(s) for s in w.shape[1:])
        macs = _numel(x) * per if transposed else _numel(out) * per
        return OpCost(macs, _scaled(macs, density(w)))

    return fn


register_op_cost(torch.conv1d, torch.conv2d, torch.conv3d)(_conv_fn(False))
register_op_cost(torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)(
    _conv_fn(True)
)


@register_op_cost(torch.convolution, torch._convolution)
def _convolution(
    args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density
) -> OpCost:
    transposed = bool(_arg(args, kwargs, 6, "transposed", False))
    return _conv_fn(transposed)(args, kwargs, out, density)


def _causal_kept(q_len: int, k_len: int) -> int:
    """Entries of a ``(q_len, k_len)`` top-left causal mask that are kept (``tril``)."""
    return sum(min(i + 1, k_len) for i in range(q_len))


@register_op_cost(torch._C._nn.scaled_dot_product_attention)
def _sdpa(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    q = _arg(args, kwargs, 0, "query")
    k = _arg(args, kwargs, 1, "key")
    v = _arg(args, kwargs, 2, "value")
    causal = bool(_arg(args, kwargs, 5, "is_causal", False))
    q_len, e = int(q.shape[-2]), int(q.shape[-1])
    s_len, ev = int(k.shape[-2]), int(v.shape[-1])
    # batch and head dims as broadcast in the output (grouped-query heads are repeated per query head)
    rows = _numel(out) // max(int(out.shape[-1]), 1) if isinstance(out, torch.Tensor) else 0
    batch = rows // max(q_len, 1)
    macs = batch * q_len * s_len * (e + ev)
    if causal:
        eff = batch * _causal_kept(q_len, s_len) * (e + ev)
        return OpCost(macs, eff, "causal: MACs count the full matrix, effective the unmasked part")
    return OpCost(macs, macs)


def _mha_macs(
    q_len: int,
    s_len: int,
    batch: int,
    embed: int,
    kdim: int | None,
    vdim: int | None,
    out_dim: int,
    extra_keys: int,
) -> int:
    """MACs of multi-head attention: projections (``None``: not projected) and both products."""
    macs = batch * q_len * embed * embed  # q projection
    if kdim is not None:
        macs += batch * s_len * kdim * embed
    if vdim is not None:
        macs += batch * s_len * vdim * embed
    keys = s_len + extra_keys
    macs += 2 * batch * q_len * keys * embed  # QKᵀ and AV over all heads
    macs += batch * q_len * embed * out_dim  # out projection
    return macs


@register_op_cost(torch.nn.functional.multi_head_attention_forward)
def _mha_fn(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    names = (
        "query",
        "key",
        "value",
        "embed_dim_to_check",
        "num_heads",
        "in_proj_weight",
        "in_proj_bias",
        "bias_k",
        "bias_v",
        "add_zero_attn",
        "dropout_p",
        "out_proj_weight",
        "out_proj_bias",
        "training",
        "key_padding_mask",
        "need_weights",
        "attn_mask",
        "use_separate_proj_weight",
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
        "static_k",
        "static_v",
    )
    a = {n: _arg(args, kwargs, i, n) for i, n in enumerate(names)}
    q, k = a["query"], a["key"]
    batched = q.dim() == 3
    q_len, batch = int(q.shape[0]), int(q.shape[1]) if batched else 1
    s_len = int(k.shape[0])
    embed = int(q.shape[-1])
    if a["use_separate_proj_weight"]:
        kdim, vdim = int(a["k_proj_weight"].shape[1]), int(a["v_proj_weight"].shape[1])
    else:
        kdim = vdim = embed
    static_k, static_v = a["static_k"], a["static_v"]
    extra = int(a["bias_k"] is not None) + int(bool(a["add_zero_attn"]))
    if static_k is not None:
        s_len, extra = int(static_k.shape[1]), int(bool(a["add_zero_attn"]))
    macs = _mha_macs(
        q_len,
        s_len,
        batch,
        embed,
        None if static_k is not None else kdim,
        None if static_v is not None else vdim,
        int(a["out_proj_weight"].shape[0]),
        extra,
    )
    return OpCost(macs, macs)


def _einsum_parse(args: tuple[Any, ...]) -> tuple[list[list[str]], list[str], list[torch.Tensor]]:
    """Operand index lists, output indices and operands of an einsum call (both call forms)."""
    if isinstance(args[0], str):
        equation = args[0].replace(" ", "")
        ops = list(args[1:])
        if len(ops) == 1 and isinstance(ops[0], list | tuple):
            ops = list(ops[0])
        lhs, arrow, rhs = equation.partition("->")
        terms = lhs.split(",")
        explicit: str | None = rhs if arrow else None
    else:  # sublist form: op0, [0, 1], op1, [1, 2], [0, 2]
        items = list(args)
        ops, subs = items[0::2][: len(items) // 2], items[1::2][: len(items) // 2]
        out_sub = items[-1] if len(items) % 2 else None

        def letters(sub: Sequence[Any]) -> str:
            return "".join("..." if s is Ellipsis else chr(ord("A") + int(s)) for s in sub)

        terms = [letters(s) for s in subs]
        explicit = letters(out_sub) if out_sub is not None else None

    def expand(term: str, ndim: int) -> list[str]:
        if "..." not in term:
            return list(term)
        head, _, tail = term.partition("...")
        n_ell = ndim - len(head) - len(tail)
        return [*head, *(f"...{i}" for i in range(n_ell)), *tail]

    operands: list[list[str]] = []
    n_ell_max = 0
    for term, op in zip(terms, ops):
        labels = expand(term, op.dim())
        operands.append(labels)
        n_ell_max = max(n_ell_max, sum(1 for lab in labels if lab.startswith("...")))
    # ellipsis dims are right-aligned across operands
    aligned: list[list[str]] = []
    for labels in operands:
        n_ell = sum(1 for lab in labels if lab.startswith("..."))
        shift = n_ell_max - n_ell
        aligned.append(
            [f"...{int(lab[3:]) + shift}" if lab.startswith("...") else lab for lab in labels]
        )
    ell = [f"...{i}" for i in range(n_ell_max)]
    if explicit is None:
        counts: dict[str, int] = {}
        for labels in aligned:
            for lab in labels:
                if not lab.startswith("..."):
                    counts[lab] = counts.get(lab, 0) + 1
        output = ell + sorted(lab for lab, c in counts.items() if c == 1)
    else:
        head, sep, tail = explicit.partition("...")
        output = [*head, *ell, *tail] if sep else list(explicit)
    return aligned, output, ops


def einsum_macs(*args: Any) -> int:
    """MACs of ``torch.einsum(*args)`` as torch contracts it (pairwise, left to right).

    Before each pairwise contraction, indices that occur in only one of the two operands and are not
    needed later are summed out (no MAC); the contraction then costs the product of the sizes of the
    remaining indices of both operands. A single operand costs 0 MACs.

    Example:
        >>> import torch
        >>> q, k = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 12, 8)
        >>> einsum_macs("bhqd,bhkd->bhqk", q, k) == 2 * 4 * 10 * 12 * 8
        True
    """
    operands, output, ops = _einsum_parse(args)
    if len(operands) < 2:
        return 0
    sizes: dict[str, int] = {}
    for labels, op in zip(operands, ops):
        for lab, s in zip(labels, op.shape):
            sizes[lab] = max(sizes.get(lab, 1), int(s))
    macs = 0
    current = set(operands[0])
    for i in range(1, len(operands)):
        nxt = set(operands[i])
        later = set(output).union(*(set(o) for o in operands[i + 1 :]))
        # summed out before the product: in one operand only and not needed later
        a = {lab for lab in current if lab in nxt or lab in later}
        b = {lab for lab in nxt if lab in current or lab in later}
        union = a | b
        macs += math.prod(sizes[lab] for lab in union)
        current = {lab for lab in union if lab in later}
    return macs


@register_op_cost(torch.einsum)
def _einsum(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, density: Density) -> OpCost:
    macs = einsum_macs(*args)
    return OpCost(macs, macs)


# --------------------------------------------------------------------------------------------
# Registered costs of the built-in layers
# --------------------------------------------------------------------------------------------


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any], name: str = "input") -> Any:
    if args:
        return args[0]
    if name in kwargs:
        return kwargs[name]
    return next(iter(kwargs.values()), None)


def _weight_density(w: torch.Tensor | None) -> tuple[int, int]:
    if w is None:
        return 1, 1
    return int(torch.count_nonzero(w.detach())), int(w.numel())


def _sparse_cost(macs: int, weight: torch.Tensor | None) -> LayerCost:
    """Dense MACs, and effective MACs scaled by the weight's fraction of non-zeros.

    Every weight element takes part in the same number of MACs (``macs / numel(weight)``), so the
    scaling is exact.
    """
    nnz, numel = _weight_density(weight)
    if nnz == numel or not numel:
        return LayerCost(macs=macs, effective_macs=macs)
    if macs % numel == 0:
        return LayerCost(macs=macs, effective_macs=macs // numel * nnz)
    return LayerCost(macs=macs, effective_macs=round(macs * nnz / numel))


@register_cost(nn.Linear)
def _linear_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    x = _first_input(args, kwargs)
    macs = _numel(x) * int(module.out_features)
    return _sparse_cost(macs, module.weight)


@register_cost(nn.Bilinear)
def _bilinear_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    macs = _numel(out) * int(module.in1_features) * (int(module.in2_features) + 1)
    return _sparse_cost(macs, module.weight)


@register_cost(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    per = int(module.in_channels) // int(module.groups) * math.prod(module.kernel_size)
    return _sparse_cost(_numel(out) * per, module.weight)


@register_cost(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_t_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    x = _first_input(args, kwargs)
    per = int(module.out_channels) // int(module.groups) * math.prod(module.kernel_size)
    return _sparse_cost(_numel(x) * per, module.weight)


@register_cost(nn.Embedding, nn.EmbeddingBag)
def _embedding_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    return LayerCost(macs=0, note="lookup (no MACs)")


@register_cost(nn.MultiheadAttention)
def _mha_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    names = ("query", "key", "value")
    q, k, _ = (_arg(args, kwargs, i, n) for i, n in enumerate(names))
    batched = q.dim() == 3
    if not batched:
        q_len, batch, s_len = int(q.shape[0]), 1, int(k.shape[0])
    elif module.batch_first:
        batch, q_len, s_len = int(q.shape[0]), int(q.shape[1]), int(k.shape[1])
    else:
        q_len, batch, s_len = int(q.shape[0]), int(q.shape[1]), int(k.shape[0])
    extra = int(module.bias_k is not None) + int(bool(module.add_zero_attn))
    macs = _mha_macs(
        q_len,
        s_len,
        batch,
        int(module.embed_dim),
        int(module.kdim),
        int(module.vdim),
        int(module.out_proj.weight.shape[0]),
        extra,
    )
    # effective: projections scaled by their weights' density
    weights = [
        w
        for w in (
            module.in_proj_weight,
            module.q_proj_weight,
            module.k_proj_weight,
            module.v_proj_weight,
            module.out_proj.weight,
        )
        if w is not None
    ]
    nnz = sum(int(torch.count_nonzero(w.detach())) for w in weights)
    numel = sum(int(w.numel()) for w in weights)
    eff = macs
    if numel and nnz != numel:
        attn = 2 * batch * q_len * (s_len + extra) * int(module.embed_dim)
        eff = attn + round((macs - attn) * nnz / numel)
    return LayerCost(macs=macs, effective_macs=eff, note="projections + QKᵀ + AV")


@register_cost(nn.RNN, nn.LSTM, nn.GRU)
def _rnn_cost(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
) -> LayerCost:
    x = _first_input(args, kwargs)
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = int(x.data.shape[0])
    elif x.dim() == 2:  # unbatched (T, input)
        steps = int(x.shape[0])
    else:
        steps = int(x.shape[0]) * int(x.shape[1])
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    hidden = int(module.hidden_size)
    proj = int(getattr(module, "proj_size", 0) or 0)
    rec = proj or hidden
    dirs = 2 if module.bidirectional else 1
    per_step = 0
    for layer in range(int(module.num_layers)):
        inp = int(module.input_size) if layer == 0 else rec * dirs
        per_layer = gates * hidden * (inp + rec) + (hidden * proj if proj else 0)
        per_step += dirs * per_layer
    return LayerCost(macs=steps * per_step, note="all gates, layers and directions")


# --------------------------------------------------------------------------------------------
# Example inputs
# --------------------------------------------------------------------------------------------


def _floating_dtype(model: nn.Module) -> torch.dtype | None:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _single_device(model: nn.Module) -> torch.device | None:
    devices = {t.device for t in [*model.parameters(), *model.buffers()]}
    return devices.pop() if len(devices) == 1 else None


def _convert(obj: Any, device: torch.device | None, dtype: torch.dtype | None) -> Any:
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point() and obj.dtype != dtype:
            obj = obj.to(dtype)
        return obj.to(device) if device is not None else obj
    if isinstance(obj, tuple):
        return tuple(_convert(o, device, dtype) for o in obj)
    if isinstance(obj, list):
        return [_convert(o, device, dtype) for o in obj]
    if isinstance(obj, Mapping):
        return {k: _convert(v, device, dtype) for k, v in obj.items()}
    return obj


def example_batch(model: nn.Module, example_inputs: Any) -> Batch:
    """Normalise ``example_inputs`` to a :class:`~torchcompress.batches.Batch` on the model's device.

    Accepted: a tensor (the single positional input), a tuple of positional inputs, a dict of keyword
    inputs (Hugging Face style), a :class:`~torchcompress.batches.Batch`, or a list such as a
    DataLoader batch ``[inputs, targets]`` (read as by :func:`~torchcompress.batches.as_batch`).
    Floating-point tensors are cast to the model's floating dtype when the model has exactly one,
    and every tensor is moved to the model's device when all its tensors are on one device.

    Raises:
        DataError: ``example_inputs`` is of a kind that cannot be fed to a model.
    """
    if isinstance(example_inputs, tuple) and not isinstance(example_inputs, Batch):
        batch = Batch(args=tuple(example_inputs))
    else:
        batch = as_batch(example_inputs)
    device, dtype = _single_device(model), _floating_dtype(model)
    return Batch(
        args=_convert(batch.args, device, dtype),
        kwargs=_convert(batch.kwargs, device, dtype),
        target=batch.target,
    )


def describe_inputs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """Shapes of call inputs, for messages: ``(1, 3, 32, 32), mask=(1, 8)``."""

    def one(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return str(tuple(v.shape))
        if isinstance(v, tuple | list) and v and all(isinstance(t, torch.Tensor) for t in v):
            return "[" + ", ".join(str(tuple(t.shape)) for t in v) + "]"
        return type(v).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return ", ".join(parts) if parts else "no inputs"


# --------------------------------------------------------------------------------------------
# The counting session
# --------------------------------------------------------------------------------------------


@dataclass
class _Acc:
    macs: int = 0
    effective_macs: int = 0
    flops: int = 0
    calls: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: _Acc) -> None:
        self.macs += other.macs
        self.effective_macs += other.effective_macs
        self.flops += other.flops
        self.calls += other.calls
        for n in other.notes:
            if n not in self.notes:
                self.notes.append(n)


def _merge(into: dict[str, _Acc], src: dict[str, _Acc]) -> None:
    for name, acc in src.items():
        if name in into:
            into[name].add(acc)
        else:
            into[name] = acc


@dataclass
class _Frame:
    name: str
    module: nn.Module
    cost_fn: Any
    inputs: str
    acc: dict[str, _Acc] = field(default_factory=dict)


class _CostFunctionError(Exception):
    def __init__(self, name: str, module: nn.Module, error: BaseException) -> None:
        super().__init__(str(error))
        self.name, self.module, self.error = name, module, error


class _Session(TorchFunctionMode):
    """Module hooks + a TorchFunctionMode counting one forward (see :func:`profile`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stack: list[_Frame] = []
        self.final: dict[str, _Acc] = {}
        self.covering: set[str] = set()
        self.overrides: dict[str, LayerCost] = {}
        self.busy = False
        self._model_tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
        self._density: dict[int, float] = {}
        self.handles: list[Any] = []

    # -- hooks ------------------------------------------------------------------------------
    def install(self) -> None:
        for name, module in self.model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue
            self.handles.append(
                module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True)
            )
            self.handles.append(
                module.register_forward_hook(self._post_hook(name), with_kwargs=True)
            )

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _pre_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            self.busy = True
            try:
                self.stack.append(
                    _Frame(name, module, lookup_cost(module), describe_inputs(args, kwargs))
                )
            finally:
                self.busy = False

        return hook

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
        ) -> None:
            self.busy = True
            try:
                self._pop(name, module, args, kwargs, out)
            finally:
                self.busy = False

        return hook

    def _parent_acc(self) -> dict[str, _Acc]:
        return self.stack[-1].acc if self.stack else self.final

    def _pop(
        self, name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> None:
        # frames left by a forward that raised and was caught by the model's own code
        while self.stack and self.stack[-1].module is not module:
            stale = self.stack.pop()
            _merge(self._parent_acc(), stale.acc)
        if not self.stack:
            return
        frame = self.stack.pop()
        own = _Acc(calls=1)
        if frame.cost_fn is not None:
            try:
                cost = frame.cost_fn(module, args, kwargs, out)
            except Exception as e:
                raise _CostFunctionError(name, module, e) from e
            if not isinstance(cost, LayerCost):
                raise _CostFunctionError(
                    name, module, TypeError(f"the cost function returned {type(cost).__name__}")
                )
            if cost.counts_children:
                frame.acc = {}
                self.covering.add(name)
            else:
                frame.acc.pop(name, None)  # its own functional work is in its cost
            own.macs = int(cost.macs)
            own.effective_macs = int(
                cost.effective_macs if cost.effective_macs is not None else cost.macs
            )
            own.flops = int(cost.flops if cost.flops is not None else 2 * cost.macs)
            if cost.note:
                own.notes.append(cost.note)
            self.overrides.setdefault(name, cost)
        _merge(frame.acc, {name: own})
        _merge(self._parent_acc(), frame.acc)

    # -- functional ops ---------------------------------------------------------------------
    def density(self, t: Any) -> float:
        if not isinstance(t, torch.Tensor) or id(t) not in self._model_tensors:
            return 1.0
        d = self._density.get(id(t))
        if d is None:
            n = t.numel()
            d = float(torch.count_nonzero(t.detach())) / n if n else 1.0
            self._density[id(t)] = d
        return d

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.busy:
            return out
        try:
            formula = _OPS.get(func)
        except TypeError:  # unhashable callable
            formula = None
        if formula is None:
            return out
        self.busy = True
        try:
            try:
                cost = formula(args, kwargs, out, self.density)
            except Exception as e:  # a shape the formula does not know: say so, do not crash
                log.debug("could not count %s: %s", getattr(func, "__name__", func), e)
                cost = OpCost(0, 0, f"could not count {getattr(func, '__name__', func)}")
            name = self.stack[-1].name if self.stack else ""
            macs = int(cost.macs)
            eff = int(cost.effective_macs if cost.effective_macs is not None else macs)
            acc = _Acc(macs=macs, effective_macs=eff, flops=2 * macs)
            if cost.note:
                acc.notes.append(cost.note)
            _merge(self._parent_acc(), {name: acc})
        finally:
            self.busy = False
        return out


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

_FIELDS = ("params", "nonzero_params", "macs", "effective_macs", "flops", "bytes")


@dataclass(frozen=True)
class LayerProfile:
    """One row of a :class:`Profile`: a layer (or, with ``depth``, a block of layers).

    Attributes:
        name: qualified module name (``""`` is the model itself).
        type: the module's class name.
        params: parameters held.
        nonzero_params: non-zero parameters.
        macs: multiply-accumulates executed on the example inputs (dense kernels).
        effective_macs: MACs a sparsity-aware kernel would need.
        flops: floating-point operations (2 per MAC unless a registered cost says otherwise).
        bytes: bytes of its stored tensors (state_dict), tied tensors once.
        calls: how many times its forward ran.
        note: remarks (sparsity, no cost formula, not called, a family's note).
    """

    name: str
    type: str
    params: int = 0
    nonzero_params: int = 0
    macs: int = 0
    effective_macs: int = 0
    flops: int = 0
    bytes: int = 0
    calls: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict of exact integers and strings."""
        return {
            "name": self.name,
            "type": self.type,
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "macs": self.macs,
            "effective_macs": self.effective_macs,
            "flops": self.flops,
            "bytes": self.bytes,
            "calls": self.calls,
            "note": self.note,
        }


class Profile:
    """The result of :func:`profile`: per-layer rows and whole-model totals.

    ``str(profile)`` is a readable table in human units; :meth:`to_dict` has exact integers;
    :meth:`to_markdown` a Markdown table; :meth:`by_type` a summary per layer type. Rows are indexed
    by name (``profile["layer1.0.conv1"]``) and iterate in model order. The ``total_*`` properties
    are always those of the whole model, whatever ``include``/``exclude``/``depth`` selected.
    """

    def __init__(
        self,
        rows: Sequence[LayerProfile],
        totals: Mapping[str, int],
        *,
        model: str,
        inputs: str,
        leaf_rows: Sequence[LayerProfile] | None = None,
        module_types: Mapping[str, str] | None = None,
    ) -> None:
        self.rows: tuple[LayerProfile, ...] = tuple(rows)
        self.totals: dict[str, int] = dict(totals)
        self.model = model
        self.inputs = inputs
        self._leaf_rows = tuple(leaf_rows if leaf_rows is not None else rows)
        self._module_types = dict(module_types or {r.name: r.type for r in self._leaf_rows})
        self._by_name = {r.name: r for r in self.rows}

    def at_depth(self, depth: int | None) -> Profile:
        """The same profile with rows summed into blocks at ``depth`` of the module tree.

        ``0`` gives one row for the whole model, ``1`` one per child of the model, ``None`` every
        layer.
        """
        _check_depth(depth)
        rows = (
            self._leaf_rows
            if depth is None
            else _aggregate(self._leaf_rows, depth, self._module_types)
        )
        return Profile(
            rows,
            self.totals,
            model=self.model,
            inputs=self.inputs,
            leaf_rows=self._leaf_rows,
            module_types=self._module_types,
        )

    # -- totals -----------------------------------------------------------------------------
    @property
    def total_params(self) -> int:
        """Parameters of the whole model (tied tensors once)."""
        return self.totals["params"]

    @property
    def total_nonzero_params(self) -> int:
        """Non-zero parameters of the whole model."""
        return self.totals["nonzero_params"]

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates of one forward on the example inputs (dense kernels)."""
        return self.totals["macs"]

    @property
    def total_effective_macs(self) -> int:
        """MACs a sparsity-aware kernel would need."""
        return self.totals["effective_macs"]

    @property
    def total_flops(self) -> int:
        """Floating-point operations (2 per MAC unless a registered cost says otherwise)."""
        return self.totals["flops"]

    @property
    def total_bytes(self) -> int:
        """Bytes of the model's state_dict tensors as stored (tied tensors once)."""
        return self.totals["bytes"]

    # -- access -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerProfile:
        try:
            return self._by_name[name]
        except KeyError:
            from .errors import SelectionError, did_you_mean

            raise SelectionError(
                f"The profile has no row {name!r}.{did_you_mean(name, self._by_name)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[LayerProfile]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def by_type(self) -> dict[str, dict[str, int]]:
        """Totals per layer type (``{"Conv2d": {"count": 19, "params": ..., "macs": ...}}``).

        Summarises the finest rows (each layer, not the ``depth`` blocks) that ``include`` and
        ``exclude`` selected, sorted by MACs.
        """
        out: dict[str, dict[str, int]] = {}
        for r in self._leaf_rows:
            d = out.setdefault(r.type, {"count": 0, **{f: 0 for f in _FIELDS}})
            d["count"] += 1
            for f in _FIELDS:
                d[f] += getattr(r, f)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["macs"]))

    def to_dict(self) -> dict[str, Any]:
        """``{"model", "inputs", "total": {...}, "layers": [...]}`` with exact integers."""
        return {
            "model": self.model,
            "inputs": self.inputs,
            "total": dict(self.totals),
            "layers": [r.to_dict() for r in self.rows],
        }

    # -- rendering --------------------------------------------------------------------------
    def _columns(self) -> list[tuple[str, str]]:
        # sparsity columns only where they say something: some layer's work could shrink
        sparse = any(r.effective_macs != r.macs for r in self._leaf_rows)
        cols = [("name", "name"), ("type", "type"), ("params", "params")]
        if sparse:
            cols.append(("nonzero", "nonzero_params"))
        cols.append(("MACs", "macs"))
        if sparse:
            cols.append(("eff. MACs", "effective_macs"))
        cols += [("FLOPs", "flops"), ("bytes", "bytes")]
        if any(r.calls > 1 for r in self.rows):
            cols.append(("calls", "calls"))
        cols.append(("note", "note"))
        return cols

    def _cells(self, human: bool) -> tuple[list[str], list[list[str]], list[str]]:
        cols = self._columns()

        def fmt(attr: str, v: Any) -> str:
            if attr in ("name", "type", "note"):
                return str(v)
            if attr == "calls":
                return str(v)
            if not human:
                return f"{int(v):,}"
            return format_bytes(v) if attr == "bytes" else format_count(v)

        body = []
        for r in self.rows:
            cells = []
            for _, attr in cols:
                v = getattr(r, attr)
                if attr == "name" and v == "":
                    v = f"({r.type})"
                cells.append(fmt(attr, v))
            body.append(cells)
        total = []
        for _, attr in cols:
            if attr == "name":
                total.append("total")
            elif attr in self.totals:
                total.append(fmt(attr, self.totals[attr]))
            else:
                total.append("")
        return [c for c, _ in cols], body, total

    def __str__(self) -> str:
        return self.table()

    def table(self, depth: int | None = None) -> str:
        """The readable table (``str(profile)``), optionally with rows at ``depth`` (see
        :meth:`at_depth`)."""
        if depth is not None:
            return self.at_depth(depth).table()
        head, body, total = self._cells(human=True)
        widths = [max(len(x) for x in col) for col in zip(head, *body, total)]
        numeric = [h not in ("name", "type", "note") for h in head]

        def line(cells: list[str]) -> str:
            parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
            return "  ".join(parts).rstrip()

        rule = "-" * len(line(head))
        out = [f"{self.model} on inputs {self.inputs}", line(head), rule]
        out += [line(b) for b in body]
        out += [rule, line(total)]
        return "\n".join(out)

    def __repr__(self) -> str:
        return (
            f"Profile({self.model}: {format_count(self.total_params)} params, "
            f"{format_count(self.total_macs)} MACs, {format_bytes(self.total_bytes)}, "
            f"{len(self.rows)} rows)"
        )

    def to_markdown(self, human: bool = True, depth: int | None = None) -> str:
        """A Markdown table of the rows and the totals (human units unless ``human=False``;
        rows at ``depth`` as in :meth:`at_depth`)."""
        if depth is not None:
            return self.at_depth(depth).to_markdown(human=human)
        head, body, total = self._cells(human=human)
        total = [f"**{c}**" if c else "" for c in total]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for b in [*body, total]:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in b) + " |")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# profile()
# --------------------------------------------------------------------------------------------


def _tensor_bytes(t: torch.Tensor) -> int:
    try:
        return int(t.numel()) * int(t.element_size())
    except (RuntimeError, NotImplementedError):  # sparse or exotic layouts
        return int(t.untyped_storage().nbytes())


def _storage_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    if t.numel() == 0 or t.is_sparse:
        return None
    try:
        return (
            t.untyped_storage().data_ptr(),
            t.device,
            t.storage_offset(),
            tuple(t.shape),
            tuple(t.stride()),
            t.dtype,
        )
    except (RuntimeError, NotImplementedError):
        return None


def _owner(key: str) -> str:
    return key.rpartition(".")[0]


def _covering_ancestor(name: str, covering: set[str]) -> str:
    """The outermost ancestor of ``name`` (itself included) whose cost covers its children."""
    if not covering:
        return name
    parts = name.split(".") if name else []
    if "" in covering:
        return ""
    for i in range(1, len(parts) + 1):
        prefix = ".".join(parts[:i])
        if prefix in covering:
            return prefix
    return name


def _check_depth(depth: Any) -> None:
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ConfigError(f"depth={depth!r} must be None or an integer >= 0.")


def _has_weight_matrix(module: nn.Module) -> bool:
    return any(p.dim() >= 2 and p.is_floating_point() for p in module.parameters(recurse=False))


def profile(
    model: nn.Module,
    example_inputs: Any,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    depth: int | None = None,
) -> Profile:
    """Count params, MACs, FLOPs and stored bytes of ``model``, per layer and in total.

    The model runs once on ``example_inputs`` in eval mode under ``torch.no_grad()`` (so MACs are
    those of inference on that batch); afterwards nothing of the profiler is left in it (hooks
    removed, every module's train/eval mode restored, no buffer or attribute added). See the module
    documentation for exactly what is counted.

    Args:
        model: any ``nn.Module`` (CNNs, Hugging Face transformers, compressed models).
        example_inputs: a tensor (the single positional input), a tuple of positional inputs, a dict
            of keyword inputs (Hugging Face style), a :class:`~torchcompress.batches.Batch`, or a
            DataLoader batch list ``[inputs, targets]``. Tensors are moved to the model's device
            (and floating ones cast to its dtype).
        include: glob patterns on module names: only matching layers (or layers inside matching
            blocks) are listed. Totals stay those of the whole model.
        exclude: glob patterns of layers not to list.
        depth: list blocks at this depth of the module tree instead of single layers (``1``: the
            model's children, ``0``: one row for the whole model); ``None`` lists every layer.

    Returns:
        A :class:`Profile`.

    Raises:
        ShapeError: the forward failed on ``example_inputs``; the message names the module where it
            failed and the shapes that module got.
        SelectionError: an ``include``/``exclude`` pattern matches no module.

    Example:
        >>> import torch, torchcompress as tc
        >>> p = tc.profile(tc.models.create("resnet20"), torch.randn(1, 3, 32, 32))
        >>> round(p.total_macs / 1e6, 2), p.total_params
        (40.55, 269722)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile() needs an nn.Module, got {type(model).__name__}.")
    _check_depth(depth)
    if include is not None or exclude is not None:
        select_modules(model, include, exclude, types=None)  # patterns that match nothing raise
    inc = [include] if isinstance(include, str) else list(include or [])
    exc = [exclude] if isinstance(exclude, str) else list(exclude or [])
    batch = example_batch(model, example_inputs)
    inputs = describe_inputs(batch.args, batch.kwargs)

    session = _Session(model)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        session.install()
        with torch.no_grad(), session:
            try:
                batch(model)
            except _CostFunctionError as e:
                raise TorchCompressError(
                    f"The cost function registered for {type(e.module).__name__} (module "
                    f"{e.name!r}) failed: {e.error}"
                ) from e.error
            except TorchCompressError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as e:
                frame = session.stack[-1] if session.stack else None
                where = (
                    "in the model's own forward"
                    if frame is None or frame.name == ""
                    else f"in module {frame.name!r} ({type(frame.module).__name__})"
                )
                got = f", which got inputs {frame.inputs}" if frame is not None else ""
                raise ShapeError(
                    f"profile: the forward of {type(model).__name__} failed {where}{got}: {e} "
                    f"(the model was called with {inputs}). Pass example_inputs of the shape the "
                    "model expects (a tensor, a tuple of positional inputs or a dict of keyword "
                    "inputs)."
                ) from e
    finally:
        session.remove()
        for m, training in modes.items():
            m.training = training

    return _build_profile(model, session, inputs, inc, exc, depth)


def _build_profile(
    model: nn.Module,
    session: _Session,
    inputs: str,
    inc: list[str],
    exc: list[str],
    depth: int | None,
) -> Profile:
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    covering = session.covering
    params: dict[str, int] = {}
    nonzero: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for key, p in model.named_parameters():  # deduplicated: tied parameters once
        row = _covering_ancestor(_owner(key), covering)
        params[row] = params.get(row, 0) + p.numel()
        nonzero[row] = nonzero.get(row, 0) + int(torch.count_nonzero(p.detach()))
    seen: set[tuple[Any, ...]] = set()
    for key, t in model.state_dict(keep_vars=True).items():
        if not isinstance(t, torch.Tensor):
            continue
        sk = _storage_key(t)
        if sk is not None:
            if sk in seen:
                continue
            seen.add(sk)
        row = _covering_ancestor(_owner(key), covering)
        nbytes[row] = nbytes.get(row, 0) + _tensor_bytes(t)

    names = set(session.final) | set(params) | set(nbytes)
    rows: list[LayerProfile] = []
    for name in sorted(names, key=lambda n: order.get(n, len(order))):
        module = modules.get(name)
        if module is None:
            continue
        acc = session.final.get(name, _Acc())
        cost = session.overrides.get(name)
        n_params = params.get(name, 0)
        n_nonzero = nonzero.get(name, 0)
        n_bytes = nbytes.get(name, 0)
        if cost is not None:
            n_params = n_params if cost.params is None else int(cost.params)
            n_nonzero = n_nonzero if cost.nonzero_params is None else int(cost.nonzero_params)
            n_bytes = n_bytes if cost.bytes is None else int(cost.bytes)
        if not (acc.macs or n_params or n_bytes or cost is not None):
            continue
        notes = list(acc.notes)
        if acc.calls == 0:
            notes.append("not called")
        elif acc.macs == 0 and cost is None and _has_weight_matrix(module) and name not in covering:
            notes.append(f"MACs not counted: no cost formula for {type(module).__name__}")
        if acc.macs and acc.effective_macs < acc.macs and n_nonzero < n_params and not acc.notes:
            zeros = 100.0 * (n_params - n_nonzero) / max(n_params, 1)
            notes.append(f"{zeros:.0f}% zeros: dense kernels still run all MACs")
        rows.append(
            LayerProfile(
                name=name,
                type=type(module).__name__,
                params=n_params,
                nonzero_params=n_nonzero,
                macs=acc.macs,
                effective_macs=acc.effective_macs,
                flops=acc.flops,
                bytes=n_bytes,
                calls=acc.calls,
                note="; ".join(notes),
            )
        )
    totals = {f: sum(getattr(r, f) for r in rows) for f in _FIELDS}
    leaf = [r for r in rows if _selected(r.name, inc, exc)]
    types = {name: type(m).__name__ for name, m in modules.items()}
    result = Profile(
        leaf, totals, model=type(model).__name__, inputs=inputs, leaf_rows=leaf, module_types=types
    )
    return result if depth is None else result.at_depth(depth)


def _selected(name: str, inc: list[str], exc: list[str]) -> bool:
    if inc and not (name and matches(name, inc)):
        return False
    return not (exc and name and matches(name, exc))


def _aggregate(
    rows: Sequence[LayerProfile], depth: int, module_types: Mapping[str, str]
) -> list[LayerProfile]:
    order = {name: i for i, name in enumerate(module_types)}
    groups: dict[str, list[LayerProfile]] = {}
    for r in rows:
        parts = r.name.split(".") if r.name else []
        key = ".".join(parts[:depth])
        groups.setdefault(key, []).append(r)
    out = []
    for key in sorted(groups, key=lambda n: order.get(n, len(order))):
        members = groups[key]
        notes: list[str] = []
        for m in members:
            for n in m.note.split("; ") if m.note else []:
                if n not in notes and n != "not called":
                    notes.append(n)
        own = [m.calls for m in members if m.name == key]
        out.append(
            LayerProfile(
                name=key,
                type=module_types.get(key, members[0].type),
                calls=own[0] if own else max(m.calls for m in members),
                note="; ".join(notes),
                **{f: sum(getattr(m, f) for m in members) for f in _FIELDS},
            )
        )
    return out
