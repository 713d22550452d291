"""``clinalign loop`` (K rounds of sample -> feedback -> reward model -> finetune) and ``clinalign demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..training.finetune import OBJECTIVES, REWARD_TRANSFORMS
from ..training.config import str2bool
from .demo import DemoConfig, format_table, run_demo
from .rounds import AwaitingFeedback, RoundConfig, round_summary, run_loop


def add_round_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    d = RoundConfig()
    parser.add_argument("--samples_per_class", type=int, default=d.samples_per_class)
    parser.add_argument("--sampler", default=d.sampler, choices=("ancestral", "ddim", "dpm++"))
    parser.add_argument("--steps", type=int, default=d.steps, help="denoising steps per sample")
    parser.add_argument("--tau", type=float, default=d.tau, help="simulated expert's strictness")
    parser.add_argument("--noise", type=float, default=d.noise, help="simulated expert's label-noise rate")
    parser.add_argument("--reward_epochs", type=int, default=d.reward_epochs)
    parser.add_argument("--finetune_steps", type=int, default=d.finetune_steps)
    parser.add_argument("--finetune_lr", type=float, default=d.finetune_lr)
    parser.add_argument("--finetune_batch", type=int, default=d.finetune_batch)
    parser.add_argument("--beta", type=float, default=d.beta)
    parser.add_argument("--reward_transform", default=d.reward_transform, choices=REWARD_TRANSFORMS)
    parser.add_argument("--objective", default=d.objective, choices=OBJECTIVES,
                        help="reward-weighted (the paper's) or Diffusion-KTO on the expert's likes/dislikes")
    parser.add_argument("--kto_beta", type=float, default=d.kto_beta)
    parser.add_argument("--use_fp16", type=str2bool, default=d.use_fp16, metavar="BOOL")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device)


def round_config(args: argparse.Namespace) -> RoundConfig:
    fields = RoundConfig.__dataclass_fields__
    return RoundConfig(**{k: v for k, v in vars(args).items() if k in fields})


def cmd_loop(args: argparse.Namespace) -> int:
    try:
        results = run_loop(args.checkpoint, args.real, args.out, args.rounds, args.real_val or None,
                           round_config(args), args.feedback or None, progress=True, feedback_db=args.db,
                           review_timeout_s=args.review_timeout)
    except AwaitingFeedback as pause:
        print(f"paused: {pause}")
        return 0
    for row in round_summary(results):
        print(json.dumps(row))
    print(f"final checkpoint: {results[-1].checkpoint}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "loop", help="run K rounds of sample -> feedback -> reward -> finetune",
        description="Each round's artefacts go to OUT/round_k/; rerunning resumes. Feedback comes from the "
        "simulated expert, or from --feedback DIR (CLASS/align|notalign, one round).")
    parser.add_argument("--checkpoint", required=True, help="the pretrained model (run dir or checkpoint)")
    parser.add_argument("--real", required=True, help="real training images (seed naming)")
    parser.add_argument("--real_val", default="", help="real validation images for the reward model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--feedback", default="",
                        help="folder of expert judgements (CLASS/align|notalign) of round 1's samples; when it does "
                        "not exist yet the loop stops after sampling and tells you what to judge")
    parser.add_argument("--db", default="", help="review database URL: load each round's samples into the review "
                        "app and wait until they are judged (instead of the simulated expert)")
    parser.add_argument("--review_timeout", type=float, default=0.0,
                        help="with --db, stop waiting after this many seconds (0 = wait); rerun to continue")
    add_round_arguments(parser)
    parser.set_defaults(func=cmd_loop)
    register_demo(subparsers)


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig(out=Path(args.out), data=args.data, minutes=args.minutes, seed=args.seed, device=args.device,
                     tau=args.tau, objective=args.objective, control=args.control, beta=args.beta)
    summary = run_demo(cfg, progress=True)
    print()
    print(format_table(summary["table"]))
    print(f"\nwall time: {summary['seconds']['total']:.0f} s   report: {summary['report']}")
    return 0


def register_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the whole loop on toy cells (or your data) and print a before/after table",
        description="pretrain -> sample -> simulated expert -> reward model -> finetune -> evaluate, "
        "on 2 CPU cores in about 9 minutes with the default toy cells.")
    parser.add_argument("--out", default="clinalign-demo")
    parser.add_argument("--data", default="", help="a MedMNIST .npz, or a folder with train/ and test/ (default: toy cells)")
    parser.add_argument("--minutes", type=float, default=10.0, help="scales the number of training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    d = DemoConfig()
    parser.add_argument("--tau", type=float, default=d.tau, help="the simulated expert's strictness")
    parser.add_argument("--beta", type=float, default=d.beta, help="weight of the real-data loss in the finetune")
    parser.add_argument("--objective", default=d.objective, choices=("reward-weighted", "kto"))
    parser.add_argument("--control", type=str2bool, default=d.control, metavar="BOOL",
                        help="also continue pretraining without feedback for as many steps (the fair comparison)")
    parser.set_defaults(func=cmd_demo)
