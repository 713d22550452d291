"""``clinalign demo``: the whole loop on the embedded toy cells (or your data), on a CPU, in minutes.

pretrain -> sample -> simulated expert -> reward model -> finetune -> sample -> evaluate,
then a before/after table and ``report.html``. Every stage is the same library code the
individual commands run; the demo only picks small sizes and wires the folders.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..training.config import OBJECTIVES
from ..utils.config import option

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out: str = option("clinalign-demo", "output folder")
    data: str = option("", "a MedMNIST .npz, or a folder with train/ and test/ (default: toy cells)")
    minutes: float = option(10.0, "scales the number of training steps")
    seed: int = option(0, "seeds every stage")
    classes: int = option(4, "toy classes", flag=False)
    per_class: int = option(300, "toy training images per class", flag=False)
    test_per_class: int = option(100, "toy test images per class", flag=False)
    image_size: int = option(32, flag=False)
    num_channels: int = option(32, flag=False)
    # Short on purpose: a model that still makes implausible cells, so the expert has something to
    # reject (measured on toy cells: 73 % oracle-plausible after 200 steps, 96 % after 1000).
    pretrain_steps: int = option(200, "at --minutes 10; every step count scales linearly with the budget", flag=False)
    batch_size: int = option(32, flag=False)
    lr: float = option(1e-3, flag=False)
    # x0-prediction: an eps-predicting net this small, trained this briefly, gets the global stain
    # colour wrong (its x0 error at high noise is amplified by 1/sqrt(alpha_bar)); predicting x0
    # directly gets colour right within a few hundred steps (measured: 2.6 % vs 96 % plausible).
    predict_xstart: bool = option(True, flag=False)
    samples_per_class: int = option(96, flag=False)
    finetune_steps: int = option(300, flag=False)
    finetune_lr: float = option(5e-4, flag=False)
    # beta 1 with as many real images per step as pretraining: the feedback term comes on top of
    # what training on without feedback gets (measured on toy cells, same base, 300 steps:
    # +20 points at beta 1, +15 at beta 1 with half the real images, +15 at the published 0.3).
    beta: float = option(1.0, "weight of the real-data loss in the finetune")
    reward_transform: str = option("threshold", flag=False)
    objective: str = option("reward-weighted", "reward-weighted or Diffusion-KTO", choices=OBJECTIVES)
    reward_epochs: int = option(15, flag=False)
    tau: float = option(0.9, "the simulated expert's strictness (at 0.5 it accepted 99.7 % and taught nothing)")
    # The honest comparison: the same number of extra steps on real data only, no feedback.
    control: bool = option(True, "also continue pretraining without feedback for as many steps (the fair comparison)")
    use_fp16: bool = option(True, flag=False)
    device: str = option("auto", "torch device: auto, cpu, cuda, cuda:1, mps")

    def scaled(self, steps: int) -> int:
        return max(20, round(steps * self.minutes / 10.0))


def prepare_data(cfg: DemoConfig) -> tuple[Path, Path | None, Path]:
    """(train, val or None, test) folders in the seed's naming under OUT/data."""
    from ..data.medmnist import export_npz
    from ..data.naming import list_images
    from ..data.toy import generate

    root = Path(cfg.out) / "data"
    train, val, test = root / "train", root / "val", root / "test"
    if not cfg.data:
        if not train.exists():
            # One generation, split by index: file names (which the expert/oracle splits hash) stay unique.
            tmp = root / ".toy"
            shutil.rmtree(tmp, ignore_errors=True)
            generate(
                tmp,
                classes=cfg.classes,
                per_class=cfg.per_class + cfg.test_per_class,
                size=cfg.image_size,
                seed=cfg.seed,
            )
            test.mkdir(parents=True, exist_ok=True)
            for p in list_images(tmp):
                if int(p.stem.rsplit("_", 1)[1]) >= cfg.per_class:
                    p.rename(test / p.name)
            tmp.rename(train)
        return train, None, test
    src = Path(cfg.data)
    if src.suffix == ".npz":
        for split, folder in (("train", train), ("val", val), ("test", test)):
            if not folder.exists():
                export_npz(src, split, folder)
        return train, val, test
    if (src / "train").is_dir() and (src / "test").is_dir():
        return src / "train", (src / "val") if (src / "val").is_dir() else None, src / "test"
    list_images(src)  # a clear error for an empty or missing folder
    raise ConfigError(
        f"{src}: the demo needs a held-out test split; give a folder with train/ and test/ "
        "sub-folders (e.g. ../shared/data/pbc_64) or a MedMNIST .npz"
    )


def pretrain_args(cfg: DemoConfig, train: Path, run_dir: Path, steps: int) -> dict[str, Any]:
    return {
        "data_dir": str(train),
        "run_dir": str(run_dir),
        "image_size": cfg.image_size,
        "num_channels": cfg.num_channels,
        "num_res_blocks": 1,
        "attention_resolutions": "8",
        "num_heads": 2,
        "class_cond": True,
        "diffusion_steps": 1000,
        "noise_schedule": "cosine",
        "predict_xstart": cfg.predict_xstart,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "ema_rate": "0.999",
        "max_steps": steps,
        "save_interval": 200,
        "log_interval": 50,
        "use_fp16": cfg.use_fp16,
        "seed": cfg.seed,
        "device": cfg.device,
    }


