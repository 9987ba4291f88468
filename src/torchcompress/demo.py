"""The embedded demo behind ``torchcompress demo``.

A real end-to-end run on data that ships with the dependencies: the recipe ``recipes/demo.yaml``
inside the package. A CIFAR ResNet is trained for a few epochs on scikit-learn's handwritten digits
(reused from the output folder's cache on the next run), then compressed by each family in turn —
int8 post-training quantization, 4-bit LSQ quantization-aware training, channel pruning with
fine-tuning and distillation as its recovery (when ``tc.prune_channels`` / ``tc.distill`` are in
the build), unstructured pruning, low-rank under a params budget, and low-rank followed by int8.
Every model is measured the same way (test accuracy, params, MACs, stored bytes, CPU latency in
interleaved rounds with its spread), printed as one table, and written with plots to the output
folder's ``report.md`` / ``report.json``. Labels are made from the steps that ran, so they say
exactly what each model is.

``quick`` uses 8x8 images, 3 baseline epochs, one epoch per fine-tuning and fewer timing rounds.

Example:
    >>> from torchcompress.demo import demo_recipe
    >>> r = demo_recipe(quick=True)
    >>> r.steps[2].label(), r.variants[1].label()
    ('fine-tuned 3 ep', 'BN folded + W8A8 percentile static PTQ + converted')
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import torch

__all__ = ["DEMO_RECIPE", "demo_recipe", "run_demo"]

#: The demo's recipe file inside the package.
DEMO_RECIPE = "recipes/demo.yaml"


def demo_recipe(
    *,
    model_name: str = "resnet20",
    epochs: int | None = None,
    quick: bool = False,
    image_size: int | None = None,
) -> Any:
    """The demo's :class:`~torchcompress.recipe.Recipe`, adjusted.

    Args:
        model_name: a ``tc.models`` name for the model step.
        epochs: baseline training epochs (default: the recipe's 6, or 3 with ``quick``).
        quick: 8x8 images, one epoch per fine-tuning, fewer timing rounds.
        image_size: side of the (resized) digit images (default 16, or 8 with ``quick``).

    Raises:
        ConfigError: an unknown model name or a bad value (before anything runs).
    """
    from . import recipe as rc

    res = resources.files("torchcompress").joinpath(DEMO_RECIPE)
    r = rc.loads(res.read_text(), source=str(res) if isinstance(res, Path) else None, check=False)
    size = image_size if image_size is not None else (8 if quick else None)

    def adjust(step: Any, baseline: bool) -> Any:
        if isinstance(step, rc.ModelStep):
            return dataclasses.replace(step, name=model_name)
        if isinstance(step, rc.DataStep) and size is not None:
            return dataclasses.replace(step, kwargs={**step.kwargs, "image_size": size})
        if isinstance(step, rc.FinetuneStep):
            if baseline and (epochs is not None or quick):
                return dataclasses.replace(step, epochs=epochs if epochs is not None else 3)
            if not baseline and quick:
                return dataclasses.replace(step, epochs=1)
        return step

    r.steps = [adjust(s, True) for s in r.steps]
    for v in r.variants:
        v.steps = [adjust(s, False) for s in v.steps]
    if quick and r.latency is not None:
        r.latency = dataclasses.replace(r.latency, min_rounds=3, max_rounds=9, round_time=0.05)
    return rc.validate(r)


def run_demo(
    *,
    model_name: str = "resnet20",
    epochs: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    out: TextIO | None = None,
    quick: bool = False,
    image_size: int | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    say: Any = None,
) -> list[dict[str, Any]]:
    """Run the demo; print the table to ``out``; write the report to ``out_dir``; return the rows.

    Args:
        model_name: a ``tc.models`` name.
        epochs: training epochs of the baseline (default 6, or 3 with ``quick``).
        seed: for data split, initialisation and training.
        threads: torch CPU threads (default: torch's choice).
        out: a text stream for the header, the table and its legend (progress lines go there too
            unless ``say`` is given).
        quick: 8x8 images, shorter training, fewer timing rounds.
        image_size: side of the digit images (default 16, or 8 with ``quick``).
        out_dir: the output folder (report, plots, cached baseline); default: a temporary folder.
        device: where the models train and run (default CPU).
        say: called with each progress line (default: printed to ``out``).

    Returns:
        One dict per model (``variant``, ``accuracy``, ``params``, ``macs``, ``effective_macs``,
        ``bytes``, ``latency`` relative to the baseline, ``latency_spread``, ...), baseline first.
    """
    import torchcompress as tc

    from .report import text_table

    def echo(msg: str) -> None:
        if out is not None:
            print(msg, file=out, flush=True)

    recipe = demo_recipe(model_name=model_name, epochs=epochs, quick=quick, image_size=image_size)
    if threads:
        torch.set_num_threads(threads)
    folder = (
        Path(out_dir)
        if out_dir is not None
        else Path(tempfile.mkdtemp(prefix="torchcompress-demo-"))
    )
    data_step = next(s for s in recipe.steps if s.kind == "data")
    size = data_step.kwargs.get("image_size", 32)
    echo(
        f"torchcompress {tc.__version__} demo: {model_name} on scikit-learn digits ({size}x{size}), "
        f"{torch.get_num_threads()} CPU threads; report in {folder}"
    )
    t0 = time.perf_counter()
    result = tc.recipe.run(recipe, folder, seed=seed, device=device, say=say or echo)
    rows = result.rows()
    echo("")
    echo(text_table(rows))
    echo("")
    echo(
        "accuracy on the 450 test digits; params, MACs (multiply-accumulates per image) and stored "
        "bytes relative to the baseline; eff. MACs: those a sparsity-aware kernel would run; latency: "
        f"batch-{recipe.latency.batch_size if recipe.latency else '-'} CPU time relative to the "
        "baseline, median of interleaved rounds ± half their interquartile range. Dense kernels gain "
        "no speed from unstructured sparsity."
    )
    for b in result.branches:
        if b.skipped:
            echo(f"not run: {b.label}: {b.skipped}")
    echo(f"done in {time.perf_counter() - t0:.0f} s; report: {folder / 'report.md'}")
    return rows
