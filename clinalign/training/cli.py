"""``clinalign train`` and ``clinalign finetune``: pretrain a class-conditional diffusion model on an
image folder, and finetune it on scored synthetic images plus the real data."""

from __future__ import annotations

import argparse

from .finetune import add_finetune_arguments, finetune
from .pretrain import add_train_arguments, pretrain

# `clinalign train`'s recipe when a new run types no objective flag (docs/performance.md: v in
# bf16 reached in 250 steps the FID x0 reached in 1000, and eps none). The seed's scripts keep
# the seed's meaning (eps, fp32), and a resumed run keeps its checkpoint's objective.
RECIPE = {"prediction": "v", "use_fp16": True}


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with :data:`RECIPE`'s objective for a new run whose command typed none."""
    from ..utils.config import resolve
    from .checkpoint import latest_checkpoint
    from .config import TrainConfig

    new_run = not (args.resume_checkpoint or args.init_from or latest_checkpoint(resolve(TrainConfig, args).run_path()))
    if args.recipe == "clinalign" and new_run and args.prediction is None and args.predict_xstart is None:
        args.prediction = RECIPE["prediction"]
    return args


def cmd_train(args: argparse.Namespace) -> int:
    path = pretrain(apply_recipe(args), progress=True)
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
    add_train_arguments(parser, defaults=RECIPE)
    parser.add_argument(
        "--recipe",
        choices=("clinalign", "seed"),
        default="clinalign",
        help="clinalign: a new run that types no objective flag predicts v (--prediction v) and trains in "
        "bf16 (--use_fp16 True); seed: improved-diffusion's eps-prediction (scripts/image_train.py passes it "
        "with --use_fp16 False) (default: clinalign)",
    )
    parser.set_defaults(func=cmd_train)
    parser = subparsers.add_parser(
        "finetune",
        help="finetune on scored synthetic images plus the real data",
        description="loss = beta * L(real) + reward * L(synthetic), sharing timesteps; starts from "
        "--resume_checkpoint, and rerunning with the same --run_dir resumes.",
    )
    add_finetune_arguments(parser)
    parser.set_defaults(func=cmd_finetune)
