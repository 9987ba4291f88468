"""Block-by-block calibration over a model's repeated blocks (transformer layers).

Post-training methods for large models (GPTQ, Frantar et al. 2023; SparseGPT, Frantar & Alistarh
2023; AWQ, Lin et al. 2024; SmoothQuant, Xiao et al. 2023) treat one block at a time, each with the
inputs that the already-compressed previous blocks produce. :class:`SequentialRunner` does that:

1. :func:`find_blocks` finds the repeated blocks (the longest ``nn.ModuleList`` of modules of one
   class: BERT's ``encoder.layer``, GPT-2's ``h``, LLaMA's ``layers``), or takes the names given;
2. the model runs on the data until it reaches block 0, whose inputs (positional *and* keyword:
   attention masks, position ids or embeddings) are captured per batch; the forward is stopped by
   an exception there and everything restored (hooks, train/eval flags, the ``use_cache`` flag of a
   Hugging Face config, turned off meanwhile);
3. for each block ``k``, a technique's ``transform(block)`` gets a :class:`Block` (its index,
   name, module and captured inputs, with :meth:`Block.run` and :meth:`Block.collect` to gather
   statistics of its layers with :func:`~torchcompress.calibration.collect` on those inputs) and may
   change the block in place or return a replacement;
4. the (transformed) block runs on its inputs to produce the inputs of block ``k + 1``: its output
   replaces the hidden states, the other arguments are passed on unchanged.

Peak memory is the model plus about two blocks' worth of activations (inputs and outputs of the
current block over the calibration batches), never every layer's activations at once.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.calibration import SequentialRunner
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.blocks = nn.ModuleList(
    ...             nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(3))
    ...     def forward(self, x):
    ...         for b in self.blocks:
    ...             x = b(x)
    ...         return x
    >>> seen = []
    >>> def transform(block):  # e.g. GPTQ: X^T X of every layer, inputs from the blocks before
    ...     seen.append((block.name, block.collect(["xtx"])["0"]["xtx"].shape))
    >>> outputs = SequentialRunner(Net(), torch.randn(8, 4)).run(transform)
    >>> seen[2], outputs[0].shape
    (('blocks.2', torch.Size([1, 4, 4])), torch.Size([8, 4]))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..batches import Batch, run_model
from ..errors import CalibrationError, SelectionError, did_you_mean
from ..layers import layer_kind
from ..progress import progress_bar
from ..select import set_module
from .engine import Collected, collect, run_batches

__all__ = ["Block", "Inputs", "SequentialRunner", "by_block", "find_blocks", "next_inputs"]

log = logging.getLogger(__name__)

#: The captured inputs of a block for one batch: positional arguments and keyword arguments.
Inputs = tuple[tuple[Any, ...], dict[str, Any]]


def find_blocks(
    model: nn.Module, blocks: str | Sequence[str] | None = None
) -> list[tuple[str, nn.Module]]:
    """The model's repeated blocks, in order, as ``(qualified name, module)``.

    Args:
        model: the model.
        blocks: ``None`` to find them (the longest ``nn.ModuleList`` of two or more modules of one
            class, ties broken by parameter count); the name of a container whose children are the
            blocks (``"encoder.layer"``); or the blocks' names.

    Raises:
        SelectionError: a name matches no module, or nothing repeats.
    """
    names = [n for n, _ in model.named_modules() if n]
    if blocks is None:
        best: tuple[int, int, str] | None = None
        for name, mod in model.named_modules():
            kids = list(mod.children()) if isinstance(mod, nn.ModuleList) else []
            if len(kids) < 2 or len({type(k) for k in kids}) != 1:
                continue
            size = sum(p.numel() for p in mod.parameters())
            if size == 0:
                continue
            key = (len(kids), size, name)
            if best is None or key[:2] > best[:2]:
                best = key
        if best is None:
            raise SelectionError(
                f"{type(model).__name__} has no repeated blocks (no nn.ModuleList of two or more "
                "modules of one class, with parameters); pass blocks='container.name' or the "
                "blocks' names."
            )
        blocks = best[2]
    if isinstance(blocks, str):
        if blocks not in names:
            raise SelectionError(
                f"blocks={blocks!r} matches no module of {type(model).__name__}."
                f"{did_you_mean(blocks, names)}"
            )
        container = model.get_submodule(blocks)
        out = [(f"{blocks}.{n}", m) for n, m in container.named_children()]
        if len(out) < 1:
            raise SelectionError(f"blocks={blocks!r} has no child modules to run block by block.")
        return out
    out = []
    for n in blocks:
        if n not in names:
            raise SelectionError(
                f"Block {n!r} matches no module of {type(model).__name__}.{did_you_mean(n, names)}"
            )
        out.append((n, model.get_submodule(n)))
    if not out:
        raise SelectionError("blocks= is empty; name at least one block.")
    return out


def by_block(
    names: Iterable[str], blocks: Sequence[tuple[str, nn.Module]]
) -> tuple[dict[str, list[str]], list[str]]:
    """Sort qualified layer names by the block holding them.

    Returns:
        ``(inside, outside)``: block name -> the names inside it, relative to the block (every
        block listed, in order), and the names in no block.

    Example:
        >>> from torch import nn
        >>> by_block(["h.0.fc", "h.1.fc", "head"], [("h.0", nn.Linear(1, 1)), ("h.1", nn.Linear(1, 1))])
        ({'h.0': ['fc'], 'h.1': ['fc']}, ['head'])
    """
    inside: dict[str, list[str]] = {name: [] for name, _ in blocks}
    outside: list[str] = []
    for name in names:
        owner = next((b for b, _ in blocks if name.startswith(b + ".")), None)
        if owner is None:
            outside.append(name)
        else:
            inside[owner].append(name[len(owner) + 1 :])
    return inside, outside


def next_inputs(inputs: Inputs, output: Any) -> Inputs:
    """Block ``k+1``'s inputs: block ``k``'s output replaces the hidden states, the rest is kept.

    The hidden states are the first positional argument (or the ``hidden_states`` keyword, or the
    first tensor keyword); a tuple or list output contributes its first element.
    """
    args, kwargs = inputs
    hidden = output[0] if isinstance(output, tuple | list) else output
    if args:
        return (hidden, *args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else None
    if key is None:
        key = next((k for k, v in kwargs.items() if isinstance(v, Tensor)), None)
    if key is None:
        raise CalibrationError("The block's inputs hold no tensor to replace by its output.")
    return args, {**kwargs, key: hidden}


class _BlockReachedError(Exception):
    """Raised by the hook on block 0 to stop the model's forward there."""


