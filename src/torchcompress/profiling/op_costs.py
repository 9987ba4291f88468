"""MAC formulas of functional ops: the registry, the built-in formulas and the einsum parser.

:func:`register_op_cost` maps a torch function (every spelling it is called by: ``torch.mm`` and
``Tensor.mm``) to a formula ``fn(args, kwargs, output, density) -> OpCost``; the profiler's session
applies it to every op its :class:`~torchcompress.tracing.Recorder` sees. :func:`layer_macs` counts
a functional call of a dense layer (``F.linear``, ``F.conv2d``, ...) from the stored weight's shape,
with the shared layer model's formula (:meth:`torchcompress.layers.Geometry.macs`), the one the
module costs of every registered layer kind use too.

Example:
    >>> import torch
    >>> layer_macs("conv", (8, 3, 3, 3), torch.zeros(1, 3, 10, 10), torch.zeros(1, 8, 8, 8))
    13824
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..layers import LAYER_KINDS, Geometry

__all__ = [
    "Density",
    "OpCost",
    "OpCostFn",
    "einsum_macs",
    "layer_macs",
    "register_op_cost",
    "stored_geometry",
]


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


def _transposed_macs(w: Sequence[int], x: Any) -> int:
    # weight (in, out/groups, *kernel): every input element meets out/groups * kernel weights
    return _numel(x) * math.prod(int(s) for s in w[1:])


def stored_geometry(kind: str, weight_shape: Sequence[int]) -> Geometry:
    """The :class:`~torchcompress.layers.Geometry` of a layer of a registered ``kind`` from the
    shape of its stored weight (``weight_axes`` say where its output and input axes are; the
    kernel follows them). Groups are not known from the shape: the geometry has one group of
    ``weight_shape[input axis]`` inputs, which counts the same MACs.

    Raises:
        ConfigError: ``kind`` is not a registered layer kind.
    """
    if kind not in LAYER_KINDS:
        raise ConfigError(
            f"layer_macs: unknown layer kind {kind!r}; known: "
            f"{sorted([*LAYER_KINDS.names(), 'conv_transpose'])}."
        )
    o, i = LAYER_KINDS.get(kind).weight_axes
    w = [int(s) for s in weight_shape]
    return Geometry(kind, w[i], w[o], kernel_size=tuple(w[2:]))


def layer_macs(kind: str, weight_shape: Sequence[int], x: Any, out: Any) -> int:
    """MACs of one call of a dense layer, from its stored weight's shape.

    The count is :meth:`torchcompress.layers.Geometry.macs`: ``output positions x out x in/groups x
    kernel elements`` (products with zero padding included, as dense kernels compute them), for
    any leading dimensions, groups, stride and dilation. Output positions come from ``out`` (or,
    for maps over the last dimension, from ``x``).

    Args:
        kind: a registered layer kind (``"linear"``: ``nn.Linear``, ``F.linear``; ``"hf_conv1d"``:
            weight stored ``(in, out)``; ``"conv"``: ``nn.Conv1d/2d/3d``, ``F.conv*d``; a kind
            registered from outside), or ``"conv_transpose"``.
        weight_shape: the weight's shape as stored (a 1-D weight: one output).
        x: the input tensor.
        out: the output tensor.

    Raises:
        ConfigError: ``kind`` is none of the above.
    """
    if kind == "conv_transpose":  # not a layer kind: its weight is (in, out/groups, *kernel)
        return _transposed_macs(weight_shape, x)
    if len(weight_shape) < 2:  # F.linear with a 1-D weight: a dot product per row
        if kind not in LAYER_KINDS:
            stored_geometry(kind, weight_shape)  # raises the error naming the kinds
        return _numel(x)
    geo = stored_geometry(kind, weight_shape)
    if isinstance(out, torch.Tensor) and out.numel():
        positions = geo.output_positions(out)
    else:
        positions = _numel(x) // geo.in_features if not geo.kernel_size else 0
    return geo.macs(positions)


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
    macs = layer_macs("linear", w.shape, x, out)
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
        macs = layer_macs("conv_transpose" if transposed else "conv", w.shape, x, out)
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
