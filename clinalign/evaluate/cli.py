"""``clinalign evaluate``: fidelity, clinical plausibility, utility and memorisation of samples."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..utils.config import str2bool
from .oracle import OracleConfig
from .run import MetricConfig, evaluate, json_safe
from .utility import UtilityConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("folders")
    io.add_argument("--real", type=Path, required=True, help="real images (CLASS_anything.png, searched recursively)")
    io.add_argument("--samples", type=Path, required=True, help="synthetic images (CLASS_*.png or manifest.csv)")
    io.add_argument("--baseline", type=Path, help="a second sample set (e.g. before finetuning), shown side by side")
    io.add_argument("--out", type=Path, required=True, help="where metrics.json, per_sample.csv, report.html go")
    io.add_argument(
        "--real_test",
        type=Path,
        help="real held-out images (default: a file-name-hash split of --real, see --test_fraction)",
    )
    io.add_argument(
        "--generator_data",
        type=Path,
        help="the generator's training images, when --real is another pool: memorisation is measured "
        "against them (default: --real)",
    )
    io.add_argument(
        "--models_dir",
        type=Path,
        help="cache of the trained oracle / feature extractor (default: OUT/models); reused when the "
        "real data and model flags match",
    )
    io.add_argument("--reward_checkpoint", type=Path, help="reward model directory: adds the mean reward")
    io.add_argument(
        "--inception",
        type=Path,
        help="TorchScript Inception-v3 (NVlabs inception-2015-12-05.pt): adds the standard FID",
    )
    io.add_argument(
        "--feature_checkpoint",
        type=Path,
        help="a clinalign classifier file to use as the feature extractor instead of the oracle",
    )
    io.add_argument("--skip_bad_images", type=str2bool, default=False, metavar="BOOL")
    io.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default; 1 is often fastest on a busy machine)",
    )

    d = OracleConfig()
    m = p.add_argument_group("evaluation models (part of the cache key)")
    m.add_argument("--image_size", type=int, default=d.image_size, help="side every image is scaled to")
    m.add_argument("--epochs", type=int, default=d.epochs, help="oracle training epochs")
    m.add_argument("--width", type=int, default=d.width, help="oracle base channel width")
    m.add_argument("--batch_size", type=int, default=d.batch_size)
    m.add_argument("--lr", type=float, default=d.lr)
    m.add_argument("--max_train", type=int, default=d.max_train, help="cap on oracle training images (0 = all)")
    m.add_argument(
        "--test_fraction",
        type=float,
        default=d.test_fraction,
        help="share of --real held out as test when --real_test is not given",
    )
    m.add_argument("--seed", type=int, default=0)

    c, u = MetricConfig(), UtilityConfig()
    s = p.add_argument_group("metrics")
    s.add_argument("--tau", type=float, default=c.tau, help="oracle probability of the declared class needed")
    s.add_argument(
        "--checklist",
        type=str2bool,
        default=c.checklist,
        metavar="BOOL",
        help="the clinical checklist is part of plausibility (single-cell images; False for other data)",
    )
    s.add_argument("--k", type=int, default=c.k, help="neighbours for the k-NN manifold (PRDC)")
    s.add_argument(
        "--max_reference",
        type=int,
        default=c.max_reference,
        help="real images spanning the manifold (stratified subsample)",
    )
    s.add_argument("--bootstrap", type=int, default=c.bootstrap, help="bootstrap draws for the intervals (0 = none)")
    s.add_argument("--utility", type=str2bool, default=True, metavar="BOOL", help="train the TSTR classifiers")
    s.add_argument("--utility_steps", type=int, default=u.steps, help="optimiser steps per TSTR classifier")
    s.add_argument(
        "--utility_max_train", type=int, default=u.max_train, help="images per TSTR training set (stratified subsample)"
    )


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    oracle = OracleConfig(
        image_size=args.image_size,
        width=args.width,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        test_fraction=args.test_fraction,
        max_train=args.max_train,
    )
    utility = (
        UtilityConfig(steps=args.utility_steps, max_train=args.utility_max_train, seed=args.seed)
        if args.utility
        else None
    )
    metrics = MetricConfig(
        tau=args.tau,
        k=args.k,
        max_reference=args.max_reference,
        bootstrap=args.bootstrap,
        seed=args.seed,
        utility=utility,
        checklist=args.checklist,
    )
    result = evaluate(
        args.real,
        args.samples,
        args.out,
        baseline=args.baseline,
        real_test=args.real_test,
        models_dir=args.models_dir,
        generator_data=args.generator_data,
        oracle_config=oracle,
        metric_config=metrics,
        reward_checkpoint=args.reward_checkpoint,
        inception=args.inception,
        feature_checkpoint=args.feature_checkpoint,
        skip_bad_images=args.skip_bad_images,
        progress=True,
    )
    m = json_safe(result.metrics)
    real = m["real"]
    for warning in real.get("warnings", []):
        print(f"WARNING: {warning}")
    print(
        f"oracle: real test accuracy {_num(real['oracle']['test_accuracy'])}; real test plausible "
        f"{_num(real['real_test']['plausibility']['rate'])}"
    )
    for name, s in m["sets"].items():
        p = s["plausibility"]
        line = (
            f"{name}: {s['n']} images, plausible {_num(p['rate'])} (class-consistent {_num(p['oracle_rate'])}, "
            f"on-manifold {_num(p['manifold_rate'])}; oracle accuracy {_num(real['oracle']['test_accuracy'])}), "
            f"clinical checklist {_num(s['checklist']['all'])}, FID {_num(s['fid'])} (domain features), precision "
            f"{_num(s['prdc']['precision'])}, recall {_num(s['prdc']['recall'])}, "
            f"near copies {_num(s['memorisation']['feature']['near_copy_fraction'])}"
        )
        if "reward" in s:
            line += f", mean reward {_num(s['reward']['mean'])}"
        print(line)
    if "comparison" in m:
        c = m["comparison"]["plausibility.rate"]
        print(
            f"plausible: samples - baseline = {_num(c['difference'])} "
            f"(95% CI {_num(c.get('ci_low'))} .. {_num(c.get('ci_high'))})"
        )
    print(f"wrote {args.out / 'metrics.json'}, {args.out / 'per_sample.csv'} and {args.out / 'report.html'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score synthetic images: FID/PRDC, clinical plausibility, utility, memorisation",
        description="Score a sample folder (and optionally a baseline) against real images with models the tool "
        "trains on the real data (cached): writes metrics.json, per_sample.csv and report.html.",
    )
    add_arguments(p)
    p.set_defaults(func=run)
