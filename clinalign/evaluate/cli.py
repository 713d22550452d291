"""``clinalign evaluate``: fidelity, clinical plausibility, utility and memorisation of samples."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ..utils.config import add_flags, resolve, str2bool
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
    add_flags(p.add_argument_group("evaluation models (part of the cache key)"), OracleConfig)
    s = p.add_argument_group("metrics")
    add_flags(s, MetricConfig)
    s.add_argument("--utility", type=str2bool, default=True, metavar="BOOL", help="train the TSTR classifiers")
    add_flags(s, UtilityConfig)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    oracle = resolve(OracleConfig, args)
    utility = dataclasses.replace(resolve(UtilityConfig, args), seed=oracle.seed) if args.utility else None
    metrics = dataclasses.replace(resolve(MetricConfig, args), seed=oracle.seed, utility=utility)
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
            f"clinical checklist {_num(s['checklist']['all'])}, FID {_num(s['fid'])} (domain features; "
            f"{_num(s.get('fid_class_mix'))} at the samples' class mix), precision "
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
