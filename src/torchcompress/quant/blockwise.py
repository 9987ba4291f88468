"""What the block-by-block quantization verbs share (:func:`~torchcompress.quant.gptq.gptq`,
:func:`~torchcompress.quant.awq.awq`, :func:`~torchcompress.quant.smoothquant.smoothquant`).

- :class:`BlockwiseConfig`: the base of their typed configs (the target format ``quant``, a
  :class:`~torchcompress.quant.QuantConfig`, plus the method's options), and :func:`parse_config`,
  which accepts the method's config, a bare ``QuantConfig``, a dict, and keyword options;
- :func:`block_targets`: the layers each block holds among those ``include``/``exclude`` select;
- :func:`build_layer` / :func:`set_quantized_weight`: the fake-quant layer of a (possibly masked)
  layer, built by :func:`~torchcompress.quant.build.build_quant_layer`, then given the weight and
  ranges a method computed;
- :func:`calibrate_inputs`: static activation ranges of a block's new layers, observed on the
  block's own inputs (the outputs of the blocks already quantized);
- :func:`block_output`: a block's hidden-state output, the quantity AWQ and SmoothQuant compare.

The verbs run on :class:`torchcompress.calibration.SequentialRunner` (no hooks here).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..calibration import Block, by_block
from ..config import Config
from ..errors import CalibrationError, ConfigError, SelectionError
from .build import build_quant_layer, select_quant_targets
from .modules import FakeQuantize, QuantLayer
from .spec import IntSpec, QuantConfig

__all__ = [
    "BlockwiseConfig",
    "block_output",
    "block_targets",
    "build_layer",
    "calibrate_inputs",
    "ensure_weight_bits",
    "parse_config",
    "relative_error",
    "set_quantized_weight",
]

log = logging.getLogger(__name__)

#: The default format of the weight-only methods: 4-bit asymmetric weights, one range per output
#: channel (group-wise ranges, ``IntSpec(4, symmetric=False, granularity="group", group_size=128)``,
#: are what the papers use on large layers).
W4 = QuantConfig(weight=IntSpec(4, symmetric=False, granularity="channel"), activation=None)

C = TypeVar("C", bound="BlockwiseConfig")


@dataclass(frozen=True)
class BlockwiseConfig(Config):
    """Base of the block-by-block methods' configs: the target format and the method's options.

    Attributes:
        quant: the format the layers end in (what :func:`torchcompress.quantize` would take).
    """

    quant: QuantConfig = W4

    def validate(self) -> None:
        if not isinstance(self.quant, QuantConfig):
            raise ConfigError(
                f"{type(self).__name__}.quant must be a QuantConfig, got {type(self.quant).__name__}."
            )


def parse_config(config: Any, cls: type[C], options: Mapping[str, Any], verb: str) -> C:
    """The method's config from what the verb was given.

    Args:
        config: ``None`` (defaults), an instance of ``cls``, a :class:`QuantConfig` (the target
            format, the method's options default), or a dict of ``cls``'s fields (or of a
            ``QuantConfig``'s).
        cls: the method's config class.
        options: keyword options of the verb: fields of ``cls`` overriding ``config``'s.
        verb: the verb's name, for messages.

    Raises:
        ConfigError: an unknown option, a bad value, or a config of another type.
    """
    if config is None:
        cfg = cls()
    elif isinstance(config, cls):
        cfg = config
    elif isinstance(config, QuantConfig):
        cfg = cls(quant=config)
    elif isinstance(config, Mapping):
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(config) <= fields:
            cfg = cls.from_dict(dict(config))
        else:
            cfg = cls(quant=QuantConfig.from_dict(dict(config)))
    else:
        raise ConfigError(
            f"{verb}() takes a {cls.__name__} or a QuantConfig as its config, got "
            f"{type(config).__name__}."
        )
    if options:
        cfg = cfg.replace(**dict(options))
    return cfg


def block_targets(
    model: nn.Module,
    blocks: Sequence[tuple[str, nn.Module]],
    include: str | Sequence[str] | None,
    exclude: str | Sequence[str] | None,
    family: str,
) -> dict[str, list[str]]:
    """The layers to treat in each block: block name -> layer names relative to the block.

    Every layer :func:`torchcompress.quantize` would take (or those ``include``/``exclude`` pick)
    that lies inside one of ``blocks``. Layers outside the blocks (a pooler, a language-model head)
    are left as they are.

    Raises:
        SelectionError: nothing to do, or ``include`` selects a layer outside the blocks.
    """
    found = select_quant_targets(model, include, exclude, family)
    out, outside = by_block([n for n, _ in found], blocks)
    if outside and include is not None:
        raise SelectionError(
            f"{family} works block by block over {blocks[0][0].rpartition('.')[0] or 'the blocks'}; "
            f"{', '.join(repr(n) for n in outside[:4])}{' ...' if len(outside) > 4 else ''} "
            f"{'lies' if len(outside) == 1 else 'lie'} outside the blocks. Quantize "
            f"{'it' if len(outside) == 1 else 'them'} with tc.quantize(), or leave "
            f"{'it' if len(outside) == 1 else 'them'} out of include=."
        )
    if outside:
        log.info("%s: left in float (outside the blocks): %s", family, ", ".join(outside))
    if not any(out.values()):
        raise SelectionError(
            f"{family}: no layer to quantize inside the blocks "
            f"({', '.join(b for b, _ in blocks[:3])}{', ...' if len(blocks) > 3 else ''})"
            f"{' with include=' + repr(include) if include is not None else ''}"
            f"{' after exclude=' + repr(exclude) if exclude else ''}; if the model is already "
            "quantized, start again from the float model."
        )
    return out


def _plain(module: nn.Module) -> nn.Module:
    """``module`` itself, or for a masked (parametrized) layer a plain copy of its effective weights."""
    if not parametrize.is_parametrized(module):
        return module
    # torch.nn.utils.parametrize.remove_parametrizations would delete the property from the
    # parametrized class, which a deep copy shares with the original: build the copy's plain
    # state by hand instead (the class torch derived the parametrized one from, the effective
    # tensors as parameters).
    plain = copy.deepcopy(module)
    effective = {
        name: (
            getattr(plain, name).detach().clone(),
            plain.parametrizations[name].original.requires_grad,
        )  # type: ignore[index]
        for name in list(plain.parametrizations)  # type: ignore[union-attr]
    }
    del plain._modules["parametrizations"]
    plain.__class__ = type(module).__bases__[0]
    for name, (value, grad) in effective.items():
        plain.register_parameter(name, nn.Parameter(value, requires_grad=grad))
    return plain


def build_layer(module: nn.Module, name: str, config: QuantConfig, reduce: str) -> QuantLayer:
    """The fake-quant layer of ``module`` for ``config`` (a masked layer: its masked weight).

    Static activation quantizers are left idle (not observing, not applied) until
    :func:`calibrate_inputs`.

    Raises:
        ConfigError: the group size does not divide the layer's inputs.
        NumericalError: the weight holds NaN or Inf.
    """
    layer = build_quant_layer(_plain(module), name, config, reduce=reduce)
    fq = layer.input_quant
    if fq is not None and not fq.dynamic:
        fq.observing, fq.enabled = False, False
    return layer


def set_quantized_weight(
    layer: QuantLayer, weight2d: Tensor, scale: Tensor, zero_point: Tensor
) -> None:
    """Give ``layer`` the weight and ranges a method computed.

    Args:
        layer: a fake-quant layer with a weight quantizer.
        weight2d: ``(out, n)``: values on the quantizer's grid (dequantized), so that the layer's
            fake quantization reproduces them exactly.
        scale: the quantizer's scales (its ``scale`` shape).
        zero_point: its zero points.
    """
    wq = layer.weight_quant
    if wq is None:
        raise ConfigError("set_quantized_weight: the layer has no weight quantizer.")
    with torch.no_grad():
        layer.weight.copy_(weight2d.reshape(layer.weight.shape).to(layer.weight))
        wq.scale.copy_(scale.reshape(wq.scale.shape).to(wq.scale))
        wq.zero_point.copy_(
            torch.round(zero_point.float()).reshape(wq.zero_point.shape).to(wq.zero_point)
        )
    wq.calibrated = True


def calibrate_inputs(block: Block, layers: Iterable[QuantLayer]) -> None:
    """Calibrate the static input quantizers of ``layers`` (inside ``block.module``) on the block's
    inputs: one run with them observing, then their ranges set and the quantizers applied.

    Raises:
        CalibrationError: a quantizer saw no data (its layer never ran on the block's inputs).
        NumericalError: NaN or Inf in an activation.
    """
    todo: list[FakeQuantize] = []
    for layer in layers:
        fq = layer.input_quant
        if fq is not None and not fq.dynamic:
            fq.observing, fq.enabled = True, False
            todo.append(fq)
    if not todo:
        return
    try:
        block.run()
    finally:
        for fq in todo:
            fq.observing = False
    never = [fq.name for fq in todo if fq.observer is not None and not fq.observer.observed]
    if never:
        raise CalibrationError(
            f"The activation quantizers of {', '.join(repr(n) for n in never[:4])} saw no data: "
            f"the inputs of block {block.name!r} never reach them."
        )
    for fq in todo:
        fq.calibrate()
        if fq.observer is not None:
            fq.observer.reset()
        fq.enabled = True


def block_output(output: Any) -> Tensor:
    """The hidden states a block returned (its output, or the first element of a tuple)."""
    out = output[0] if isinstance(output, tuple | list) else output
    if not isinstance(out, Tensor):
        raise CalibrationError(
            f"The block returned {type(out).__name__}, not hidden states (a tensor, or a tuple "
            "whose first element is one)."
        )
    return out


def relative_error(outputs: Sequence[Any], reference: Sequence[Tensor]) -> float:
    """``sum ||y - y_ref||^2 / sum ||y_ref||^2`` over batches (float64)."""
    num = den = 0.0
    for out, ref in zip(outputs, reference):
        y = block_output(out).double()
        r = ref.double()
        num += float((y - r).pow(2).sum())
        den += float(r.pow(2).sum())
    return num / max(den, 1e-300)


def ensure_weight_bits(config: QuantConfig, method: str, owner: str) -> None:
    """Raise a clear error unless ``config`` quantizes weights to 2-8 bits."""
    w = config.weight
    if w is None:
        raise ConfigError(
            f"{owner}.quant quantizes no weights; {method} computes quantized weights. Set "
            "quant.weight (e.g. tc.IntSpec(4, granularity='group', group_size=128))."
        )
    if not 2 <= w.bits <= 8:
        raise ConfigError(
            f"{owner}.quant.weight.bits={w.bits}: {method} quantizes weights to 2-8 bits; "
            "16-bit weights gain nothing from it (use tc.quantize)."
        )
