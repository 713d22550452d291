"""Clinically-informed finetuning: the one training loop with two weighted streams.

Per step, a batch of real pretraining images and a batch of scored synthetic images share
timesteps, and the objective is (Sun et al. 2023, after the reward-weighted likelihood of
Lee et al. 2023 with a pretraining anchor)

    L = beta * mean_i L_diff(x_i^real) + mean_j r(x_j, c_j) * L_diff(x_j^syn)

with beta = 0.3 (the published code's value) and r the expert-informed reward in [0, 1]. The
synthetic images the experts (or the reward model) reject get weight ~0, so the model stops
putting mass there; the beta term keeps it close to the real data so nothing is forgotten.

``--objective kto`` uses the judgements as likes/dislikes instead (Diffusion-KTO, Li et al. 2024;
see :mod:`clinalign.train`), for comparison with the reward-weighted objective.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import find_checkpoint, latest_checkpoint
from ..errors import ConfigError, DataError
from .config import DIFFUSION_FLAGS, MODEL_FLAGS, TRAIN_FLAGS, resolve, typed
from .pretrain import check_channels, load_dataset, weighted_stream, write_run_config
from .loop import KTOSpec, TrainSpec, config_mismatch, default_run_dir, train

log = logging.getLogger(__name__)

REWARD_TRANSFORMS = ("raw", "threshold", "class_norm")
OBJECTIVES = ("reward-weighted", "kto")
REWARDS_FILE = "rewards.csv"
# lr multiplier for new concept rows (the job textual inversion does with a high embedding lr).
# Measured on PBC (bench/concepts.py, 200 steps at lr 2e-4): x1 band/segmented accuracy 0.67/0.27
# against the parent's 0.66/0.34; x25 0.80/0.42; x100 0.85/0.50 with no class losing 5 points.
DEFAULT_CONCEPT_LR_SCALE = 100.0


def read_rewards_csv(path: str | Path) -> dict[str, float]:
    """The seed's rewards file: header ``ID,rewards``; ID is an image file name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: rewards file not found; score the samples first "
                        "(clinalign reward score --images DIR --out DIR/rewards.csv) or pass --rewards")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "ID" not in reader.fieldnames or "rewards" not in reader.fieldnames:
            raise DataError(f"{path}: expected the header 'ID,rewards', found {reader.fieldnames}; fix the header")
        out: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row["rewards"])
            except (TypeError, ValueError):
                raise DataError(f"{path}:{line}: reward {row['rewards']!r} is not a number; fix or delete the row") from None
            if not np.isfinite(value):
                raise DataError(f"{path}:{line}: reward {value} is not finite; fix or delete the row")
            out[row["ID"]] = value
    return out


def find_rewards_file(data_mod_dir: Path, given: str = "") -> Path:
    if given:
        return Path(given)
    candidate = data_mod_dir / REWARDS_FILE
    if candidate.exists():
        return candidate
    csvs = [p for p in data_mod_dir.glob("*.csv") if p.name != "manifest.csv" and "detail" not in p.name]
    if len(csvs) == 1:
        return csvs[0]
    raise DataError(f"{data_mod_dir}: no {REWARDS_FILE} found (and {len(csvs)} other CSV files); "
                    "pass --rewards FILE with columns ID,rewards")


def transform_rewards(rewards: np.ndarray, labels: np.ndarray, mode: str, threshold: float = 0.5) -> np.ndarray:
    """Per-image loss weights from rewards.

    raw: r clipped to [0, 1]. threshold: 1{r >= threshold} (a hard accept/reject, as if the
    experts' verdicts were used directly). class_norm: min-max per class, so that each class's
    best samples get weight 1 even where the reward model is harsh on the whole class.
    """
    r = np.clip(rewards.astype(np.float64), 0.0, 1.0)
    if mode == "raw":
        return r
    if mode == "threshold":
        return (r >= threshold).astype(np.float64)
    if mode == "class_norm":
        out = np.zeros_like(r)
        for c in np.unique(labels):
            sel = labels == c
            lo, hi = r[sel].min(), r[sel].max()
            out[sel] = (r[sel] - lo) / (hi - lo) if hi > lo else 1.0
        return out
    raise ConfigError(f"unknown --reward_transform {mode!r}; choose one of {', '.join(REWARD_TRANSFORMS)}")


