"""``clinalign sample``: draw synthetic images from a checkpoint."""

from __future__ import annotations

import argparse

import torch

from ..training.config import str2bool
from .sample import SAMPLERS, sample_folder


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory (its latest checkpoint), a checkpoints/step_N directory or a .safetensors file")
    parser.add_argument("--num_samples", type=int, default=16, help="images in total, spread evenly over --classes")
    parser.add_argument("--classes", default="", help="comma-separated class names (default: every class of the run)")
    parser.add_argument("--sampler", default="ancestral", choices=SAMPLERS,
                        help="ancestral (DDPM), ddim, or dpm++ (DPM-Solver++(2M), good at 10-25 steps)")
    parser.add_argument("--steps", type=int, default=0, help="denoising steps (0 = all training steps for ancestral, 50 for ddim, 20 for dpm++)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", required=True, help="output folder (created; rerunning continues an interrupted run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", type=str2bool, default=True, metavar="BOOL", help="use the EMA weights")
    parser.add_argument("--clip_denoised", type=str2bool, default=True, metavar="BOOL")
    parser.add_argument("--use_fp16", type=str2bool, default=False, metavar="BOOL", help="bf16 autocast")
    parser.add_argument("--device", default="auto")
    group = parser.add_argument_group("rejection sampling (keep only what the reward model accepts)")
    group.add_argument("--reward_checkpoint", default="", help="reward model directory (clinalign reward train)")
    group.add_argument("--min_reward", type=float, default=0.5, help="accept a sample when its reward is at least this")
    group.add_argument("--max_draw_factor", type=int, default=50,
                       help="give up on a class after drawing this many times its quota")


DEFAULT_STEPS = {"ancestral": None, "ddim": 50, "dpm++": 20}


def run(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] or None
    accept = reward_acceptor(args.reward_checkpoint, args.min_reward, args.checkpoint) if args.reward_checkpoint else None
    steps = args.steps or DEFAULT_STEPS[args.sampler]
    result = sample_folder(args.checkpoint, args.out, num_samples=args.num_samples, classes=classes,
                           sampler=args.sampler, steps=steps, batch_size=args.batch_size, seed=args.seed,
                           ema=args.ema, clip_denoised=args.clip_denoised, eta=args.eta, device=args.device,
                           use_fp16=args.use_fp16, progress=True, accept=accept,
                           max_draw_factor=args.max_draw_factor)
    print(f"wrote {result.written} images to {result.out} "
          f"({', '.join(f'{k}: {v}' for k, v in result.per_class.items())})")
    if accept is not None:
        print(f"acceptance rate: {result.acceptance_rate:.1%} ({result.written} accepted of {result.drawn} drawn, "
              f"reward >= {args.min_reward})")
        for name, missing in result.short.items():
            print(f"  {name}: {missing} short after {result.drawn_per_class[name]} draws; the model rarely makes a "
                  f"{name} the reward model accepts")
    return 0


def reward_acceptor(reward_dir: str, min_reward: float, checkpoint: str):
    """Accept a sample when the reward model scores it at least ``min_reward`` for its declared class."""
    from ..training.checkpoint import find_checkpoint
    from ..reward import RewardModel

    reward = RewardModel.load(reward_dir)
    names = find_checkpoint(checkpoint).class_map.names

    def accept(images, labels):
        scores = reward.score_names(images, [names[int(i)] for i in labels])
        scores = torch.as_tensor(scores, dtype=torch.float32)
        return scores >= min_reward, scores

    return accept


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="draw synthetic images from a checkpoint",
                                   description="Draw samples into LABEL_000123.png files with manifest.csv and samples.npz.")
    add_sample_arguments(parser)
    parser.set_defaults(func=run)
