"""``clinalign train``: pretrain a class-conditional diffusion model on an image folder."""

from __future__ import annotations

import argparse

from .pretrain import add_train_arguments, pretrain


def run(args: argparse.Namespace) -> int:
    path = pretrain(args, progress=True)
    print(f"checkpoint: {path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="pretrain a diffusion model on real images",
        description="Pretrain a diffusion model on a folder of images (class = file-name prefix before '_'). "
        "Rerunning the same command with the same --run_dir resumes from its latest checkpoint.")
    add_train_arguments(parser)
    parser.set_defaults(func=run)