def grow_for_concepts(class_map, mod_dir: Path, specs: list[str] | None) -> tuple[Any, dict[str, str]]:
    """The checkpoint's class map grown by the concepts the synthetic images declare.

    Parents come from ``--concept NAME=PARENT`` or ``MOD_DIR/concepts.json`` (written by
    ``clinalign concepts assign``); a class the checkpoint lacks with neither is a DataError.
    """
    from ..data.concepts import concept_parents, grow_class_map, parse_concept_specs
    from ..data.naming import declared_classes, list_images

    classes = set(declared_classes(list_images(mod_dir), mod_dir))
    parents = concept_parents(mod_dir, class_map.names, parse_concept_specs(specs), classes=classes)
    if not parents:
        return class_map, {}
    grown = grow_class_map(class_map, parents)
    new = [n for n in grown.names if n not in class_map]
    if new:
        log.info("new concepts %s: class embedding rows copied from %s", ", ".join(new),
                 ", ".join(str(grown.parents[n]) for n in new))
    return grown, {n: grown.parents[n] for n in grown.names if grown.parents.get(n)}


def finetune(args: argparse.Namespace | dict[str, Any], progress: bool = False) -> Path:
    """Finetune a pretrained checkpoint on scored synthetic images plus the real data."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    train_cfg = resolve(values, TRAIN_FLAGS)
    typed_model, typed_diffusion = typed(values, MODEL_FLAGS), typed(values, DIFFUSION_FLAGS)
    run_dir = default_run_dir(train_cfg)
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        source = resume
        log.info("resuming finetuning run %s at step %d", run_dir, resume.step)
    else:
        if not train_cfg["resume_checkpoint"]:
            raise ConfigError("--resume_checkpoint is required: the pretrained checkpoint to finetune")
        source = find_checkpoint(train_cfg["resume_checkpoint"])
    problems = config_mismatch(source.model_config, typed_model) + config_mismatch(source.diffusion_config, typed_diffusion)
    if problems:
        raise ConfigError(f"{source.path}: flags disagree with the checkpoint's config: {', '.join(problems)}; "
                          "drop them (the checkpoint's values are used)")
    # KTO's frozen reference is the model finetuning started from, also when resuming.
    init_path = Path(source.meta.get("init_checkpoint") or source.path) if resume is not None else source.path
    model_cfg = resolve(values, MODEL_FLAGS, source.model_config)
    diffusion_cfg = resolve(values, DIFFUSION_FLAGS, source.diffusion_config)
    size = model_cfg["image_size"]

    pre_dir, mod_dir = values.get("data_pre_dir") or train_cfg["data_dir"], values.get("data_mod_dir")
    if not mod_dir:
        raise ConfigError("--data_mod_dir is required: the folder of scored synthetic images")
    class_map, concepts = grow_for_concepts(source.class_map, Path(mod_dir), values.get("concept"))
    real = load_dataset(pre_dir, size, model_cfg["class_cond"], class_map, train_cfg)
    synthetic = load_dataset(mod_dir, size, model_cfg["class_cond"], class_map, train_cfg)
    check_channels(real, source.channels, source.path)
    check_channels(synthetic, source.channels, source.path)

    rewards_file = find_rewards_file(Path(mod_dir), values.get("rewards", ""))
    table = read_rewards_csv(rewards_file)
    missing = [p.name for p in synthetic.paths if p.name not in table]
    if missing:
        raise DataError(f"{rewards_file}: no reward for {len(missing)} image(s) of {mod_dir}, e.g. {missing[0]}; "
                        "rescore the folder (clinalign reward score) so every image has a row")
    raw = np.array([table[p.name] for p in synthetic.paths])
    mode = values.get("reward_transform", "raw")
    threshold = float(values.get("reward_threshold", 0.5))
    objective = values.get("objective", "reward-weighted")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown --objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective == "kto":  # liked (+1) / disliked (-1): the judgements themselves, not their strength
        mode = "sign"
        weights = np.where(raw >= threshold, 1.0, -1.0)
    else:
        weights = transform_rewards(raw, np.asarray(synthetic.labels), mode, threshold)
    beta = float(values.get("beta", 0.3))
    log.info("finetuning on %d real + %d synthetic images (mean reward %.3f, mean weight %.3f, beta %.2f)",
             len(real), len(synthetic), raw.mean(), weights.mean(), beta)

    # The rows this run adds to the starting model's map (also when resuming: the start is init_path).
    start = source if resume is None else find_checkpoint(init_path)
    new_rows = [class_map.index(n) for n in class_map.names if n not in start.class_map]
    concept_lr_scale = float(values.get("concept_lr_scale", DEFAULT_CONCEPT_LR_SCALE))
    write_run_config(run_dir, model_cfg, diffusion_cfg, train_cfg, source.channels, class_map, {
        "objective": objective, "beta": beta, "reward_transform": mode, "rewards": str(rewards_file),
        "data_pre_dir": str(pre_dir), "data_mod_dir": str(mod_dir), "init_checkpoint": str(init_path),
        "n_real": len(real), "n_synthetic": len(synthetic), "concepts": concepts,
        "concept_lr_scale": concept_lr_scale if new_rows else None})
    batch, seed = int(train_cfg["batch_size"]), int(train_cfg["seed"])
    w = torch.tensor(weights, dtype=torch.float32)
    spec = TrainSpec(
        run_dir=run_dir, model_cfg=model_cfg, diffusion_cfg=diffusion_cfg, train_cfg=train_cfg,
        channels=source.channels, class_map=class_map,
        streams=lambda dist, start: [weighted_stream(real, batch, seed, dist, start, weight=beta),
                                     weighted_stream(synthetic, batch, seed + 1, dist, start, weight=w)],
        resume=resume,
        init_weights=None if resume else source.weights(ema=values.get("init_ema", True), class_map=class_map),
        progress=progress,
        extra_meta={"objective": objective, "beta": beta, "init_checkpoint": str(init_path)},
        new_class_rows=new_rows, new_class_lr_scale=concept_lr_scale,
        kto=KTOSpec(start.weights(ema=values.get("init_ema", True), class_map=class_map),
                    beta=float(values.get("kto_beta", 5000.0))) if objective == "kto" else None,
    )
    return train(spec)


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import add_flags, str2bool

    group = parser.add_argument_group("finetuning")
    group.add_argument("--data_pre_dir", default="", help="real pretraining images (the beta-weighted anchor)")
    group.add_argument("--data_mod_dir", default="", help="scored synthetic images (LABEL_xxx.png + rewards.csv)")
    group.add_argument("--rewards", default="", help="rewards CSV (ID,rewards); default: DATA_MOD_DIR/rewards.csv")
    group.add_argument("--beta", type=float, default=0.3, help="weight of the real-data diffusion loss")
    group.add_argument("--reward_transform", default="raw", choices=REWARD_TRANSFORMS,
                       help="raw rewards, a hard threshold, or min-max normalised per class")
    group.add_argument("--reward_threshold", type=float, default=0.5, help="for --reward_transform threshold")
    group.add_argument("--objective", default="reward-weighted", choices=OBJECTIVES,
                       help="reward-weighted likelihood (the paper's), or Diffusion-KTO on liked/disliked "
                       "images (reward >= --reward_threshold is liked)")
    group.add_argument("--kto_beta", type=float, default=5000.0,
                       help="KTO's scale on the loss difference to the frozen starting model")
    group.add_argument("--concept", action="append", default=[], metavar="NAME=PARENT",
                       help="a concept the synthetic images declare and the checkpoint lacks (repeatable; "
                            "default: DATA_MOD_DIR/concepts.json); its embedding row starts as the parent's")
    group.add_argument("--concept_lr_scale", type=float, default=DEFAULT_CONCEPT_LR_SCALE,
                       help="learning-rate multiplier for the embedding rows of new concepts; the existing "
                            "classes' rows stay frozen while concepts are taught")
    group.add_argument("--init_ema", type=str2bool, default=True, metavar="BOOL",
                       help="start from the pretrained EMA weights (else the raw weights)")
    add_flags(parser.add_argument_group("model (from the checkpoint)"), MODEL_FLAGS, inherit=True)
    add_flags(parser.add_argument_group("diffusion (from the checkpoint)"), DIFFUSION_FLAGS, inherit=True)
    add_flags(parser.add_argument_group("training"), TRAIN_FLAGS)
