"""Seed-compatible entry point::

    python scripts/image_train.py --data_dir DIR $MODEL_FLAGS $DIFFUSION_FLAGS $TRAIN_FLAGS


Same flags and defaults as improved-diffusion's image_train.py; runs ``clinalign train``.
"""

import sys

import _path  # noqa: F401

from clinalign.cli import main as clinalign_main

if __name__ == "__main__":
    sys.exit(clinalign_main(["train", *sys.argv[1:]]))
