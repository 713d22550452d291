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

from ..utils.config import str2bool

log = logging.getLogger(__name__)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (the seed's flags)")
    g.add_argument("--train_dir", type=Path, help="real images, CLASS/img.png (ImageNet layout)")
    g.add_argument(
        "--train_anno_dir", type=Path, help="judged synthetic images: CLASS/align/*.png, CLASS/notalign/*.png"
    )
    g.add_argument("--val_dir", type=Path, help="validation real images, CLASS/img.png")
    g.add_argument("--val_anno_dir", type=Path, help="validation judged images, CLASS/align|notalign/*.png")
    g.add_argument(
        "--save_checkpoints_dir",
        type=Path,
        default=Path("."),
        help="where reward.safetensors, report.json and history.jsonl go (what `reward score --checkpoint` takes)",
    )
    g.add_argument("--ratio", type=float, default=1.0, help="fraction of the judged training images used, per class")
    g = p.add_argument_group("feedback from the review database")
    g.add_argument(
        "--train_anno_db", help="review database URL (e.g. sqlite:///feedback.db) instead of --train_anno_dir"
    )
    g.add_argument(
        "--anno_rule",
        default="majority",
        help="how reviewers' votes become a verdict: majority, "
        "unanimous, reviewer:NAME (as `clinalign review export --rule`)",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=30, help="maximum epochs (early stopping may end sooner)")
    g.add_argument("--batch_size", type=int, default=64)
    g.add_argument(
        "--lr",
        "--init_lr",
        dest="lr",
        type=float,
        default=2e-3,
        help="peak learning rate (the seed's 1e-4 suits a pretrained trunk; this one trains from scratch)",
    )
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument(
        "--lr_schedule",
        choices=("cosine", "step"),
        default="cosine",
        help="one-cycle cosine, or the seed's step decay (--gamma every --lr_decay_every_x_epochs)",
    )
    g.add_argument("--gamma", type=float, default=0.1, help="step decay factor (with --lr_schedule step)")
    g.add_argument("--lr_decay_every_x_epochs", type=int, default=5, help="step decay period (with --lr_schedule step)")
    g.add_argument("--patience", type=int, default=8, help="epochs without validation improvement before stopping")
    g.add_argument(
        "--real_weight",
        type=float,
        default=0.5,
        help="share of each epoch's (image, class) pairs that come from real images",
    )
    g.add_argument("--colour_jitter", type=float, default=0.05, help="mild per-channel gain/shift augmentation")
    g.add_argument(
        "--require_both",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="error (rather than warn) when the feedback holds only one verdict",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: one per core; on a busy shared machine "
        "fewer threads can be much faster, see docs/reward.md)",
    )
    g.add_argument(
        "--skip_bad_images",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="leave undecodable image files out instead of stopping",
    )
    g = p.add_argument_group("model")
    g.add_argument("--image_size", type=int, help="default: the size of the first real image")
    g.add_argument("--arch", choices=("resnet", "vgg"), help="trunk (default resnet, or --init_trunk's)")
    g.add_argument("--width", type=int, help="trunk width (default 16, or --init_trunk's)")
    g.add_argument(
        "--stem_stride",
        type=int,
        choices=(1, 2),
        help="stride of the trunk's first conv (default 2 from scratch, 1 with --init_trunk)",
    )
    g.add_argument("--init_trunk", type=Path, help="start the trunk from a classifier saved by clinalign (safetensors)")
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
    epochs = int(round(args.epochs))
    return TrainConfig(
        train_dir=args.train_dir,
        train_anno_dir=args.train_anno_dir,
        val_dir=args.val_dir,
        val_anno_dir=args.val_anno_dir,
        save_dir=args.save_checkpoints_dir,
        train_anno_db=args.train_anno_db,
        anno_rule=args.anno_rule,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        lr_decay_every_x_epochs=args.lr_decay_every_x_epochs,
        gamma=args.gamma,
        image_size=args.image_size,
        arch=args.arch,
        width=args.width,
        stem_stride=args.stem_stride,
        init_trunk=args.init_trunk,
        patience=args.patience,
        real_weight=args.real_weight,
        colour_jitter=args.colour_jitter,
        require_both=args.require_both,
        feedback_fraction=args.ratio,
        seed=args.seed,
        device=args.device,
        skip_bad_images=args.skip_bad_images,
    )


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
