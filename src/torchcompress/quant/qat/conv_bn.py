"""A convolution training with its BatchNorm folded into the quantized weight.

:class:`QuantConvBn2d` / :class:`QuantConvBn1d` (Jacob et al. 2018, section 3.2; Krishnamoorthi
2018, arXiv:1806.08342, section 3.2.1): the folded weight is quantized, with batch-statistics
correction until the statistics are frozen; :meth:`~_QuantConvBnNd.finalized` gives the plain
fake-quant convolution :func:`torchcompress.convert` turns into integers.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...fusion import bn_scale_shift
from ...layers import Geometry
from ..build import carry_forms, take_over_parameters
from ..modules import QuantConv1d, QuantConv2d, QuantLayer, _QuantConvNd, quant_layer_class

__all__ = ["FOLDABLE_BN", "QuantConvBn1d", "QuantConvBn2d", "conv_bn_class"]


class _QuantConvBnNd(_QuantConvNd):
    """A fake-quant convolution training with its BatchNorm folded into the quantized weight.

    With ``sigma = sqrt(running_var + eps)`` and ``gamma``, ``beta`` the BN's affine parameters,
    the weight that is quantized is the folded ``W * gamma / sigma`` (what the integer model
    stores). In training mode, until the statistics are frozen, the output is corrected to batch
    normalisation (Krishnamoorthi 2018, fig. 8): ``conv(x, q(W gamma / sigma)) * sigma / sigma_B +
    beta - gamma mu_B / sigma_B``, where ``mu_B``, ``sigma_B`` are the batch statistics of the
    unfolded output ``conv(x, q(W gamma / sigma)) / (gamma / sigma)``, and the running statistics
    are updated as BatchNorm does. With frozen statistics, and always in eval mode, the output is
    ``conv(x, q(W gamma / sigma)) + beta + (b - mu) gamma / sigma``, exactly the converted layer.

    Attributes:
        bn: the original BatchNorm (its parameters train, its running statistics are used).
        stats_frozen: a bool buffer; see :func:`~torchcompress.quant.qat.freeze_bn_stats`.
    """

    bn: nn.modules.batchnorm._BatchNorm
    #: the BatchNorm type that folds into this convolution
    bn_type: type[nn.Module] = nn.BatchNorm2d

    def _init_bn(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        self.bn = bn
        self.register_buffer(
            "stats_frozen", torch.zeros((), dtype=torch.bool, device=bn.running_mean.device)
        )

    def _bn_factor(self) -> Tensor:
        """``gamma / sqrt(running_var + eps)`` (BatchNorm's eval-mode scale, differentiable)."""
        bn = self.bn
        scale, _ = bn_scale_shift(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)  # type: ignore[arg-type]
        return scale

    def folded_weight(self) -> Tensor:
        """``W * gamma / sqrt(running_var + eps)`` (differentiable)."""
        return _scale_rows(self.weight, self._bn_factor())

    def folded_bias(self) -> Tensor:
        """``beta + (b - running_mean) * gamma / sqrt(running_var + eps)``."""
        bn = self.bn
        f = self._bn_factor()
        mean = bn.running_mean.float()  # type: ignore[union-attr]
        b = self.bias.float() if self.bias is not None else torch.zeros_like(mean)
        beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(mean)
        return beta + (b - mean) * f

    def weight_to_quantize(self) -> Tensor:
        """The folded weight: what the integer model stores, and what is quantized."""
        return self.folded_weight()

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        bn = self.bn
        if not self.training or bool(self.stats_frozen):
            y = self._run(x, self.quantized_weight(), self.folded_bias())
        else:
            # The folding factor is a constant of this step (detached): gamma then receives exactly
            # BatchNorm's gradient, and the unfolding division never amplifies the weight's
            # quantization error by 1 / factor^2. A vanishing factor (gamma = 0) is kept tiny.
            f = self._bn_factor().detach()
            f = torch.where(f.abs() < 1e-8, torch.full_like(f, 1e-8), f)
            w = _scale_rows(self.weight, f)
            if self.weight_quant is not None:
                w = self.weight_quant(w.reshape(self.weight_shape2d)).reshape(w.shape)
            y0 = self._run(x, w, None).float()
            shape = [1, -1] + [1] * (y0.dim() - 2)
            # the unfolded output (conv with the original weight, plus the conv's own bias)
            z = y0 / f.reshape(shape)
            if self.bias is not None:
                z = z + self.bias.float().reshape(shape)
            y = F.batch_norm(
                z,
                bn.running_mean,
                bn.running_var,
                bn.weight,
                bn.bias,
                True,
                self._momentum(),
                bn.eps,
            ).to(x.dtype)
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y

    def _momentum(self) -> float:
        bn = self.bn
        if bn.momentum is None:  # cumulative moving average
            bn.num_batches_tracked += 1  # type: ignore[operator]
            return 1.0 / float(bn.num_batches_tracked)
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked += 1
        return float(bn.momentum)

    def to_quant_layer(self) -> QuantLayer:
        """The plain fake-quant convolution with the folded weight and bias (what converts)."""
        geo = dataclasses.replace(self.geometry, bias=True)
        new = quant_layer_class(geo).from_geometry(geo, device="meta", source=self.source)
        with torch.no_grad():
            new.weight = nn.Parameter(self.folded_weight().detach().clone())
            new.bias = nn.Parameter(self.folded_bias().detach().to(self.weight.dtype).clone())
        if self.weight_quant is not None:
            self.weight_quant.refresh(new.weight.reshape(self.weight_shape2d))
        new.weight_quant = self.weight_quant
        new.input_quant = self.input_quant
        new.output_quant = self.output_quant
        new.train(self.training)
        return new

    def finalized(self) -> QuantLayer:
        """The plain fake-quant convolution with the BatchNorm folded in (:meth:`to_quant_layer`)."""
        return self.to_quant_layer()

    @classmethod
    def from_layer(cls, layer: QuantLayer, bn: nn.modules.batchnorm._BatchNorm) -> _QuantConvBnNd:
        """The folded conv+BN training layer of a fake-quant convolution and its BatchNorm (the
        parameters and quantizers are taken over)."""
        new = cls.from_geometry(layer.geometry, device="meta", source=layer.source)
        take_over_parameters(layer, new, bias=layer.geometry.bias)
        new._init_bn(bn)
        new.weight_quant = layer.weight_quant
        new.input_quant = layer.input_quant
        new.output_quant = layer.output_quant
        new.train(bn.training)
        carry_forms(layer, new)  # a pruning mask moves along (last, as loading adds it)
        return new

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", bn folded{' (stats frozen)' if bool(self.stats_frozen) else ''}"
        )


