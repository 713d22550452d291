"""``clinalign export RUN OUT --format diffusers``: share a trained model in the Hugging Face / diffusers format."""

from __future__ import annotations

import argparse
from pathlib import Path

from .export import FORMATS, export_diffusers


def cmd_export(args: argparse.Namespace) -> int:
    out = export_diffusers(args.run, args.out, metrics=args.metrics, ema=args.ema)
    print(f"wrote {out} (unet/, scheduler/, pipeline_clinalign.py, class_map.json, README.md)")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a run's model as a diffusers folder with a model card",
        description="Write the latest checkpoint of RUN (or the checkpoint given) to OUT as a folder that "
        "diffusers loads without clinalign: unet/, scheduler/, model_index.json, pipeline_clinalign.py "
        "(class-conditional sampling), class_map.json and README.md (the model card). OUT must be new or empty.",
    )
    p.add_argument("run", type=Path, help="run directory, checkpoints/step_N directory or .safetensors file")
    p.add_argument("out", type=Path, help="the folder to write (new or empty)")
    p.add_argument("--format", choices=FORMATS, default="diffusers", help="output format (default: diffusers)")
    p.add_argument(
        "--metrics",
        type=Path,
        help="metrics.json for the model card (default: evaluation/metrics.json in RUN or the two folders above)",
    )
    p.add_argument(
        "--ema",
        type=lambda v: v if v not in ("True", "False") else v == "True",
        default=True,
        metavar="BOOL|RATE",
        help="export the EMA weights (True: the first rate; or a rate such as 0.9999) or the raw ones (False)",
    )
    p.set_defaults(func=cmd_export)
