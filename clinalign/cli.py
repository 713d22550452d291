"""The ``clinalign`` command: a thin layer that parses flags and calls library functions.

Each stage lives in its own module exposing ``register(subparsers)``; this file only wires them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import ClinalignError

# (module, description) in the order of the loop; a module that fails to import is reported,
# not hidden, so a broken optional stage never masks the others.
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
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # stage not built yet
                continue
            raise
        module.register(sub)
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
