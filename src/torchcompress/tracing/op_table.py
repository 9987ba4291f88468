"""The built-in entries of :data:`~torchcompress.tracing.OPS` (registered on import).

Every category constant is defined in :mod:`torchcompress.tracing.ops`; this module fills the shared
taxonomy with torch's functions, ``Tensor`` methods and ``nn`` modules. The same function reached as
``torch.relu``, ``F.relu`` or ``x.relu()`` is registered under each spelling.

Example:
    >>> import torch
    >>> from torchcompress.tracing import OPS, PERMUTE
    >>> OPS.op_is(torch.Tensor.transpose, PERMUTE, (torch.zeros(2, 3), 0, 1))
    True
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .ops import (
    ACTIVATION,
    ADD,
    ALONG_DIM,
    ATTENTION,
    AVG_POOL,
    CAST,
    COMPARE,
    CONCAT,
    DROPOUT,
    ELEMENTWISE,
    FACTORY,
    IDENTITY,
    INDEX,
    INT_EXACT,
    LIKE,
    LINEAR,
    MATMUL,
    MAX_POOL,
    MEAN,
    NON_TENSOR,
    OPS,
    PAD,
    PERMUTE,
    POOLING,
    RANGE_PRESERVING,
    REDUCE,
    RELU,
    RELU6,
    RELU_LIKE,
    RESHAPE,
    SPLIT,
    STACK,
    UPSAMPLE,
    ZERO_PAD,
    Condition,
    OpCall,
)

__all__: list[str] = []


def _have(owner: Any, *names: str) -> list[Any]:
    """The attributes of ``owner`` that exist in this torch version."""
    return [getattr(owner, n) for n in names if hasattr(owner, n)]


def _add(targets: Iterable[Any], *categories: str, when: Condition | None = None) -> None:
    targets = list(targets)
    for c in categories:
        OPS.register(c, *targets, when=when)


def _not_indices(index: int) -> Condition:
    def cond(c: OpCall) -> bool:
        if c.module is not None:
            return not getattr(c.module, "return_indices", False)
        return not c.arg(index, "return_indices", False)

    return cond


def _clips_at_zero(c: OpCall) -> bool:
    lo = c.module.min_val if c.module is not None else c.arg(1, "min_val", -1.0)
    hi = c.module.max_val if c.module is not None else c.arg(2, "max_val", 1.0)
    return bool(lo == 0 and hi > 0)


def _pads_zero(c: OpCall) -> bool:
    if c.module is not None:
        return bool(getattr(c.module, "value", 0) == 0)
    value = c.arg(3, "value", None)
    return c.arg(2, "mode", "constant") == "constant" and (value is None or value == 0)


def _upsample_mode(c: OpCall) -> str:
    if c.module is not None:
        return str(getattr(c.module, "mode", "nearest"))
    if c.target is getattr(F, "upsample_bilinear", None):
        return "bilinear"
    if c.target is getattr(F, "upsample_nearest", None):
        return "nearest"
    return str(c.arg(3, "mode", "nearest"))


def _nearest(c: OpCall) -> bool:
    return _upsample_mode(c) in ("nearest", "nearest-exact")


def _convex_upsample(c: OpCall) -> bool:
    return _upsample_mode(c) in (
        "nearest",
        "nearest-exact",
        "linear",
        "bilinear",
        "trilinear",
        "area",
    )


def _add_alpha_one(c: OpCall) -> bool:
    return c.kwargs.get("alpha", 1) == 1


_NON_TENSOR_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad"}

_relu = [F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_", nn.ReLU]
_relu6 = [F.relu6, nn.ReLU6]
_hardtanh = [F.hardtanh, F.hardtanh_, nn.Hardtanh]
_other_acts = [
    *_have(F, "gelu", "silu", "mish", "hardswish", "hardsigmoid", "leaky_relu", "leaky_relu_"),
    *_have(F, "elu", "elu_", "selu", "celu", "softplus", "softsign", "tanhshrink", "logsigmoid"),
    *_have(F, "sigmoid", "tanh", "prelu", "rrelu", "threshold", "hardshrink", "softshrink"),
    torch.sigmoid,
    torch.tanh,
    torch.selu,
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    *_have(nn, "GELU", "SiLU", "Mish", "Hardswish", "Hardsigmoid", "LeakyReLU", "ELU", "SELU"),
    *_have(nn, "CELU", "Softplus", "Softsign", "Tanhshrink", "LogSigmoid", "Sigmoid", "Tanh"),
    *_have(nn, "PReLU", "RReLU", "Threshold", "Hardshrink", "Softshrink"),
]
_add(_relu, ACTIVATION, RELU, RELU_LIKE, ELEMENTWISE)
_add(_relu6, ACTIVATION, RELU6, RELU_LIKE, ELEMENTWISE)
_add(_hardtanh, ACTIVATION, ELEMENTWISE)
_add(_hardtanh, RELU6, RELU_LIKE, when=_clips_at_zero)
_add(_other_acts, ACTIVATION, ELEMENTWISE)

_add_ops = [
    operator.add,
    operator.iadd,
    torch.add,
    "add",
    "add_",
    "__add__",
    "__radd__",
    "__iadd__",
]
_add(_add_ops, ADD, when=_add_alpha_one)
_arith_fns = [
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    operator.floordiv,
    operator.neg,
    operator.pow,
    *_have(torch, "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide"),
    *_have(torch, "neg", "abs", "exp", "log", "sqrt", "rsqrt", "square", "pow", "reciprocal"),
    *_have(torch, "clamp", "clip", "clamp_min", "clamp_max", "maximum", "minimum", "where"),
    *_have(torch, "sin", "cos", "erf", "sign", "round", "floor", "ceil", "addcmul", "addcdiv"),
    *_have(torch, "lerp", "masked_fill"),
]
_arith_methods = [
    f"{base}{suffix}"
    for base in ("add", "sub", "mul", "div", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow")
    for suffix in ("", "_")
] + [
    "__add__",
    "__radd__",
    "__iadd__",
    "__sub__",
    "__rsub__",
    "__isub__",
    "__mul__",
    "__rmul__",
    "__imul__",
    "__truediv__",
    "__rtruediv__",
    "__itruediv__",
    "__floordiv__",
    "__neg__",
    "__pow__",
    "__rpow__",
    "square",
    "reciprocal",
    "clamp",
    "clamp_",
    "clip",
    "clamp_min",
    "clamp_min_",
    "clamp_max",
    "clamp_max_",
    "maximum",
    "minimum",
    "sign",
    "round",
    "floor",
    "ceil",
    "masked_fill",
    "masked_fill_",
    "lerp",
]
_add([*_arith_fns, *_arith_methods], ELEMENTWISE)

_reshape = [
    *_have(torch, "flatten", "reshape", "squeeze", "unsqueeze", "permute", "transpose", "t"),
    *_have(torch, "movedim", "moveaxis", "swapaxes", "swapdims", "unflatten", "ravel"),
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "unflatten",
    "permute",
    "transpose",
    "t",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "movedim",
    "moveaxis",
    "swapaxes",
    "swapdims",
    "ravel",
    nn.Flatten,
    nn.Unflatten,
]
_index = [operator.getitem, "__getitem__", torch.narrow, "narrow", torch.select, "select"]
_index += [torch.index_select, "index_select"]
_identity = [nn.Identity, "contiguous", "clone", torch.clone, "detach", torch.detach]
_dropout = [
    *_have(F, "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout"),
    *_have(F, "feature_alpha_dropout"),
    torch.dropout,
    *_have(nn, "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"),
    *_have(nn, "FeatureAlphaDropout"),
]
_add(_reshape, RESHAPE, INT_EXACT, RANGE_PRESERVING)
_add(_index, INDEX, INT_EXACT, RANGE_PRESERVING)
_add(_identity, IDENTITY, INT_EXACT, RANGE_PRESERVING)
_add(_dropout, DROPOUT, INT_EXACT, RANGE_PRESERVING)

_add([torch.cat, *_have(torch, "concat", "concatenate")], CONCAT)
_add([torch.stack], STACK)
_split = [torch.split, "split", torch.chunk, "chunk", torch.tensor_split, "tensor_split"]
_split += [torch.unbind, "unbind", *_have(torch, "split_with_sizes"), "split_with_sizes"]
_add(_split, SPLIT)

# max pooling: F.max_poolNd(input, kernel, stride, padding, dilation, ceil_mode, return_indices)
_max_pool = [*_have(F, "max_pool1d", "max_pool2d", "max_pool3d")]
_max_pool += [*_have(torch, "max_pool1d", "max_pool2d", "max_pool3d")]
_max_pool += [*_have(nn, "MaxPool1d", "MaxPool2d", "MaxPool3d")]
_adaptive_max = [*_have(F, "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")]
_adaptive_max += [*_have(nn, "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d")]
_with_indices = [
    *_have(F, "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices"),
    *_have(F, "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices"),
    *_have(F, "adaptive_max_pool3d_with_indices"),
]
_avg_pool = [*_have(F, "avg_pool1d", "avg_pool2d", "avg_pool3d")]
_avg_pool += [*_have(F, "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d")]
_avg_pool += [*_have(nn, "AvgPool1d", "AvgPool2d", "AvgPool3d")]
_avg_pool += [*_have(nn, "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d")]
_lp_pool = [*_have(F, "lp_pool1d", "lp_pool2d", "lp_pool3d")]
_lp_pool += [*_have(nn, "LPPool1d", "LPPool2d", "LPPool3d")]
_add([*_max_pool, *_adaptive_max, *_with_indices, *_avg_pool, *_lp_pool], POOLING)
_add([*_max_pool, *_adaptive_max, *_with_indices], MAX_POOL)
_add(_max_pool, INT_EXACT, RANGE_PRESERVING, when=_not_indices(6))
_add(_adaptive_max, INT_EXACT, RANGE_PRESERVING, when=_not_indices(2))
_add(_avg_pool, AVG_POOL, RANGE_PRESERVING)
_add([torch.mean, "mean"], MEAN, RANGE_PRESERVING)

_upsample = [F.interpolate, *_have(F, "upsample", "upsample_nearest", "upsample_bilinear")]
_upsample += [nn.Upsample, *_have(nn, "UpsamplingNearest2d", "UpsamplingBilinear2d")]
_add(_upsample, UPSAMPLE)
_add(_upsample, INT_EXACT, when=_nearest)
_add(_upsample, RANGE_PRESERVING, when=_convex_upsample)

_zero_pad_modules = [*_have(nn, "ZeroPad1d", "ZeroPad2d", "ZeroPad3d")]
_const_pad_modules = [*_have(nn, "ConstantPad1d", "ConstantPad2d", "ConstantPad3d")]
_other_pad_modules = [
    *_have(nn, "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d"),
    *_have(nn, "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d"),
    *_have(nn, "CircularPad1d", "CircularPad2d", "CircularPad3d"),
]
_add([F.pad, *_zero_pad_modules, *_const_pad_modules, *_other_pad_modules], PAD)
_add([F.pad, *_const_pad_modules], ZERO_PAD, when=_pads_zero)
_add(_zero_pad_modules, ZERO_PAD)

_non_tensor_methods = ["size", "dim", "numel", "ndimension", "nelement", "stride", "element_size"]
_non_tensor_methods += ["is_contiguous", "is_floating_point", "data_ptr", "get_device", "item"]
_non_tensor_methods += ["tolist"]
_add(_non_tensor_methods, NON_TENSOR)
_add([getattr], NON_TENSOR, when=lambda c: c.arg(1, "name") in _NON_TENSOR_ATTRS)

_permute = [*_have(torch, "permute", "transpose", "t", "movedim", "moveaxis", "swapaxes")]
_permute += [*_have(torch, "swapdims")]
_permute += ["permute", "transpose", "t", "movedim", "moveaxis", "swapaxes", "swapdims"]
_add(_permute, PERMUTE)
_add([getattr], PERMUTE, when=lambda c: c.arg(1, "name") in ("T", "mT"))

_compare = [operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge]
_compare += [operator.not_, operator.and_, operator.or_, operator.xor, operator.invert]
_compare += [*_have(torch, "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or")]
_compare += [*_have(torch, "logical_not", "logical_xor", "isnan", "isinf", "isfinite")]
_compare += [*_have(torch, "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor")]
_compare += [
    f"{base}{suffix}"
    for base in ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not")
    for suffix in ("", "_")
]
_compare += ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__and__", "__or__"]
_compare += ["__xor__", "__invert__", "__rand__", "__ror__", "isnan", "isinf", "isfinite"]
_compare += ["logical_xor", "bitwise_and", "bitwise_or", "bitwise_not", "bitwise_xor"]
_add(_compare, COMPARE, ELEMENTWISE)

_cast = ["to", "float", "double", "half", "bfloat16", "int", "long", "bool", "type", "type_as"]
_cast += ["cpu", "cuda", "requires_grad_"]
_add(_cast, CAST)

_along_dim = [F.softmax, F.log_softmax, F.softmin, F.normalize, torch.softmax, torch.cumsum]
_along_dim += [*_have(torch, "log_softmax", "cumprod", "logcumsumexp")]
_along_dim += ["softmax", "log_softmax", "cumsum", "cumprod"]
_add(_along_dim, ALONG_DIM)

_reduce = [torch.sum, torch.mean, torch.amax, torch.amin, torch.prod, torch.logsumexp]
_reduce += [torch.norm, torch.linalg.vector_norm, "norm"]
_reduce += [torch.var, torch.std, "sum", "mean", "amax", "amin", "prod", "logsumexp", "var", "std"]
_add(_reduce, REDUCE)
# max/min reduce with one tensor; with two they are element-wise
_add(
    [torch.max, torch.min, "max", "min"],
    REDUCE,
    when=lambda c: not isinstance(c.arg(1, "other"), torch.Tensor),
)
_add(
    [torch.max, torch.min, "max", "min"],
    ELEMENTWISE,
    when=lambda c: isinstance(c.arg(1, "other"), torch.Tensor),
)

_add([torch.matmul, torch.mm, torch.bmm, "matmul", "mm", "bmm", "__matmul__"], MATMUL)
_add([F.linear], LINEAR)
_add([F.scaled_dot_product_attention], ATTENTION)

_like = [torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like]
_like += [torch.randn_like, torch.randint_like]
_add(_like, LIKE)
_add(["new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"], FACTORY)