@dataclass
class Block:
    """One block during a :class:`SequentialRunner` run, as the transform sees it.

    Attributes:
        index: its position among the blocks.
        name: its qualified name in the model.
        module: the block.
        inputs: its captured inputs, one ``(args, kwargs)`` per calibration batch.
    """

    index: int
    name: str
    module: nn.Module
    inputs: list[Inputs] = field(default_factory=list)

    def batches(self) -> list[Batch]:
        """The inputs as :class:`~torchcompress.batches.Batch` es (data for ``collect``)."""
        return [Batch(args=a, kwargs=k) for a, k in self.inputs]

    def layers(self) -> list[tuple[str, nn.Module]]:
        """The weight layers inside the block (names relative to it; ``""`` is the block itself)."""
        return [(n, m) for n, m in self.module.named_modules() if layer_kind(m) is not None]

    def run(self, module: nn.Module | None = None) -> list[Any]:
        """Outputs of ``module`` (default: the block) on every captured input, in eval mode."""
        mod = self.module if module is None else module
        outs: list[Any] = []

        def step(batch: Batch, i: int) -> None:
            outs.append(run_model(mod, batch, index=i, what=f"the inputs of block {self.name!r}"))

        run_batches(mod, self.batches(), step=step, progress=False)
        return outs

    def collect(
        self, requests: Mapping[str, Iterable[str]] | Iterable[str], **kwargs: Any
    ) -> Collected:
        """:func:`~torchcompress.calibration.collect` on this block with its captured inputs.

        Args:
            requests: layer name (relative to the block) -> statistic names, or statistic names
                for every weight layer of the block.
            **kwargs: passed on (``loss_fn``, ``require_all``, ...).
        """
        if not isinstance(requests, Mapping):
            wanted = list(requests)
            requests = {n: wanted for n, _ in self.layers()}
        kwargs.setdefault("progress", False)
        kwargs.setdefault("what", f"the inputs of block {self.name!r}")
        return collect(self.module, self.batches(), requests, **kwargs)


