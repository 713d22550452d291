"""Seed-compatible entry point: train the reward (scoring) model.

    cd Classifier
    python train_scoring_function.py --train_dir ../data/train --train_anno_dir ../data/feedback/train \
        --val_dir ../data/val --val_anno_dir ../data/feedback/val --save_checkpoints_dir ../checkpoints/reward

Same flags as the published script (plus clinalign's own; ``--help`` lists them); runs
``clinalign reward train``. ``--save_checkpoints_dir`` is what ``clinalign reward score
--checkpoint`` takes. Works from this folder or the repository root without installing clinalign.
"""

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from clinalign.errors import ClinalignError  # noqa: E402
from clinalign.reward.cli import add_train_arguments, cmd_train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Configurations for Model training (clinalign reward train)")
    add_train_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        cmd_train(args)
    except ClinalignError as exc:
        print(f"train_scoring_function.py: error: {exc}", file=sys.stderr)
        return 2
    print("Done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
