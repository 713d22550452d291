"""``clinalign train`` and ``clinalign finetune``: pretrain a class-conditional diffusion model on an
image folder, and finetune it on scored synthetic images plus the real data."""

from __future__ import annotations

import argparse

from .finetune import add_finetune_arguments, finetune
from .pretrain import add_train_arguments, pretrain


def cmd_train(args: argparse.Namespace) -> int:
    path = pretrain(args, progress=True)
    print(f"checkpoint: {path}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    path = finetune(args, progress=True)
    print(f"checkpoint: {path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pretrain a diffusion model on real images",
        description="Pretrain a diffusion model on a folder of images (class = file-name prefix before '_'). "
        "Rerunning the same command with the same --run_dir resumes from its latest checkpoint.",
    )
    add_train_arguments(parser)
    parser.set_defaults(func=cmd_train)
    parser = subparsers.add_parser(
        "finetune",
        help="finetune on scored synthetic images plus the real data",
        description="loss = beta * L(real) + reward * L(synthetic), sharing timesteps; starts from "
        "--resume_checkpoint, and rerunning with the same --run_dir resumes.",
    )
    add_finetune_arguments(parser)
    parser.set_defaults(func=cmd_finetune)
