"""Teaching a new clinical concept on real blood cells (the paper's Algorithm 4), printed as JSON.

    python bench/concepts.py                          # ../shared/data/pbc_64, ~35 min on 2 CPU cores
    python bench/concepts.py --minutes 5 --out /tmp/c # a smaller run (steps scale with --minutes)

The PBC file names carry subtypes the 8 class labels hide (``neutrophil_BNE_*`` band,
``neutrophil_SNE_*`` segmented). The run:

1. pretrains a class-conditional denoiser on the 8 classes only (``--size`` px);
2. samples every class (the "before" set) plus extra neutrophils;
3. a simulated expert that knows the subtypes (its resnet trained on subtype labels, real half A)
   judges every sample and assigns plausible neutrophils to ``neutrophil-band`` /
   ``neutrophil-segmented`` (``expert simulate --concept``);
4. ``concepts assign`` declares the assigned samples as their concepts; a reward model is trained on
   the feedback (Γ(x, concept) like any class) and scores them;
5. finetunes (β·real + r·synthetic), growing the class embedding by the two concepts;
6. samples the 8 classes again (the "after" set) and each concept;
7. judges: a subtype oracle (vgg, real half B, independent of the expert) gives the concept
   accuracy — the share of samples requested as a concept it puts in the concept's subtype —
   against the pretrained model's share for plain neutrophil samples; the evaluation oracle gives
   per-class plausibility and FID before and after.

Timings are wall-clock on whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
CONCEPTS = {"neutrophil-band": "BNE", "neutrophil-segmented": "SNE"}
PARENT = "neutrophil"
log = logging.getLogger("bench.concepts")


def scaled(steps: int, minutes: float) -> int:
    return max(10, round(steps * minutes / 25.0))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from collections import Counter

    import torch

    from clinalign.concepts.assign import AssignResult, assign
    from clinalign.data.concepts import read_concepts_file
    from clinalign.evaluate.concepts import SubtypeOracle, subtype_shares
    from clinalign.evaluate.data import ImageSet
    from clinalign.evaluate.oracle import OracleConfig
    from clinalign.evaluate.run import MetricConfig, evaluate
    from clinalign.expert.simulator import ExpertConfig, simulate
    from clinalign.reward.score import score_folder
    from clinalign.reward.train import TrainConfig, train_reward
    from clinalign.sampling.sample import SampleConfig, sample_folder
    from clinalign.training.finetune import finetune
    from clinalign.training.pretrain import pretrain

    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    train_dir, test_dir = data / "train", data / "test"
    if not train_dir.is_dir():
        raise SystemExit(f"{train_dir}: not found; pass --data with train/ and test/ of PBC-named images")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str, start: float) -> None:
        seconds[name] = round(time.perf_counter() - start, 1)
        log.info("%s done in %.0fs (total %.0fs)", name, seconds[name], time.perf_counter() - t0)

    size, seed = args.size, args.seed
    pre_steps = args.pretrain_steps or scaled(2000, args.minutes)
    ft_steps = args.finetune_steps or scaled(200, args.minutes)
    model = {
        "image_size": size,
        "num_channels": args.channels,
        "num_res_blocks": 1,
        "attention_resolutions": "8",
        "num_heads": 2,
        "class_cond": True,
        "diffusion_steps": 1000,
        "noise_schedule": "cosine",
        # x0-prediction: with eps-prediction this budget gave off-colour cells the expert rejected
        # (3 of 512 plausible); see clinalign/demo.py for the measurement on toy cells.
        "predict_xstart": True,
    }

    t = time.perf_counter()
    pre = out / "pretrain"
    pretrain(
        {
            **model,
            "data_dir": str(train_dir),
            "run_dir": str(pre),
            "batch_size": args.batch,
            "lr": args.lr,
            "ema_rate": "0.999",
            "max_steps": pre_steps,
            "save_interval": 500,
            "log_interval": 50,
            "seed": seed,
            "device": args.device,
        }
    )
    lap("pretrain", t)

    def sample(checkpoint: Path, folder: Path, n: int, classes: list[str] | None, s: int) -> Path:
        sample_folder(
            checkpoint,
            folder,
            SampleConfig(
                num_samples=n,
                classes=",".join(classes or []),
                sampler="dpm++",
                steps=args.sample_steps,
                batch_size=64,
                seed=s,
                device=args.device,
            ),
        )
        return folder

    t = time.perf_counter()
    n_classes = 8
    before = sample(pre, out / "before", args.per_class * n_classes, None, seed + 1)
    extra = sample(pre, out / "neutrophils", args.neutrophils, [PARENT], seed + 2)
    lap("sample_before", t)

    # The expert judges every sample; all of them (with the extra neutrophils) feed the finetune.
    t = time.perf_counter()
    pool = out / "pool"
    if not pool.exists():
        import shutil

        tmp = out / ".pool"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for folder, tag in ((before, "b"), (extra, "n")):
            for p in sorted(folder.glob("*.png")):
                cls, rest = p.name.split("_", 1)
                shutil.copyfile(p, tmp / f"{cls}_{tag}{rest}")
        tmp.rename(pool)
    expert_cfg = ExpertConfig(
        image_size=size,
        width=args.expert_width,
        epochs=args.expert_epochs,
        seed=seed,
        label_from="subtype",
        manifold_k=args.expert_manifold_k,
    )
    feedback = out / "feedback"
    sim = simulate(
        pool,
        feedback,
        train_dir,
        tau=args.expert_tau,
        config=expert_cfg,
        expert_dir=out / "expert",
        overwrite=True,
        concepts={c: f"{PARENT}:{s}" for c, s in CONCEPTS.items()},
    )
    lap("expert", t)
    if not any(c in sim.counts for c in CONCEPTS):
        # The expert found no plausible neutrophil to name a subtype on: nothing to teach. Say so
        # instead of finetuning on nothing.
        return {
            "status": "no concept assigned: the expert judged too few samples plausible",
            "expert": {
                "val_accuracy": _expert_acc(out / "expert"),
                "plausible_rate": sim.plausible_rate,
                "counts": sim.counts,
            },
            "pretrain_steps": pre_steps,
            "seconds": seconds,
            "hint": "pretrain longer (--pretrain_steps / --minutes), or relax the expert "
            "(--expert_tau, --expert_manifold_k 0)",
        }

    t = time.perf_counter()
    # Only the assigned images: the synthetic half of every finetuning batch teaches the concepts, and the
    # beta-weighted real half keeps all 8 classes anchored.
    scored = out / "assigned" / "rewards.csv"
    if scored.exists():  # a rerun (e.g. with other judging settings) keeps what the finetune was trained on
        assigned = AssignResult(
            scored.parent,
            read_concepts_file(scored.parent),
            dict(Counter(c for c in _classes(scored.parent) if c in CONCEPTS)),
        )
    else:
        assigned = assign(
            pool, feedback, out / "assigned", set(_classes(pool)), overwrite=True, only_assigned=not args.all_samples
        )
        reward_dir = out / "reward"
        train_reward(
            TrainConfig(
                train_dir=train_dir,
                train_anno_dir=feedback,
                save_dir=reward_dir,
                image_size=size,
                epochs=args.reward_epochs,
                seed=seed,
                device=args.device,
            )
        )
        score_folder(reward_dir, assigned.out, scored)
    lap("reward", t)

    t = time.perf_counter()
    ft = out / "finetune"
    finetune(
        {
            "resume_checkpoint": str(pre),
            "data_pre_dir": str(train_dir),
            "data_mod_dir": str(assigned.out),
            "run_dir": str(ft),
            "batch_size": args.batch // 2,
            "lr": args.finetune_lr,
            "max_steps": ft_steps,
            "ema_rate": "0.999",
            "save_interval": 10_000,
            "log_interval": 50,
            "seed": seed,
            "device": args.device,
            "beta": args.beta,
            "concept_lr_scale": args.concept_lr_scale,
        }
    )
    lap("finetune", t)

    from clinalign.training.checkpoint import find_checkpoint

    t = time.perf_counter()
    base = find_checkpoint(pre).class_map.names  # the 8 classes only: concepts are judged separately
    after = sample(ft, out / "after", args.per_class * n_classes, base, seed + 1)
    # A concept nobody was assigned to is not in the finetuned map.
    taught = [c for c in CONCEPTS if c in find_checkpoint(ft).class_map]
    concept_samples = sample(ft, out / "concept_samples", args.per_concept * len(taught), taught, seed + 3)
    lap("sample_after", t)

    t = time.perf_counter()
    oracle = SubtypeOracle.fit_or_load(
        ImageSet.from_folder(train_dir, size),
        PARENT,
        OracleConfig(image_size=size, epochs=args.concept_oracle_epochs, width=32, batch_size=32, seed=seed),
        out / "models",
        subtypes=sorted(CONCEPTS.values()),
    )

    def images_of(folder: Path, cls: str):
        s = ImageSet.from_folder(folder, size, oracle.channels)
        return s.subset([c == cls for c in s.classes]).images

    plain_before = subtype_shares(oracle, images_of(before, PARENT) if args.per_class else images_of(extra, PARENT))
    plain_extra = subtype_shares(oracle, images_of(extra, PARENT))
    plain_after = subtype_shares(oracle, images_of(after, PARENT))
    concept_rows = []
    for concept, subtype in CONCEPTS.items():
        shares = subtype_shares(oracle, images_of(concept_samples, concept)) if concept in taught else {}
        concept_rows.append(
            {
                "requested": concept,
                "subtype": subtype,
                "n": args.per_concept if concept in taught else 0,
                "n_assigned": assigned.assigned.get(concept, 0),
                "concept_accuracy": shares.get(subtype, float("nan")),
                "pretrained_plain_neutrophil_rate": plain_extra[subtype],
                "finetuned_plain_neutrophil_rate": plain_after[subtype],
            }
        )
    # The expert's own assignments, as the subtype oracle sees them (how clean the teaching signal was).
    fb_rows = {}
    for concept, subtype in CONCEPTS.items():
        folder = feedback / concept / "align"
        if folder.is_dir() and any(folder.iterdir()):
            s = ImageSet.from_arrays(_read(folder, size, oracle.channels), [concept] * len(list(folder.iterdir())))
            fb_rows[concept] = {"n": len(s), "oracle_agrees": subtype_shares(oracle, s.images)[subtype]}
    lap("concept_oracle", t)

    t = time.perf_counter()
    evaluation = evaluate(
        train_dir,
        after,
        out / "evaluation",
        baseline=before,
        real_test=test_dir,
        models_dir=out / "evaluation-models",
        oracle_config=OracleConfig(image_size=size, epochs=args.oracle_epochs, seed=seed),
        metric_config=MetricConfig(utility=None, bootstrap=0),
    )
    lap("evaluate", t)
    seconds["total"] = round(time.perf_counter() - t0, 1)

    m_after, m_before = evaluation.samples.metrics, evaluation.baseline.metrics
    per_class = []
    for c in sorted(m_after["plausibility"]["per_class"]):
        b = m_before["plausibility"]["per_class"].get(c, {}).get("rate", float("nan"))
        a = m_after["plausibility"]["per_class"][c]["rate"]
        per_class.append(
            {
                "class": c,
                "plausible_before": b,
                "plausible_after": a,
                "change_points": 100 * (a - b),
                "fid_before": m_before["fid_per_class"].get(c),
                "fid_after": m_after["fid_per_class"][c],
            }
        )
    return {
        "data": str(data),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "pretrain_steps": pre_steps,
        "finetune_steps": ft_steps,
        "expert": {"val_accuracy": _expert_acc(out / "expert"), "counts": sim.counts},
        "concept_oracle": {k: oracle.info[k] for k in ("arch", "half", "n_train", "val_accuracy")}
        | {"subtypes": oracle.subtypes},
        "concepts": concept_rows,
        "plain_neutrophil_shares": {
            "pretrained": plain_extra,
            "pretrained_before_set": plain_before,
            "finetuned": plain_after,
        },
        "expert_assignments_judged_by_oracle": fb_rows,
        "overall": {
            "plausible_before": m_before["plausibility"]["rate"],
            "plausible_after": m_after["plausibility"]["rate"],
            "fid_before": m_before["fid"],
            "fid_after": m_after["fid"],
        },
        "per_class": per_class,
        "max_class_loss_points": max(0.0, max(-r["change_points"] for r in per_class)),
        "seconds": seconds,
    }


def _classes(folder: Path) -> list[str]:
    from clinalign.data.naming import declared_classes, list_images

    return declared_classes(list_images(folder), folder)


def _read(folder: Path, size: int, channels: int):
    import numpy as np

    from clinalign.data.folder import load_image

    return np.stack([load_image(p, size, channels) for p in sorted(folder.iterdir())])


def _expert_acc(expert_root: Path) -> float | None:
    for meta in expert_root.glob("*/expert.json"):
        return json.loads(meta.read_text())["info"].get("val_accuracy")
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "pbc_64"))
    p.add_argument("--out", default="runs/bench-concepts")
    p.add_argument("--minutes", type=float, default=25.0, help="scales the pretraining and finetuning steps")
    p.add_argument("--pretrain_steps", type=int, default=0, help="0: 2000 x minutes/25")
    p.add_argument("--finetune_steps", type=int, default=0, help="0: 200 x minutes/25")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--finetune_lr", type=float, default=2e-4)
    p.add_argument(
        "--beta",
        type=float,
        default=1.0,
        help="weight of the real-data loss (measured: 0.3 cost neutrophils 37 points, 1 kept them)",
    )
    p.add_argument(
        "--concept_lr_scale",
        type=float,
        default=100.0,
        help="lr multiplier for the concept embedding rows (1: they barely leave the parent's row)",
    )
    p.add_argument(
        "--per_class",
        type=int,
        default=96,
        help="samples per class before and after (at 32 one sample is 3 points of a class's rate)",
    )
    p.add_argument("--neutrophils", type=int, default=256, help="extra neutrophil samples for the expert")
    p.add_argument("--per_concept", type=int, default=128)
    p.add_argument("--sample_steps", type=int, default=20)
    p.add_argument("--expert_epochs", type=int, default=5)
    p.add_argument("--expert_width", type=int, default=16)
    p.add_argument("--expert_tau", type=float, default=0.5, help="the expert's strictness")
    p.add_argument("--expert_manifold_k", type=int, default=5, help="0 turns the expert's manifold check off")
    p.add_argument("--reward_epochs", type=int, default=6)
    p.add_argument("--oracle_epochs", type=int, default=4, help="the evaluation oracle (8 classes)")
    p.add_argument(
        "--concept_oracle_epochs",
        type=int,
        default=20,
        help="the neutrophil subtype oracle (trained on ~1000 images, so cheap)",
    )
    p.add_argument(
        "--all_samples",
        action="store_true",
        help="finetune on every judged sample (reward-weighted), not only the concept-assigned ones",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: a GPU when there is one)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids oversubscribing a busy CPU)")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    print(json.dumps(run(args), indent=2, default=float))


if __name__ == "__main__":
    main()
