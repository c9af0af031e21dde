"""Command line: parses arguments and calls into the package, nothing else.

Each command group has its own ``_add_*`` function; the work happens in the package.
"""
from __future__ import annotations

import argparse
import sys


def _add_data_commands(sub) -> None:
    """`fp4lab data prepare` (owner: fp4lab/data)."""


def _add_train_commands(sub) -> None:
    """`fp4lab train`, `fp4lab compare`, `fp4lab report` (owner: fp4lab/train, fp4lab/experiments)."""


def _add_recipe_commands(sub) -> None:
    """`fp4lab recipes`, `fp4lab describe` (owner: fp4lab/recipes.py, fp4lab/nn)."""


def _add_ptq_commands(sub) -> None:
    """`fp4lab quantize`, `fp4lab convert`, `fp4lab eval`, `fp4lab inspect` (owner: fp4lab/ptq, fp4lab/export)."""


def _add_bench_commands(sub) -> None:
    """`fp4lab bench ...` (owner: fp4lab/kernels)."""


def build_parser() -> argparse.ArgumentParser:
    from fp4lab import __version__

    parser = argparse.ArgumentParser(
        prog="fp4lab",
        description="Train and serve models in NVFP4 on the GPUs you have, and measure what it costs.",
    )
    parser.add_argument("--version", action="version", version=f"fp4lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_data_commands(sub)
    _add_train_commands(sub)
    _add_recipe_commands(sub)
    _add_ptq_commands(sub)
    _add_bench_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        # bad input gets a message, not a traceback; FP4LAB_DEBUG=1 shows the traceback
        import os

        if os.environ.get("FP4LAB_DEBUG"):
            raise
        print(f"fp4lab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
