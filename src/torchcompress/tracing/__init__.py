"""One tracer, one recorder, one op taxonomy, shared by every part of torchcompress.

- :class:`Tracer` / :func:`trace` (the only ``torch.fx.Tracer`` subclass): our leaf rules
  (registered leaves, compressed layers, plain ``torch.nn`` layers, Hugging Face layers, names the
  client gives) and a trace that keeps a submodule that does not trace as an opaque call, saying
  which parts are opaque and why (:class:`Traced`).
- :class:`Recorder` (the only ``TorchFunctionMode`` subclass): one real forward, every torch op
  attributed to the module that ran it, every tensor to its :class:`Source`; clients subscribe as
  listeners (:class:`Listener`).
- :data:`OPS`: one taxonomy of ops (activations and which are ReLU-like, element-wise, residual
  adds, reshapes, indexing, concatenation, split, pooling, ops exact on integers, non-tensor
  calls), for fx nodes, recorded ops and modules; registrable.
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

from .capture import OutputCapture, capture_outputs, check_module_names
from .ops import (
    ACTIVATION,
    ADD,
    AVG_POOL,
    CONCAT,
    DROPOUT,
    ELEMENTWISE,
    IDENTITY,
    INDEX,
    INT_EXACT,
    MAX_POOL,
    MEAN,
    NON_TENSOR,
    OPS,
    PAD,
    POOLING,
    RANGE_PRESERVING,
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
    "AVG_POOL",
    "CONCAT",
    "DROPOUT",
    "ELEMENTWISE",
    "IDENTITY",
    "INDEX",
    "INT_EXACT",
    "MAX_POOL",
    "MEAN",
    "NON_TENSOR",
    "OPS",
    "PAD",
    "POOLING",
    "RANGE_PRESERVING",
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
