"""The ``clinalign`` command: a thin layer that parses flags and calls library functions.

Each stage lives in its own module exposing ``register(subparsers)``; this file only wires them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import ClinalignError

# The stages' command modules, in the order of the loop. An import error is raised, not hidden.
STAGES = [
    "clinalign.data.cli",
    "clinalign.training.cli",
    "clinalign.sampling.cli",
    "clinalign.review.cli",
    "clinalign.reward.cli",
    "clinalign.expert.cli",
    "clinalign.evaluate.cli",
    "clinalign.concepts.cli",
    "clinalign.pipeline.cli",
    "clinalign.interop.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clinalign",
        description="Pathologist-in-the-loop alignment of synthetic medical images "
        "(pretrain -> sample -> expert feedback -> reward model -> finetune -> evaluate).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    for name in STAGES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except ClinalignError as exc:
        print(f"clinalign: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clinalign: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
