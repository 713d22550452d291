"""``clinalign loop`` (K rounds of sample -> feedback -> reward model -> finetune) and ``clinalign demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..utils.config import add_flags, resolve
from .demo import DemoConfig, format_table, run_demo
from .rounds import AwaitingFeedback, FeedbackSource, RoundConfig, round_summary, run_loop


def cmd_loop(args: argparse.Namespace) -> int:
    try:
        results = run_loop(
            args.checkpoint,
            args.real,
            args.out,
            args.rounds,
            args.real_val or None,
            resolve(RoundConfig, args),
            FeedbackSource(
                folder=Path(args.feedback) if args.feedback else None,
                db=args.db,
                per_image=args.per_image,
                qc_share=args.qc_share,
                review_timeout_s=args.review_timeout,
                expert_real=Path(args.expert_real) if args.expert_real else None,
            ),
            progress=True,
        )
    except AwaitingFeedback as pause:
        print(f"paused: {pause}")
        return 0
    for row in round_summary(results):
        print(json.dumps(row))
    print(f"final checkpoint: {results[-1].checkpoint}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "loop",
        help="run K rounds of sample -> feedback -> reward -> finetune",
        description="Each round's artefacts go to OUT/round_k/; rerunning resumes. Feedback comes from the "
        "simulated expert, or from --feedback DIR (CLASS/align|notalign, one round).",
    )
    parser.add_argument("--checkpoint", required=True, help="the pretrained model (run dir or checkpoint)")
    parser.add_argument("--real", required=True, help="the generator's real training images (seed naming)")
    parser.add_argument(
        "--expert_real",
        default="",
        help="real images the simulated expert learns from, ones the generator never saw (e.g. pool E of "
        "`clinalign data pools`; default: --real)",
    )
    parser.add_argument("--real_val", default="", help="real validation images for the reward model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--feedback",
        default="",
        help="folder of expert judgements (CLASS/align|notalign) of round 1's samples; when it does "
        "not exist yet the loop stops after sampling and tells you what to judge",
    )
    parser.add_argument(
        "--db",
        default="",
        help="review database URL: load each round's samples into the review "
        "app and wait until they are judged (instead of the simulated expert)",
    )
    parser.add_argument("--per_image", type=int, default=1, help="with --db, reviewers who judge each image")
    parser.add_argument(
        "--qc_share",
        type=float,
        default=0.1,
        help="with --db, the share of the review queue that is blind real images (quality control)",
    )
    parser.add_argument(
        "--review_timeout",
        type=float,
        default=0.0,
        help="with --db, stop waiting after this many seconds (0 = wait); rerun to continue",
    )
    add_flags(parser.add_argument_group("each round"), RoundConfig)
    parser.set_defaults(func=cmd_loop)
    register_demo(subparsers)


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = resolve(DemoConfig, args)
    summary = run_demo(cfg, progress=True)
    print()
    print(format_table(summary))
    print(f"\nwall time: {summary['seconds']['total']:.0f} s   report: {summary['report']}")
    return 0


def register_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole loop on toy cells (or your data) and print a before/after table",
        description="pretrain -> sample -> simulated expert -> reward model -> finetune -> evaluate, "
        "in about 14 minutes on one CPU core with the default toy cells.",
    )
    add_flags(parser, DemoConfig)
    parser.set_defaults(func=cmd_demo)