class SequentialRunner:
    """Run a transform over a model's repeated blocks, one block at a time.

    Args:
        model: the model (its blocks may be changed or replaced by the transform).
        data: calibration batches (any iterable of batches, see :mod:`torchcompress.batches`).
        blocks: which blocks (see :func:`find_blocks`; default: found automatically).
        max_batches: use at most this many batches.
        progress: a progress bar over the blocks (``None``: when interactive).
        desc: its label.
        advance: how block ``k``'s output becomes block ``k+1``'s inputs (default :func:`next_inputs`).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        blocks: str | Sequence[str] | None = None,
        max_batches: int | None = None,
        progress: bool | None = None,
        desc: str = "blocks",
        advance: Callable[[Inputs, Any], Inputs] = next_inputs,
    ) -> None:
        self.model = model
        self.data = data
        self.blocks = find_blocks(model, blocks)
        self.max_batches = max_batches
        self.progress = progress
        self.desc = desc
        self.advance = advance

    def capture(self) -> list[Inputs]:
        """Block 0's inputs, one ``(args, kwargs)`` per batch (the model is stopped there).

        Raises:
            CalibrationError: a batch never reaches block 0.
        """
        name, first = self.blocks[0]
        captured: list[Inputs] = []

        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append((tuple(args), dict(kwargs)))
            raise _BlockReachedError

        def step(batch: Batch, i: int) -> None:
            if "use_cache" in batch.kwargs:
                batch = Batch(batch.args, {**batch.kwargs, "use_cache": False}, batch.target)
            try:
                run_model(self.model, batch, index=i, what="calib_data")
            except _BlockReachedError:
                return
            raise CalibrationError(
                f"Batch {i} of calib_data never reached block {name!r}: the model returned "
                "before calling it. Pass blocks= naming the blocks the forward runs."
            )

        config = getattr(self.model, "config", None)
        use_cache = getattr(config, "use_cache", None)
        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            if use_cache is not None:
                config.use_cache = False  # type: ignore[union-attr]
            run_batches(
                self.model,
                self.data,
                step=step,
                max_batches=self.max_batches,
                progress=False,
                what="calib_data",
            )
        finally:
            handle.remove()
            if use_cache is not None:
                config.use_cache = use_cache  # type: ignore[union-attr]
        return captured

    def run(self, transform: Callable[[Block], nn.Module | None]) -> list[Any]:
        """Call ``transform`` on each block in order, feeding it the previous blocks' outputs.

        Args:
            transform: ``transform(block) -> None`` (changes ``block.module`` in place) or a
                replacement module, set into the model before the block's outputs are computed.

        Returns:
            The last block's outputs, one per batch.
        """
        inputs = self.capture()
        config = getattr(self.model, "config", None)
        use_cache = getattr(config, "use_cache", None)
        outputs: list[Any] = []
        try:
            if use_cache is not None:
                config.use_cache = False  # type: ignore[union-attr]
            for k in progress_bar(range(len(self.blocks)), desc=self.desc, enabled=self.progress):
                name, module = self.blocks[k]
                block = Block(k, name, module, inputs)
                new = transform(block)
                if new is not None and new is not module:
                    set_module(self.model, name, new)
                    self.blocks[k] = (name, new)
                    block.module = new
                with torch.no_grad():
                    outputs = block.run()
                inputs = [self.advance(i, o) for i, o in zip(inputs, outputs)]
                log.debug("sequential: block %d/%d (%s) done", k + 1, len(self.blocks), name)
        finally:
            if use_cache is not None:
                config.use_cache = use_cache  # type: ignore[union-attr]
        return outputs
