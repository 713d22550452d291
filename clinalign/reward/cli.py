"""``clinalign reward train | score | select | toy-data``: flags in, library calls out.

The training flags keep the seed's names and meanings (``Classifier/train_scoring_function.py``:
``--train_dir --train_anno_dir --val_dir --val_anno_dir --save_checkpoints_dir --epochs
--batch_size --init_lr --weight_decay --gamma --lr_decay_every_x_epochs --ratio --input_model
--pretrained``); one table (``add_train_arguments``) serves both entry points.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..utils.config import add_flags, resolve, str2bool

log = logging.getLogger(__name__)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The reward model's flags (from ``TrainConfig``) and the seed's flags that only warn."""
    from .train import TrainConfig

    add_flags(p.add_argument_group("reward model training (the seed's flags and clinalign's)"), TrainConfig)
    g = p.add_argument_group("accepted for the seed's command lines")
    g.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: one per core; on a busy shared machine "
        "fewer threads can be much faster, see docs/reward.md)",
    )
    g.add_argument("--input_model", help="seed flag; its ResNeXt50 needs downloaded weights, so clinalign uses --arch")
    g.add_argument(
        "--pretrained",
        type=str2bool,
        default=None,
        help="seed flag; nothing is downloaded: pass --init_trunk for a pretrained trunk",
    )


def config_from_args(args: argparse.Namespace):
    from .train import TrainConfig

    if args.input_model and args.input_model.lower() not in ("resnet", "vgg"):
        log.warning(
            "--input_model %s: pretrained torchvision models are not downloaded; training clinalign's %s trunk instead",
            args.input_model,
            args.arch or "resnet",
        )
    elif args.input_model and not args.arch:
        args.arch = args.input_model.lower()
    if args.pretrained and args.init_trunk is None:
        log.warning(
            "--pretrained True: no weights are downloaded; the trunk trains from scratch "
            "(pass --init_trunk CLASSIFIER.safetensors to start from a trained classifier)"
        )
    return resolve(TrainConfig, args)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .metrics import format_table
    from .model import REPORT_FILE, REWARD_FILE
    from .train import train_reward

    cfg = config_from_args(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bars: list = []  # made at the first epoch, so a data error is not printed under an empty bar

    def on_epoch(record: dict) -> None:
        if not bars:
            bars.append(tqdm(total=cfg.epochs, unit="epoch", desc="reward model", dynamic_ncols=True))
        bars[0].update(1)
        bars[0].set_postfix(
            {k: f"{v:.3f}" for k, v in record.items() if isinstance(v, float) and k not in ("lr", "seconds")}
        )

    try:
        result = train_reward(cfg, on_epoch=on_epoch)
    finally:
        for bar in bars:
            bar.close()
    report = result.report
    if report["validation"] is not None:
        print(format_table(report["validation"]))
        syn = report["validation"].get("synthetic")
        if syn:
            auc = "n/a (one verdict)" if syn["auroc"] is None else f"{syn['auroc']:.3f}"
            print(f"synthetic feedback (what the reward is for): AUROC {auc}, ECE {syn['ece']:.3f}")
    print(f"best epoch {report['best_epoch']} of {report['epochs_run']}, temperature {report['temperature']:.3f}")
    print(f"reward model: {cfg.save_dir / REWARD_FILE}; report: {cfg.save_dir / REPORT_FILE}")
    return 0


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=0, unit="img", desc=desc, dynamic_ncols=True)

    def on_listed(n: int) -> None:
        bar.total = n
        bar.refresh()

    return bar, on_listed


def cmd_score(args: argparse.Namespace) -> int:
    from .score import score_folder

    bar, on_listed = _bar("scoring")
    try:
        res = score_folder(
            args.checkpoint,
            args.images,
            args.out,
            args.batch_size,
            progress=bar.update,
            on_listed=on_listed,
            device=args.device,
        )
    finally:
        bar.close()
    print(
        f"wrote {res.n} rewards to {res.out} (details: {res.detail}) in {res.seconds:.2f}s "
        f"({res.images_per_second:.0f} images/s)"
    )
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .select import select_for_review

    bar, on_listed = _bar("scoring")
    try:
        res = select_for_review(
            args.checkpoint,
            args.images,
            args.n,
            args.out,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=bar.update,
            on_listed=on_listed,
            device=args.device,
        )
    finally:
        bar.close()
    print(
        f"selected {len(res.ids)} images into {res.out} (per class: {json.dumps(res.per_class)}); "
        f"load them with: clinalign review add-batch --samples {res.out}"
    )
    return 0


def cmd_toy(args: argparse.Namespace) -> int:
    from .toy import toy_feedback, write_samples, write_toy_reward_data

    out = write_toy_reward_data(
        args.out,
        args.classes,
        args.per_class,
        args.per_class,
        max(1, args.per_class // 3),
        max(1, args.per_class // 2),
        args.size,
        args.seed,
    )
    samples = write_samples(toy_feedback(args.classes, args.per_class, args.size, args.seed + 4), args.out / "samples")
    for k, v in out.items():
        print(f"{k}: {v}")
    print(f"samples (unjudged, seed naming): {samples}")
    print(
        "next: clinalign reward train "
        + " ".join(f"--{k} {v}" for k, v in out.items())
        + f" --save_checkpoints_dir {args.out / 'reward'}"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reward", help="train the reward model on expert feedback, score samples, pick what to judge next"
    )
    sub = p.add_subparsers(dest="reward_cmd", metavar="<command>", required=True)

    t = sub.add_parser("train", help="train a reward model (the seed's train_scoring_function.py)")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="write rewards.csv (ID,rewards) for a folder of synthetic images")
    s.add_argument("--checkpoint", required=True, type=Path, help="the --save_checkpoints_dir of reward train")
    s.add_argument("--images", required=True, type=Path, help="folder of CLASS_*.png (or with manifest.csv), any depth")
    s.add_argument("--out", required=True, type=Path, help="CSV to write; details go to NAME_detail.csv beside it")
    s.add_argument("--batch_size", type=int, default=512)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_score)

    q = sub.add_parser("select", help="copy the N samples the reward model is least sure of into a folder for review")
    q.add_argument("--checkpoint", required=True, type=Path)
    q.add_argument("--images", required=True, type=Path)
    q.add_argument("--n", required=True, type=int, help="how many images to select")
    q.add_argument("--out", required=True, type=Path, help="new folder: the images + manifest.csv (ID,class,reward)")
    q.add_argument("--seed", type=int, default=0, help="shuffles the class rotation and breaks ties")
    q.add_argument("--batch_size", type=int, default=512)
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=cmd_select)

    d = sub.add_parser("toy-data", help="write a toy reward benchmark (toy cells + simulated verdicts)")
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--classes", type=int, default=4)
    d.add_argument("--per_class", type=int, default=60)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_toy)
