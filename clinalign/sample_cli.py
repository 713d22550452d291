"""``clinalign sample``: draw synthetic images from a checkpoint."""

from __future__ import annotations

import argparse

from .flags import str2bool
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


DEFAULT_STEPS = {"ancestral": None, "ddim": 50, "dpm++": 20}


def run(args: argparse.Namespace) -> int:
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] or None
    steps = args.steps or DEFAULT_STEPS[args.sampler]
    result = sample_folder(args.checkpoint, args.out, num_samples=args.num_samples, classes=classes,
                           sampler=args.sampler, steps=steps, batch_size=args.batch_size, seed=args.seed,
                           ema=args.ema, clip_denoised=args.clip_denoised, eta=args.eta, device=args.device,
                           use_fp16=args.use_fp16, progress=True)
    print(f"wrote {result.written} images to {result.out} "
          f"({', '.join(f'{k}: {v}' for k, v in result.per_class.items())})")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="draw synthetic images from a checkpoint",
                                   description="Draw samples into LABEL_000123.png files with manifest.csv and samples.npz.")
    add_sample_arguments(parser)
    parser.set_defaults(func=run)
