"""``clinalign sample``: draw synthetic images from a checkpoint (optionally rejection-sampled)."""

from __future__ import annotations

import argparse
import os

from ..utils.config import add_flags, resolve
from .rejection import reward_acceptor
from .sample import SampleConfig, check_one_process, sample_folder


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a run directory (its latest checkpoint), a checkpoints/step_N directory or a .safetensors file",
    )
    parser.add_argument("--out", required=True, help="output folder (created; rerunning continues an interrupted run)")
    add_flags(parser, SampleConfig, skip=("max_draw_factor",))
    group = parser.add_argument_group("rejection sampling (keep only what the reward model accepts)")
    group.add_argument("--reward_checkpoint", default="", help="reward model directory (clinalign reward train)")
    group.add_argument("--min_reward", type=float, default=0.5, help="accept a sample when its reward is at least this")
    add_flags(group, SampleConfig, only=("max_draw_factor",))


def cmd_sample(args: argparse.Namespace) -> int:
    cfg = resolve(SampleConfig, args)
    check_one_process(args.reward_checkpoint or None)
    accept = (
        reward_acceptor(args.reward_checkpoint, args.min_reward, args.checkpoint) if args.reward_checkpoint else None
    )
    result = sample_folder(args.checkpoint, args.out, cfg, accept=accept, progress=True)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun every rank has the result; one prints it
        return 0
    print(
        f"wrote {result.written} images to {result.out} ({', '.join(f'{k}: {v}' for k, v in result.per_class.items())})"
    )
    if accept is not None:
        print(
            f"acceptance rate: {result.acceptance_rate:.1%} ({result.written} accepted of {result.drawn} drawn, "
            f"reward >= {args.min_reward})"
        )
        for name, missing in result.short.items():
            print(
                f"  {name}: {missing} short after {result.drawn_per_class[name]} draws; the model rarely makes a "
                f"{name} the reward model accepts"
            )
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="draw synthetic images from a checkpoint",
        description="Draw samples into LABEL_000123.png files with manifest.csv and samples.npz. Under "
        "torchrun --nproc_per_node N the batches are shared among N processes (the same files as one process).",
    )
    add_sample_arguments(parser)
    parser.set_defaults(func=cmd_sample)
