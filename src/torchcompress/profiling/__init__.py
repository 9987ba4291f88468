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
Hugging Face BERT's eager attention) are caught by the shared op recorder
(:class:`torchcompress.tracing.Recorder`) and attributed to the innermost module whose forward was
running; work inside a layer with a registered cost (:mod:`torchcompress.costs`) is counted once,
by that cost. Compression families register the cost of their own modules there;
:func:`register_op_cost` adds a formula for another functional op.

The package: :mod:`~torchcompress.profiling.op_costs` (the op formula registry, the formulas, the
einsum parser), :mod:`~torchcompress.profiling.module_costs` (costs of the built-in layers and of
every registered layer kind, from its geometry), :mod:`~torchcompress.profiling.session` (the
counting listener and :func:`profile`),
:mod:`~torchcompress.profiling.report` (:class:`Profile`, :class:`LayerProfile`, formatting).

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

from ..batches import describe_inputs, example_batch
from .op_costs import OpCost, einsum_macs, layer_macs, register_op_cost
from .report import LayerProfile, Profile, format_bytes, format_count
from .session import profile

__all__ = [
    "LayerProfile",
    "OpCost",
    "Profile",
    "describe_inputs",
    "einsum_macs",
    "example_batch",
    "format_bytes",
    "format_count",
    "layer_macs",
    "profile",
    "register_op_cost",
]