def continue_without_feedback(
    cfg: DemoConfig, train: Path, pre_run: Path, run_dir: Path, steps: int, progress: bool = False
) -> Path:
    """The control: the pretraining run itself (optimizer state and all) continued for ``steps`` more
    steps at the finetune's lr and images per step, on real images only."""
    from ..training.checkpoint import latest_checkpoint
    from ..training.pretrain import pretrain

    args = pretrain_args(cfg, train, run_dir, latest_checkpoint(pre_run).step + steps)
    args.update(resume_checkpoint=str(pre_run), lr=cfg.finetune_lr)
    return pretrain(args, progress=progress)


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict[str, Any]:
    from ..evaluate.oracle import OracleConfig
    from ..evaluate.run import Evaluator, write_outputs
    from ..sampling.sample import sample_folder
    from ..training.checkpoint import find_checkpoint
    from ..training.pretrain import pretrain
    from .rounds import RoundConfig, run_round

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val, test = prepare_data(cfg)
    seconds["data"] = round(time.perf_counter() - t0, 1)

    t = time.perf_counter()
    pre_run = Path(cfg.out) / "pretrain"
    pre_steps, ft_steps = cfg.scaled(cfg.pretrain_steps), cfg.scaled(cfg.finetune_steps)
    pretrain(pretrain_args(cfg, train, pre_run, pre_steps), progress=progress)
    seconds["pretrain"] = round(time.perf_counter() - t, 1)

    rcfg = RoundConfig(
        samples_per_class=cfg.samples_per_class,
        finetune_steps=ft_steps,
        finetune_lr=cfg.finetune_lr,
        finetune_batch=cfg.batch_size,
        beta=cfg.beta,
        reward_epochs=cfg.reward_epochs,
        tau=cfg.tau,
        reward_transform=cfg.reward_transform,
        objective=cfg.objective,
        use_fp16=cfg.use_fp16,
        seed=cfg.seed,
        device=cfg.device,
    )
    round1 = run_round(1, pre_run, train, val, Path(cfg.out), rcfg, progress=progress)
    n_classes = len(find_checkpoint(pre_run).class_map)  # the data's, not cfg.classes (toy only)
    seconds.update({f"round1_{k}": v for k, v in round1.seconds.items()})

    # One evaluator: the real reference is embedded once for the feedback and the control sets.
    evaluator = Evaluator(
        train,
        test,
        models_dir=Path(cfg.out) / "evaluation-models",
        oracle_config=OracleConfig(image_size=cfg.image_size),
        reward_checkpoint=round1.reward,
        progress=progress,
    )

    def sample_and_evaluate(checkpoint: Path, name: str, baseline: Path | None):
        t = time.perf_counter()
        samples = Path(cfg.out) / name / "samples"
        sample_folder(
            checkpoint, samples, rcfg.sample_config(cfg.samples_per_class * n_classes, cfg.seed + 7), progress=progress
        )
        seconds[f"sample_{name}"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        result = evaluator.judge(samples, baseline)
        write_outputs(result, Path(cfg.out) / ("evaluation" if name == "after" else f"evaluation-{name}"))
        seconds[f"evaluate_{name}"] = round(time.perf_counter() - t, 1)
        return result

    result = sample_and_evaluate(round1.checkpoint, "after", round1.samples)
    control = None
    if cfg.control:
        t = time.perf_counter()
        control_ck = continue_without_feedback(cfg, train, pre_run, Path(cfg.out) / "control", ft_steps, progress)
        seconds["control_train"] = round(time.perf_counter() - t, 1)
        control = sample_and_evaluate(control_ck, "control", None)
    seconds["total"] = round(time.perf_counter() - t0, 1)
    summary = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "seconds": seconds,
        "report": str(Path(cfg.out) / "evaluation" / "report.html"),
        "table": before_after_table(result, control),
    }
    (Path(cfg.out) / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary


TABLE_ROWS = [
    ("FID (domain features)", ("fid",)),
    ("precision", ("prdc", "precision")),
    ("recall", ("prdc", "recall")),
    ("plausibility rate (oracle)", ("plausibility", "rate")),
    ("TSTR accuracy", ("utility", "synthetic_only", "accuracy")),
    ("mean reward", ("reward", "mean")),
]


def before_after_table(result, control=None) -> list[dict[str, Any]]:
    """Rows of (metric, before, after[, control]): baseline = before finetuning; control = no feedback."""
    from ..evaluate.run import lookup

    rows = []
    for label, path in TABLE_ROWS:
        row = {
            "metric": label,
            "before": lookup(result.baseline.metrics, path) if result.baseline else None,
            "after": lookup(result.samples.metrics, path),
        }
        if control is not None:
            row["control"] = lookup(control.samples.metrics, path)
        rows.append(row)
    return rows


COLUMN_TITLES = {"before": "pretrained", "after": "feedback", "control": "no feedback"}


def format_table(rows: list[dict[str, Any]]) -> str:
    def fmt(v):
        return "—" if v is None else f"{v:.3f}"

    columns = [c for c in COLUMN_TITLES if rows and c in rows[0]]
    lines = [f"{'metric':<28}" + "".join(f" {COLUMN_TITLES[c]:>12}" for c in columns)]
    lines += [f"{r['metric']:<28}" + "".join(f" {fmt(r[c]):>12}" for c in columns) for r in rows]
    return "\n".join(lines)
