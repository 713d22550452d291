"""``clinalign expert simulate``: judge samples with a simulated expert (for testing the loop)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..data.concepts import parse_concept_specs
from ..data.naming import list_images
from ..errors import ConfigError
from ..reward.data import image_size_of
from ..utils.config import add_flags, resolve, str2bool
from .reviewer import check_reviewer, review_queue
from .simulator import EXPERT_MIN_ACCURACY, ExpertConfig, expert_for, simulate


def run_simulate(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.image_size:  # judge at the samples' own size (the generator's), else the default
        args.image_size = image_size_of(list_images(args.samples)[0]) if args.samples else ExpertConfig.image_size
    config = resolve(ExpertConfig, args)
    concepts = parse_concept_specs(args.concept)
    if concepts and config.label_from != "subtype":
        raise ConfigError("--concept needs an expert that knows subtypes: add --label_from subtype")
    if args.db or args.reviewer:
        if not (args.db and args.reviewer) or args.samples or args.out:
            raise ConfigError(
                "judge either a folder (--samples and --out) or the review database (--db and --reviewer), not both"
            )
        check_reviewer(args.db, args.reviewer)  # before minutes of training, not after
        expert = expert_for(args.real, config, args.expert_dir or Path("expert"), args.skip_bad_images, True)
        _print_accuracy(expert.info.get("val_accuracy"))
        review = review_queue(
            args.db,
            args.reviewer,
            expert,
            args.tau,
            args.noise,
            args.seed,
            concepts=concepts,
            concept_min_p=args.concept_min_p,
        )
        print(f"{review.reviewer}: judged {review.n} image(s) from the review queue, {review.plausible} plausible")
        return 0
    if not (args.samples and args.out):
        raise ConfigError("pass --samples and --out (or --db and --reviewer to work through a review queue)")
    result = simulate(
        args.samples,
        args.out,
        args.real,
        tau=args.tau,
        noise=args.noise,
        seed=args.seed,
        expert_dir=args.expert_dir,
        config=config,
        overwrite=args.overwrite,
        skip_bad_images=args.skip_bad_images,
        progress=True,
        concepts=concepts,
        concept_min_p=args.concept_min_p,
    )
    per_class = ", ".join(f"{c}: {v['align']}/{v['align'] + v['notalign']}" for c, v in sorted(result.counts.items()))
    print(f"judged {result.n} images, {100 * result.plausible_rate:.1f} % plausible ({per_class})")
    _print_accuracy(result.expert_accuracy)
    print(f"wrote {result.out} (CLASS/align|notalign + judgements.csv); expert model in {result.expert_dir}")
    return 0


def _print_accuracy(accuracy: float | None) -> None:
    print(
        f"the simulated expert's accuracy on its held-out real images: "
        f"{'n/a' if accuracy is None else f'{accuracy:.3f}'}"
    )
    if accuracy is not None and accuracy < EXPERT_MIN_ACCURACY:
        print(f"WARNING: the simulated expert's accuracy is below {EXPERT_MIN_ACCURACY}; its verdicts are noisy")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "expert",
        help="a simulated expert for testing the feedback loop",
        description="A classifier trained on real images stands in for the pathologist.",
    )
    sub = parser.add_subparsers(dest="expert_command", metavar="<command>")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    p = sub.add_parser(
        "simulate",
        help="judge a sample folder: writes OUT/CLASS/align|notalign and judgements.csv",
        description="Judge each sample (by --criteria: the expert's P(declared class) >= --tau and its "
        "real-data manifold, the clinical checklist, or both), flip each verdict with "
        "probability --noise, write the feedback folder.",
    )
    p.add_argument("--samples", type=Path, help="synthetic images (CLASS_*.png or manifest.csv)")
    p.add_argument("--out", type=Path, help="feedback folder to write (must be new or empty)")
    p.add_argument("--real", type=Path, required=True, help="real images; the expert trains on half A of them")
    p.add_argument("--tau", type=float, default=0.5, help="strictness: P(declared class) needed to be plausible")
    p.add_argument("--noise", type=float, default=0.0, help="probability of flipping each verdict")
    p.add_argument(
        "--expert_dir", type=Path, help="cache of trained experts (default: OUT/../expert, or ./expert with --db)"
    )
    p.add_argument(
        "--db",
        help="instead of a folder, judge the review app's queue in this database "
        "(sqlite:///feedback.db or a PostgreSQL URL) ...",
    )
    p.add_argument("--reviewer", help="... as this reviewer (created with `clinalign review add-reviewer`)")
    p.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar="NAME=LABEL",
        help="assign plausible samples the expert puts in subtype LABEL (e.g. "
        "neutrophil-band=neutrophil:BNE) to the concept NAME (repeatable; needs --label_from subtype)",
    )
    p.add_argument(
        "--concept_min_p",
        type=float,
        default=0.5,
        help="share of the class's probability the subtype needs for the image to be assigned",
    )
    add_flags(
        p.add_argument_group("the simulated expert (part of its cache key)"), ExpertConfig, defaults={"image_size": 0}
    )
    p.add_argument("--overwrite", type=str2bool, default=False, metavar="BOOL", help="replace an existing OUT")
    p.add_argument("--skip_bad_images", type=str2bool, default=False, metavar="BOOL")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default; 1 is often fastest on a busy machine)",
    )
    p.set_defaults(func=run_simulate)
