"""Seed-compatible entry point::

    python scripts/image_finetuned.py --data_pre_dir DIR --data_mod_dir DIR --resume_checkpoint CKPT \
        $MODEL_FLAGS $DIFFUSION_FLAGS $TRAIN_FLAGS


The rewards CSV (``ID,rewards``) is read from DATA_MOD_DIR (or ``--rewards``); runs ``clinalign finetune``.
"""

import sys

import _path  # noqa: F401

from clinalign.cli import main as clinalign_main

if __name__ == "__main__":
    sys.exit(clinalign_main(["finetune", *sys.argv[1:]]))
