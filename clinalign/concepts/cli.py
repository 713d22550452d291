"""``clinalign concepts``: declare expert-assigned samples as their concepts; measure concept accuracy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError
from ..utils.config import str2bool


def run_assign(args: argparse.Namespace) -> int:
    from ..data.concepts import parse_concept_specs
    from ..data.naming import declared_classes, list_images
    from .assign import assign

    known = set(declared_classes(list_images(args.samples), args.samples))
    if args.checkpoint:
        from ..training.checkpoint import find_checkpoint

        known |= set(find_checkpoint(args.checkpoint).class_map.names)
    result = assign(
        args.samples,
        args.feedback,
        args.out,
        known,
        parse_concept_specs(args.concept),
        overwrite=args.overwrite,
        only_assigned=args.only_assigned,
    )
    done = ", ".join(f"{n} as {c} (under {result.parents[c]})" for c, n in sorted(result.assigned.items()))
    print(f"wrote {result.out}: {result.n} images, {done}; score it (clinalign reward score) and finetune on it")
    return 0


def run_accuracy(args: argparse.Namespace) -> int:
    from ..data.concepts import parse_concept_specs
    from ..evaluate.concepts import SubtypeOracle, concept_report
    from ..evaluate.data import ImageSet
    from ..evaluate.oracle import OracleConfig

    targets = parse_concept_specs(args.concept)
    if not targets:
        raise ConfigError("pass --concept NAME=SUBTYPE for each concept to judge, e.g. neutrophil-band=BNE")
    config = OracleConfig(
        image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size, width=args.width, seed=args.seed
    )
    real = ImageSet.from_folder(args.real, config.image_size)
    oracle = SubtypeOracle.fit_or_load(
        real, args.parent, config, args.models_dir or Path(args.out or ".") / "models", progress=True
    )
    samples = ImageSet.from_folder(args.samples, config.image_size, oracle.channels)
    groups = []
    for name in sorted(set(samples.classes)):
        if name in targets or name == args.parent:
            groups.append((name, samples.subset([c == name for c in samples.classes]).images))
    report = {
        "parent": args.parent,
        "subtypes": oracle.subtypes,
        "oracle": {k: oracle.info[k] for k in ("arch", "half", "seed", "n_train", "val_accuracy")},
        "groups": concept_report(oracle, groups, targets),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        from ..utils.fileio import atomic_writer

        with atomic_writer(Path(args.out) / "concept_accuracy.json", "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "concepts",
        help="new clinical concepts taught by expert feedback",
        description="Concepts are finer classes (neutrophil-band under neutrophil) "
        "that experts assign synthetic images to; see docs/concepts.md.",
    )
    sub = parser.add_subparsers(dest="concepts_command", metavar="<command>")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    p = sub.add_parser(
        "assign",
        help="copy a sample folder, declaring the images experts assigned to a concept "
        "as that concept (manifest.csv + concepts.json)",
    )
    p.add_argument("--samples", type=Path, required=True, help="the sample folder the feedback was collected on")
    p.add_argument("--feedback", type=Path, required=True, help="feedback folder with CONCEPT/align|notalign")
    p.add_argument("--out", type=Path, required=True, help="new folder to write (score it, then finetune on it)")
    p.add_argument("--checkpoint", help="the model the samples came from (its classes are not concepts)")
    p.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar="NAME=PARENT",
        help="parent of a concept folder (repeatable; default: FEEDBACK/concepts.json)",
    )
    p.add_argument(
        "--only_assigned",
        type=str2bool,
        default=False,
        metavar="BOOL",
        help="copy only the images assigned to a concept (finetune on the concepts alone)",
    )
    p.add_argument("--overwrite", type=str2bool, default=False, metavar="BOOL")
    p.set_defaults(func=run_assign)

    p = sub.add_parser(
        "accuracy",
        help="share of samples requested as a concept that a subtype oracle "
        "(vgg, real half B) puts in the concept's subtype",
    )
    p.add_argument("--real", type=Path, required=True, help="real images named PARENT_SUBTYPE_*.png")
    p.add_argument("--samples", type=Path, required=True, help="samples of the concepts (and of the parent)")
    p.add_argument("--parent", required=True, help="the class the concepts refine, e.g. neutrophil")
    p.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar="NAME=SUBTYPE",
        help="the real subtype a concept stands for, e.g. neutrophil-band=BNE (repeatable)",
    )
    p.add_argument("--out", type=Path, help="write OUT/concept_accuracy.json")
    p.add_argument("--models_dir", type=Path, help="cache of trained oracles (default: OUT/models)")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_accuracy)