def _scale_rows(w: Tensor, f: Tensor) -> Tensor:
    """``w`` with output channel ``i`` multiplied by ``f[i]`` (in float32, back in ``w``'s dtype)."""
    return (w.float() * f.reshape([-1] + [1] * (w.dim() - 1))).to(w.dtype)


class QuantConvBn2d(_QuantConvBnNd, QuantConv2d):
    """``Conv2d`` + ``BatchNorm2d`` training folded (see :class:`_QuantConvBnNd`)."""

    _nd = 2
    bn_type = nn.BatchNorm2d


class QuantConvBn1d(_QuantConvBnNd, QuantConv1d):
    """``Conv1d`` + ``BatchNorm1d`` training folded (see :class:`_QuantConvBnNd`)."""

    _nd = 1
    bn_type = nn.BatchNorm1d


#: the folded conv+BN class of a convolution, by its number of spatial dimensions
_BY_DIMS: dict[int, type[_QuantConvBnNd]] = {c._nd: c for c in (QuantConvBn1d, QuantConvBn2d)}

#: the BatchNorm types that fold into a training convolution
FOLDABLE_BN: tuple[type[nn.Module], ...] = tuple(c.bn_type for c in _BY_DIMS.values())


def conv_bn_class(geometry: Geometry) -> type[_QuantConvBnNd] | None:
    """The folded conv+BN training layer for a layer of ``geometry`` (a convolution with a 1-D or
    2-D kernel), or ``None`` (e.g. a Linear map)."""
    return _BY_DIMS.get(geometry.spatial_dims) if geometry.kernel_size else None
