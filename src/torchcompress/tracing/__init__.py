"""One tracer, one recorder, one op taxonomy, shared by every part of torchcompress.

- :class:`Tracer` / :func:`trace` (the only ``torch.fx.Tracer`` subclass): our leaf rules
  (registered leaves, compressed layers, plain ``torch.nn`` layers, Hugging Face layers, names the
  client gives) and a trace that keeps a submodule that does not trace as an opaque call, saying
  which parts are opaque and why (:class:`Traced`).
- :class:`Recorder` (the only ``TorchFunctionMode`` subclass): one real forward, every torch op
  attributed to the module that ran it, every tensor to its :class:`Source`; clients subscribe as
  listeners (:class:`Listener`).
- :data:`OPS`: one taxonomy of ops (activations and which are ReLU-like, element-wise, residual
  adds, reshapes, permutations, indexing, concatenation, split, pooling, reductions, matrix
  products, attention, ops exact on integers, non-tensor calls), for fx nodes, recorded ops and
  modules; registrable (the built-in entries live in :mod:`~torchcompress.tracing.op_table`).
- :func:`capture_outputs` / :class:`OutputCapture`: the outputs of named modules, forward by
  forward, with their autograd graph (distillation's features; any client that needs "the output
  of ``layer2`` for this batch"), and :func:`check_module_names` (did-you-mean errors).

Used by fusion, quantization planning, QAT's activation origins, the profiler, and the
channel-pruning dependency graph.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.tracing import OPS, trace
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    >>> graph = trace(model).graph
    >>> [sorted(OPS.of_node(n, model) & {"relu", "reshape"}) for n in graph.nodes][1:4]
    [[], ['relu'], ['reshape']]
"""

from __future__ import annotations

from . import op_table as _op_table  # noqa: F401  (fills OPS with torch's ops)
from .capture import OutputCapture, capture_outputs, check_module_names
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
    OpCall,
    OpTaxonomy,
)
from .recorder import (
    Listener,
    ModuleCall,
    OpEvent,
    Recorder,
    Source,
    TensorUse,
    flat_tensors,
)
from .tracer import LeafSpec, Traced, Tracer, is_registered_leaf, register_leaf, trace

__all__ = [
    "ACTIVATION",
    "ADD",
    "ALONG_DIM",
    "ATTENTION",
    "AVG_POOL",
    "CAST",
    "COMPARE",
    "CONCAT",
    "DROPOUT",
    "ELEMENTWISE",
    "FACTORY",
    "IDENTITY",
    "INDEX",
    "INT_EXACT",
    "LIKE",
    "LINEAR",
    "MATMUL",
    "MAX_POOL",
    "MEAN",
    "NON_TENSOR",
    "OPS",
    "PAD",
    "PERMUTE",
    "POOLING",
    "RANGE_PRESERVING",
    "REDUCE",
    "RELU",
    "RELU6",
    "RELU_LIKE",
    "RESHAPE",
    "SPLIT",
    "STACK",
    "UPSAMPLE",
    "ZERO_PAD",
    "LeafSpec",
    "Listener",
    "ModuleCall",
    "OpCall",
    "OpEvent",
    "OpTaxonomy",
    "OutputCapture",
    "Recorder",
    "Source",
    "TensorUse",
    "Traced",
    "Tracer",
    "capture_outputs",
    "check_module_names",
    "flat_tensors",
    "is_registered_leaf",
    "register_leaf",
    "trace",
]
