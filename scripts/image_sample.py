"""Seed-compatible entry point: ``python scripts/image_sample.py --model_path CKPT $MODEL_FLAGS $DIFFUSION_FLAGS``.

improved-diffusion's flags (``--model_path --num_samples --batch_size --use_ddim --timestep_respacing
--clip_denoised``) plus clinalign's ``--out --classes --seed``. Architecture flags are read from the
checkpoint; typed ones must agree with it. Images go to ``--out`` (default: $OPENAI_LOGDIR or ./samples).
"""

import argparse
import os
import sys

import _path  # noqa: F401

from clinalign.cli import main as clinalign_main
from clinalign.diffusion import DiffusionConfig
from clinalign.errors import ConfigError
from clinalign.models.unet import ModelConfig
from clinalign.training.checkpoint import find_checkpoint
from clinalign.training.loop import check_flags
from clinalign.utils.config import add_flags, str2bool, typed


def to_clinalign_argv(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__)
    add_flags(parser, ModelConfig, inherit=True)
    add_flags(parser, DiffusionConfig, inherit=True)
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--num_samples", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--use_ddim", type=str2bool, default=False)
    parser.add_argument("--clip_denoised", type=str2bool, default=True)
    parser.add_argument("--out", default=os.environ.get("OPENAI_LOGDIR") or "samples")
    parser.add_argument("--classes", default="")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ck = find_checkpoint(args.model_path)
    check_flags(
        ck,
        typed(args, ModelConfig),
        {k: v for k, v in typed(args, DiffusionConfig).items() if k != "timestep_respacing"},
        hint="drop them",
    )
    respacing = args.timestep_respacing or ""
    sampler = "ddim" if args.use_ddim or respacing.startswith("ddim") else "ancestral"
    steps = respacing.removeprefix("ddim")
    if "," in steps:
        raise ConfigError(
            f"--timestep_respacing {respacing!r}: section lists are not supported for sampling; "
            "give one number of steps, e.g. 250 or ddim50"
        )
    return [
        "sample",
        "--checkpoint",
        args.model_path,
        "--num_samples",
        str(args.num_samples),
        "--batch_size",
        str(args.batch_size),
        "--sampler",
        sampler,
        "--steps",
        steps or "0",
        "--clip_denoised",
        str(args.clip_denoised),
        "--out",
        args.out,
        "--classes",
        args.classes,
        "--seed",
        str(args.seed),
    ]


if __name__ == "__main__":
    try:
        argv = to_clinalign_argv(sys.argv[1:])
    except ConfigError as exc:
        print(f"image_sample.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(clinalign_main(argv))
