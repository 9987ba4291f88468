"""The ``torchcompress`` command line (also ``python -m torchcompress``).

Commands: ``demo`` (the embedded end-to-end run), ``run RECIPE`` (a recipe, with its report),
``profile MODEL`` (params, MACs, FLOPs and bytes), ``evaluate MODEL`` (accuracy and size on a data
set). Global options (``-v``, ``--debug``, ``--device``, ``--seed``, ``--out``, ``--threads``) go
before or after the command. Exit status: 0 done, 2 bad input (one line on stderr, no traceback
unless ``--debug``), 1 an internal failure. Every long step prints a line when it starts and one
with its duration when it ends (on stderr, also when piped).

Example:
    >>> from torchcompress.cli import main
    >>> main(["run", "no-such-recipe.yaml", "--check"])
    2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from .errors import ConfigError, TorchCompressError

__all__ = ["build_model", "main"]

_PROG = "torchcompress"


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """A model from a ``tc.models`` name, ``package.module:factory(...)`` or ``hf:PATH``.

    Args:
        spec: the model (arguments may follow in parentheses: ``torch.nn:Linear(8, 2)``).
        kwargs: more keyword arguments for the builder.

    Raises:
        ConfigError: the name is unknown, the factory does not import or needs arguments.

    Example:
        >>> build_model("torch.nn:Linear(8, 2)")
        Linear(in_features=8, out_features=2, bias=True)
    """
    from .recipe.specs import build_model as _build
    from .recipe.specs import parse_call

    if spec.startswith("hf:"):
        return _build("hf", spec[3:], (), dict(kwargs)).model
    target, args, kw = parse_call(spec)
    return _build("factory" if ":" in target else "name", target, args, {**kw, **kwargs}).model


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.lower().replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must look like 1,3,32,32") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be positive integers")
    return shape


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _out_dir(args: argparse.Namespace, default: str) -> Path:
    return Path(args.out if args.out is not None else default)


# -------------------------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        model_name=args.model,
        epochs=args.epochs,
        seed=args.seed if args.seed is not None else 0,
        out=sys.stdout,
        quick=args.quick,
        image_size=args.image_size,
        out_dir=_out_dir(args, "runs/demo"),
        device=args.device,
        say=_say,
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from . import recipe as rc
    from .report import text_table

    r = rc.load(args.recipe)
    if args.check:
        kinds = ", ".join(s.kind for s in r.steps)
        print(f"{args.recipe}: valid; baseline: {kinds}; {len(r.variants)} variant(s)")
        if args.dump:
            print(rc.dumps(r), end="")
        return 0
    if args.dump:
        print(rc.dumps(r), end="")
    out = _out_dir(args, str(Path("runs") / Path(args.recipe).stem))
    result = rc.run(
        r,
        out,
        device=args.device,
        seed=args.seed,
        say=_say,
        latency=False if args.no_latency else None,
    )
    print(text_table(result.rows()))
    for b in result.branches:
        if b.skipped:
            print(f"not run: {b.label}: {b.skipped}")
    print(f"report: {out / 'report.md'}")
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    import torchcompress as tc

    if args.out is not None:
        from .report.writer import write_text_files

        write_text_files(Path(args.out), {})  # fails now if the folder cannot be written
    model = build_model(args.model).eval()
    device = torch.device(args.device) if args.device else torch.device("cpu")
    model.to(device)
    if args.weights:
        model = tc.load(args.weights, model)
    x = torch.randn(*args.input_shape, device=device)
    try:
        result = tc.profile(model, x)
    except TorchCompressError:
        raise
    except RuntimeError as e:  # the shape does not fit a model built from a factory
        raise ConfigError(
            f"{args.model} does not run on an input of shape {tuple(args.input_shape)} ({e}); "
            "give --input-shape."
        ) from None
    if args.format == "markdown":
        text = (
            result.to_markdown(depth=args.depth) if args.depth is not None else result.to_markdown()
        )
    elif args.format == "json":
        text = json.dumps(result.to_dict(), indent=2)
    else:
        text = result.table(depth=args.depth) if args.depth is not None else str(result)
    print(text)
    if args.out is not None:
        from .report.writer import write_text_files

        write_text_files(
            Path(args.out),
            {
                "profile.json": json.dumps(result.to_dict(), indent=2) + "\n",
                "profile.md": result.to_markdown() + "\n",
            },
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import recipe as rc
    from .report import text_table

    model = rc.ModelStep.parse(args.model, rc.schema.Where("<command line>", ("MODEL",)))
    if args.weights:
        model = rc.ModelStep(**{**_fields(model), "weights": str(Path(args.weights).resolve())})
    data = rc.DataStep.parse(args.data, rc.schema.Where("<command line>", ("--data",)))
    r = rc.Recipe([model, data], name=f"evaluate {args.model}", latency=None)
    result = rc.run(
        r, args.out, device=args.device, seed=args.seed, say=_say if args.verbose else None
    )
    figures = {k: v for k, v in result.baseline.figures.items() if k != "layers"}
    if args.format == "json":
        print(json.dumps(figures, indent=2))
    else:
        print(text_table(result.rows()))
        if "loss" in figures:
            print(f"loss {figures['loss']:.4f} on {figures['samples']} test samples")
    return 0


def _fields(step: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(step, f.name) for f in dataclasses.fields(step) if f.init}


# ---------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{_PROG}: error: {message} (see '{self.prog} --help')\n")


def _global_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    d: Callable[[Any], Any] = (lambda _v: argparse.SUPPRESS) if suppress else (lambda v: v)
    g = p.add_argument_group("global options (before or after the command)")
    g.add_argument(
        "-v", "--verbose", action="store_true", default=d(False), help="log progress messages"
    )
    g.add_argument(
        "--debug", action="store_true", default=d(False), help="show tracebacks of errors"
    )
    g.add_argument(
        "--device", default=d(None), help="where models run: cpu (default), cuda, cuda:1, ..."
    )
    g.add_argument(
        "--seed", type=int, default=d(None), help="seed for data, initialisation and training"
    )
    g.add_argument(
        "--out", default=d(None), metavar="DIR", help="output folder (report, files, cache)"
    )
    g.add_argument("--threads", type=int, default=d(None), help="torch CPU threads")


def _model_names() -> str:
    from . import models

    return ", ".join(models.names())


def _help(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog=_PROG,
        formatter_class=fmt,
        description=_help(
            """
            torchcompress: compress PyTorch models (quantization, pruning, low-rank, fusion) and
            measure honestly what each technique buys.

            commands:
              demo      an end-to-end run on bundled data, with a table and a report
              run       run a recipe (YAML/JSON) and write its report
              profile   params, MACs, FLOPs and bytes of a model
              evaluate  accuracy and size of a model on a data set
            """
        ),
        epilog=_help(
            """
            examples:
              torchcompress demo --quick
              torchcompress run examples/quantize_int8.yaml --out runs/int8
              torchcompress profile resnet56 --depth 1
              torchcompress evaluate resnet20 --weights runs/int8/model.safetensors
            """
        ),
    )
    p.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    _global_options(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    names = _model_names()

    d = sub.add_parser(
        "demo",
        formatter_class=fmt,
        help="an end-to-end run on bundled data",
        description=_help(
            """
            Train a CIFAR ResNet briefly on scikit-learn's handwritten digits (no download; the
            trained model is cached in the output folder), compress it with each family (int8 PTQ,
            4-bit LSQ QAT, pruning, low-rank, a combination), and print one table of accuracy,
            params, MACs, stored bytes and CPU latency against the baseline. The report (report.md,
            report.json, plots) goes to --out (default runs/demo). A few minutes on 2 cores;
            --quick takes about a minute.
            """
        ),
        epilog=_help(f"example:\n  torchcompress demo --quick --out /tmp/demo\n\nmodels: {names}"),
    )
    d.add_argument("--model", default="resnet20", help="a tc.models name (default: resnet20)")
    d.add_argument(
        "--epochs", type=int, default=None, help="baseline epochs (default 6, 3 with --quick)"
    )
    d.add_argument(
        "--image-size", type=int, default=None, help="digit image side (default 16, 8 with --quick)"
    )
    d.add_argument(
        "--quick", action="store_true", help="8x8 images, shorter training, fewer timing rounds"
    )
    _global_options(d, suppress=True)
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser(
        "run",
        formatter_class=fmt,
        help="run a recipe and write its report",
        description=_help(
            """
            Run a recipe: the baseline steps, then each variant, then the same measurements on
            every model; print the summary table and write report.md, report.json and plots to
            --out (default runs/<recipe name>). The recipe is checked completely before anything
            runs.
            """
        ),
        epilog=_help(
            """
            examples:
              torchcompress run examples/prune_unstructured.yaml --out runs/prune
              torchcompress run my.yaml --check --dump     (check it, print it canonically)
            """
        ),
    )
    r.add_argument("recipe", help="a recipe file (.yaml, .yml or .json)")
    r.add_argument("--check", action="store_true", help="only check the recipe")
    r.add_argument("--dump", action="store_true", help="print the recipe as it was understood")
    r.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    _global_options(r, suppress=True)
    r.set_defaults(func=_cmd_run)

    pr = sub.add_parser(
        "profile",
        formatter_class=fmt,
        help="params, MACs, FLOPs and bytes of a model",
        description=_help(
            """
            Count params, MACs, FLOPs and stored bytes of a model, per layer and in total. MODEL is
            a tc.models name, package.module:factory (arguments in parentheses) or hf:PATH.
            """
        ),
        epilog=_help(
            f"""
            examples:
              torchcompress profile resnet56 --depth 1
              torchcompress profile "torch.nn:Linear(256, 10)" --input-shape 1,256

            models: {names}
            """
        ),
    )
    pr.add_argument("model", help="a tc.models name, package.module:factory(...) or hf:PATH")
    pr.add_argument(
        "--input-shape", type=_parse_shape, default=(1, 3, 32, 32), help="default 1,3,32,32"
    )
    pr.add_argument("--depth", type=int, default=None, help="rows up to this module depth")
    pr.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    pr.add_argument("--weights", default=None, help="a tc.save file to load into the model first")
    _global_options(pr, suppress=True)
    pr.set_defaults(func=_cmd_profile)

    ev = sub.add_parser(
        "evaluate",
        formatter_class=fmt,
        help="accuracy and size of a model on a data set",
        description=_help(
            """
            Evaluate a model (optionally with weights saved by tc.save or a recipe's save step) on
            the test split of a data set: accuracy, loss, params, MACs and stored bytes.
            """
        ),
        epilog=_help(
            f"""
            examples:
              torchcompress evaluate resnet20 --weights runs/demo/model.safetensors
              torchcompress evaluate "mypkg.models:build(width=2)" --data "digits(image_size=8)"

            models: {names}
            data sets: digits, mnist1d, cifar10(root=...), or package.module:factory(...)
            """
        ),
    )
    ev.add_argument("model", help="a tc.models name, package.module:factory(...) or hf:PATH")
    ev.add_argument("--data", default="digits", help="a data set (default: digits)")
    ev.add_argument("--weights", default=None, help="a tc.save file to load into the model")
    ev.add_argument("--format", choices=("table", "json"), default="table")
    _global_options(ev, suppress=True)
    ev.set_defaults(func=_cmd_evaluate)
    return p


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchcompress`` console script; returns the exit status.

    Argument errors exit with status 2 (``SystemExit``) after one line on stderr.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
    )
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be at least 1, got {args.threads}.")
            torch.set_num_threads(args.threads)
        return int(args.func(args))
    except TorchCompressError as e:
        if args.debug:
            traceback.print_exc()
        print(f"{_PROG}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        text = str(e) if hasattr(e, "where") else f"{type(e).__name__}: {e}"
        print(
            f"{_PROG}: internal error: {_one_line(text)} (a bug: please report it; --debug shows "
            "the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
