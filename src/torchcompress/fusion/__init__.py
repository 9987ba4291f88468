"""Folding BatchNorm into the preceding Linear / Conv layer: :func:`fuse`.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) * gamma / sqrt(var + eps) +
beta``, so it folds into the layer that produced ``x`` (Ioffe & Szegedy 2015; the inference folding
used by every deployment runtime, e.g. Jacob et al., "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", CVPR 2018, section 3.2)::

    scale = gamma / sqrt(running_var + eps)
    W'    = W * scale            (per output channel)
    b'    = (b - running_mean) * scale + beta

:func:`fuse` finds the ``Conv/Linear -> BatchNorm`` pairs of a model and folds them in place: the
BatchNorm becomes ``nn.Identity`` and the layer a plain layer of the same kind with the folded
weight and bias. Eval-mode outputs are unchanged up to float rounding. The pairs are found

1. through ``torch.fx`` where the model traces (sub-modules that do not trace, e.g. because of
   data-dependent control flow, are analysed on their own, so one untraceable block does not
   prevent the rest);
2. otherwise through ``example_inputs``: one real forward records which tensor each layer produced
   and how many times every tensor was used by any op;
3. or from explicit ``pairs=[("conv", "bn"), ...]``.

A pair is only folded when that is exact: the layer's output feeds the BatchNorm and nothing else
(a residual taken before the BN keeps the pair apart), neither module is called more than once or
shared under two names, no other code reads their parameters or statistics (e.g. a functional
``F.batch_norm`` using the BN's buffers), and the BatchNorm has running statistics. Only plain
``nn.Linear``/``nn.Conv1d/2d/3d`` followed by ``nn.BatchNorm1d/2d/3d`` (or ``nn.SyncBatchNorm``)
are fused; layers already wrapped by a compression family, parametrized or hooked layers and
subclasses are skipped (named in an error when asked for explicitly).

:func:`fold_bn_weights` and :func:`bn_scale_shift` expose the pure (differentiable) maths
(:mod:`~torchcompress.fusion.functional`), :func:`fuse_conv_bn` folds one pair
(:mod:`~torchcompress.fusion.surgery`), :mod:`~torchcompress.fusion.analysis` finds and judges the
pairs on the shared tracer and recorder (:mod:`torchcompress.tracing`), and
:mod:`~torchcompress.fusion.fusing` holds the verb.

Example:
    >>> import torch, torchcompress as tc
    >>> model = tc.models.create("resnet20").eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> ref = model(x)
    >>> model = tc.fuse(model)
    >>> any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    False
    >>> torch.allclose(model(x), ref, atol=1e-4)
    True
"""

from __future__ import annotations

from .functional import bn_scale_shift, fold_bn_weights
from .fusing import fuse, fusion_pairs
from .surgery import fuse_conv_bn

__all__ = ["bn_scale_shift", "fold_bn_weights", "fuse", "fuse_conv_bn", "fusion_pairs"]
