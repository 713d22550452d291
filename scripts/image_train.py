"""Seed-compatible entry point::

    python scripts/image_train.py --data_dir DIR $MODEL_FLAGS $DIFFUSION_FLAGS $TRAIN_FLAGS


Same flags and defaults as improved-diffusion's image_train.py (eps-prediction, fp32); runs
``clinalign train --recipe seed``.
"""

import sys

import _path  # noqa: F401

from clinalign.cli import main as clinalign_main


def seed_argv(argv: list[str]) -> list[str]:
    """``clinalign train`` arguments with the seed's defaults where ``clinalign train``'s differ."""
    typed_fp16 = any(a == "--use_fp16" or a.startswith("--use_fp16=") for a in argv)
    return ["train", "--recipe", "seed", *([] if typed_fp16 else ["--use_fp16", "False"]), *argv]


if __name__ == "__main__":
    sys.exit(clinalign_main(seed_argv(sys.argv[1:])))
