"""Finetuning objectives side by side, from one demo's pretrained model and feedback round, as JSON.

    clinalign demo --out /tmp/demo                        # pretrain + round 1 (expert, reward model)
    python bench/finetune_objectives.py --demo /tmp/demo  # every variant below, ~4 min each on 2 CPU cores
    python bench/finetune_objectives.py --demo /tmp/demo --variants no-feedback,beta0.3,beta1

Every variant starts from ``DEMO/pretrain`` and trains the same number of steps at the same lr
(the demo's finetune settings unless ``--steps``/``--lr``). The feedback variants learn from the
same round-1 samples, expert verdicts and reward scores; ``no-feedback`` continues the pretraining
run on real images only (the control). All sets, the pretrained model's included, are sampled
with the same seed and judged by the same evaluation models against one real reference, so the
columns differ only in the training objective.

``--min_reward 0.5`` adds, for each model, a set drawn with rejection sampling by the round-1 reward
model (``clinalign sample --reward_checkpoint --min_reward``): feedback used at inference.

Prints one JSON line per variant (train/sample seconds and the metrics) and a final summary line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> finetune settings: beta, images per stream ("full" = the demo's batch, "half" = half of it),
# objective, lr multiplier. Feedback variants all use the demo's reward transform (threshold).
VARIANTS: dict[str, dict[str, Any]] = {
    "no-feedback": {"control": True},  # pretraining continued: real images only, the demo's batch
    "beta0.3": {"beta": 0.3, "batch": "half"},  # the published code's beta, 16 real + 16 synthetic
    # The real stream exactly as the control's (same images per step, weight 1) plus the
    # reward-weighted synthetic stream: any difference from no-feedback is the feedback's. The demo's.
    "beta1": {"beta": 1.0, "batch": "full"},
    "beta1-half": {"beta": 1.0, "batch": "half"},  # beta 1 at beta0.3's cost
    "kto": {"objective": "kto", "beta": 0.3, "batch": "half", "lr_scale": 0.4},  # measured best at lr 2e-4
}
SEED_OFFSET = 7  # the demo's after-sampling seed
log = logging.getLogger("bench.finetune_objectives")


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def summary_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    from clinalign.evaluate.run import lookup
    from clinalign.pipeline.demo import TABLE_ROWS

    out = {label: lookup(metrics, path) for label, path in TABLE_ROWS}
    per_class = metrics.get("plausibility", {}).get("per_class", {})
    out["plausibility per class"] = {c: v.get("rate") for c, v in per_class.items()}
    return out


def train_variant(
    name: str, spec: dict[str, Any], cfg, demo: Path, train: Path, out: Path, steps: int, lr: float, progress: bool
) -> Path:
    from clinalign.pipeline.demo import continue_without_feedback
    from clinalign.pipeline.rounds import RoundConfig, finetune_on_feedback
    from clinalign.training.checkpoint import latest_checkpoint

    run_dir = out / name / "run"
    pre = demo / "pretrain"
    if spec.get("control"):
        return continue_without_feedback(cfg, train, pre, run_dir, steps, progress)
    rcfg = RoundConfig(
        finetune_steps=steps,
        finetune_lr=lr * spec.get("lr_scale", 1.0),
        finetune_batch=cfg.batch_size if spec["batch"] == "full" else cfg.batch_size // 2,
        beta=spec["beta"],
        reward_transform=cfg.reward_transform,
        objective=spec.get("objective", "reward-weighted"),
        use_fp16=cfg.use_fp16,
        seed=cfg.seed,
        device=cfg.device,
    )
    rdir = demo / "round_1"
    return finetune_on_feedback(
        latest_checkpoint(pre).path,
        train,
        rdir / "samples",
        rdir / "feedback",
        run_dir,
        rcfg,
        cfg.seed + 1,
        out / name,
        progress,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from clinalign.evaluate.oracle import OracleConfig
    from clinalign.evaluate.run import Evaluator
    from clinalign.pipeline.demo import DemoConfig, prepare_data
    from clinalign.pipeline.rounds import RoundConfig
    from clinalign.sampling.rejection import reward_acceptor
    from clinalign.sampling.sample import sample_folder
    from clinalign.training.checkpoint import find_checkpoint, latest_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    demo = Path(args.demo)
    if not (demo / "demo.json").is_file() or not (demo / "round_1" / "samples" / "rewards.csv").is_file():
        raise SystemExit(f"{demo}: not a finished demo run; run `clinalign demo --out {demo}` first")
    saved = json.loads((demo / "demo.json").read_text())["config"]
    cfg = DemoConfig(**{**saved, "out": str(demo), "device": args.device})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or cfg.scaled(cfg.finetune_steps)
    lr = args.lr or cfg.finetune_lr
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")

    train_dir, _, test_dir = prepare_data(cfg)  # the demo's folders (already there)
    evaluator = Evaluator(
        train_dir,
        test_dir,
        models_dir=demo / "evaluation-models",
        oracle_config=OracleConfig(image_size=cfg.image_size),
        reward_checkpoint=demo / "round_1" / "reward",
        progress=args.progress,
    )
    pre = latest_checkpoint(demo / "pretrain").path
    n = cfg.samples_per_class * len(find_checkpoint(pre).class_map)

    sampling = RoundConfig()  # the demo samples with the loop's defaults

    def judge(name: str, checkpoint: Path, seconds: dict[str, float], reject: bool = False) -> dict[str, Any]:
        t = time.perf_counter()
        folder = out / name / ("samples-accepted" if reject else "samples")
        accept = reward_acceptor(str(demo / "round_1" / "reward"), args.min_reward, str(checkpoint)) if reject else None
        scfg = dataclasses.replace(
            sampling.sample_config(n, cfg.seed + SEED_OFFSET), device=cfg.device, use_fp16=cfg.use_fp16
        )
        drawn = sample_folder(checkpoint, folder, scfg, accept=accept, progress=args.progress)
        seconds["sample"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        result = evaluator.judge(folder)
        seconds["evaluate"] = round(time.perf_counter() - t, 1)
        row = {
            "variant": name + (f" + reward >= {args.min_reward}" if reject else ""),
            "steps": 0 if name == "pretrained" else steps,
            "seconds": seconds,
            **summary_metrics(result.samples.metrics),
        }
        if reject:
            row["acceptance rate"] = drawn.acceptance_rate
        emit(**row)
        return row

    rows = []
    for name in ["pretrained"] + names:
        t = time.perf_counter()
        checkpoint = (
            pre
            if name == "pretrained"
            else train_variant(name, VARIANTS[name], cfg, demo, train_dir, out, steps, lr, args.progress)
        )
        rows.append(judge(name, checkpoint, {"train": round(time.perf_counter() - t, 1)}))
        if args.min_reward:
            rows.append(judge(name, checkpoint, {}, reject=True))
    summary = {"demo": str(demo), "steps": steps, "lr": lr, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True, help="a finished `clinalign demo --out DIR` run")
    p.add_argument("--out", default="", help="default: DEMO/objectives")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=0, help="0: the demo's finetune steps")
    p.add_argument("--lr", type=float, default=0.0, help="0: the demo's finetune lr")
    p.add_argument(
        "--min_reward",
        type=float,
        default=0.0,
        help="also sample each model with rejection by the round-1 reward model at this threshold",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    args.out = args.out or str(Path(args.demo) / "objectives")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    emit(summary=run(args))


if __name__ == "__main__":
    main()
