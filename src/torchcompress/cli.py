"""The ``torchcompress`` command line.

- ``torchcompress demo``: a real end-to-end run on data that ships with the dependencies
  (scikit-learn's handwritten digits): train a CIFAR ResNet briefly, then compress it with each family
  that is available and print accuracy, size, MACs and CPU latency side by side.
- ``torchcompress profile MODEL``: params, MACs, FLOPs and bytes of a model from ``tc.models`` (or
  ``package.module:factory``), per layer and in total.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import torch
from torch import nn

from .errors import ConfigError, TorchCompressError

__all__ = ["build_model", "main"]


def build_model(spec: str, **kwargs: object) -> nn.Module:
    """A model from a ``tc.models`` name or an import path ``package.module:factory``.

    Raises:
        ConfigError: the name is unknown or the factory cannot be imported.
    """
    from . import models

    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"Cannot import model factory {spec!r}: {e}") from e
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{spec!r} returned {type(model).__name__}, not an nn.Module.")
        return model
    return models.create(spec, **kwargs)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.lower().replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape {text!r} must look like 1,3,32,32") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"input shape {text!r} must be positive integers")
    return shape


def _cmd_profile(args: argparse.Namespace) -> int:
    from .profiling import profile

    model = build_model(args.model).eval()
    x = torch.randn(*args.input_shape)
    result = profile(model, x)
    if args.format == "markdown":
        print(
            result.to_markdown(depth=args.depth) if args.depth is not None else result.to_markdown()
        )
    elif args.format == "json":
        import json

        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table(depth=args.depth) if args.depth is not None else result)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        model_name=args.model,
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        out=sys.stdout,
        quick=args.quick,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(
        prog="torchcompress", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--version", action="version", version=f"torchcompress {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="an end-to-end compression run on the bundled digits data")
    d.add_argument("--model", default="resnet20", help="a tc.models name (default: resnet20)")
    d.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: 8, 3 with --quick)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    d.add_argument("--quick", action="store_true", help="fewer epochs and timing rounds")
    d.set_defaults(func=_cmd_demo)

    pr = sub.add_parser("profile", help="params, MACs, FLOPs and bytes of a model")
    pr.add_argument("model", help="a tc.models name (e.g. resnet56) or package.module:factory")
    pr.add_argument(
        "--input-shape", type=_parse_shape, default=(1, 3, 32, 32), help="default 1,3,32,32"
    )
    pr.add_argument("--depth", type=int, default=None, help="rows up to this module depth")
    pr.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    pr.set_defaults(func=_cmd_profile)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchcompress`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s"
    )
    try:
        return int(args.func(args))
    except TorchCompressError as e:
        print(f"torchcompress: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
