"""``clinalign finetune``: reward-weighted finetuning of a pretrained checkpoint."""

from __future__ import annotations

import argparse

from .finetune import add_finetune_arguments, finetune


def run(args: argparse.Namespace) -> int:
    path = finetune(args, progress=True)
    print(f"checkpoint: {path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="finetune on scored synthetic images plus the real data",
        description="loss = beta * L(real) + reward * L(synthetic), sharing timesteps; starts from "
        "--resume_checkpoint, and rerunning with the same --run_dir resumes.")
    add_finetune_arguments(parser)
    parser.set_defaults(func=run)
