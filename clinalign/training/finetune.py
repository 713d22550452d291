"""Clinically-informed finetuning: the one training loop with two weighted streams.

Per step, a batch of real pretraining images and a batch of scored synthetic images share
timesteps, and the objective is (Sun et al. 2023, after the reward-weighted likelihood of
Lee et al. 2023 with a pretraining anchor)

    L = beta * mean_i L_diff(x_i^real) + mean_j r(x_j, c_j) * L_diff(x_j^syn)

with beta = 0.3 (the published code's value) and r the expert-informed reward in [0, 1]. The
synthetic images the experts (or the reward model) reject get weight ~0, so the model stops
putting mass there; the beta term keeps it close to the real data so nothing is forgotten.

``--objective kto`` uses the judgements as likes/dislikes instead (Diffusion-KTO, Li et al. 2024;
see :mod:`clinalign.training.objectives`), for comparison with the reward-weighted objective.

``--objective guidance`` learns from the rejections too, without a negative loss: every class gains
a ``CLASS-rejected`` class (its embedding row copied from the class's), the rejected images train
that class and the accepted ones their own, both at weight 1 beside the real data. Sampling then
steers each class away from what the experts rejected in it,
``out = out(c) + w * (out(c) - out(c-rejected))`` (:mod:`clinalign.sampling.guidance`), the way
classifier-free guidance steers away from the unconditional model (Ho & Salimans 2022).
"""

from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..diffusion import DiffusionConfig
from ..errors import ConfigError, DataError
from ..models.unet import ModelConfig
from ..utils.config import add_flags, resolve, typed
from ..utils.fileio import write_texts_atomic
from .checkpoint import Checkpoint, find_checkpoint, latest_checkpoint
from .config import OBJECTIVES, REWARD_TRANSFORMS, FinetuneConfig, TrainConfig, check_synthetic_min_t
from .init_from import start_from_diffusers
from .loop import TrainSpec, check_flags, train
from .objectives import DiffusionObjective, KTOObjective
from .pretrain import add_model_flags, check_channels, load_dataset, weighted_stream, write_run_config

log = logging.getLogger(__name__)

REWARDS_FILE = "rewards.csv"
REJECTED_SUFFIX = "-rejected"


def read_rewards_csv(path: str | Path) -> dict[str, float]:
    """The seed's rewards file: header ``ID,rewards``; ID is an image file name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: rewards file not found; score the samples first "
            "(clinalign reward score --images DIR --out DIR/rewards.csv) or pass --rewards"
        )
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "ID" not in reader.fieldnames or "rewards" not in reader.fieldnames:
            raise DataError(f"{path}: expected the header 'ID,rewards', found {reader.fieldnames}; fix the header")
        out: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            try:
                value = float(row["rewards"])
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}:{line}: reward {row['rewards']!r} is not a number; fix or delete the row"
                ) from None
            if not np.isfinite(value):
                raise DataError(f"{path}:{line}: reward {value} is not finite; fix or delete the row")
            out[row["ID"]] = value
    return out


def write_rewards_csv(path: str | Path, rewards: dict[str, float]) -> Path:
    """``rewards`` as the seed's rewards file (``ID,rewards``), written atomically; returns ``path``."""
    path = Path(path)
    write_texts_atomic({path: "ID,rewards\n" + "".join(f"{n},{v:.6g}\n" for n, v in rewards.items())})
    return path


def find_rewards_file(data_mod_dir: Path, given: str = "") -> Path:
    if given:
        return Path(given)
    candidate = data_mod_dir / REWARDS_FILE
    if candidate.exists():
        return candidate
    csvs = [p for p in data_mod_dir.glob("*.csv") if p.name != "manifest.csv" and "detail" not in p.name]
    if len(csvs) == 1:
        return csvs[0]
    raise DataError(
        f"{data_mod_dir}: no {REWARDS_FILE} found (and {len(csvs)} other CSV files); "
        "pass --rewards FILE with columns ID,rewards"
    )


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
        log.info(
            "new concepts %s: class embedding rows copied from %s",
            ", ".join(new),
            ", ".join(str(grown.parents[n]) for n in new),
        )
    return grown, {n: grown.parents[n] for n in grown.names if grown.parents.get(n)}


def grow_for_rejections(class_map, prior: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """(the map grown by a rejected-images class per class, ``{class: its rejected class}``).

    ``prior`` is the starting checkpoint's pairs, so a later round keeps them and adds none twice.
    """
    from ..data.concepts import grow_class_map

    negatives = set(prior.values())
    pairs = dict(prior)
    for name in class_map.names:
        if name not in negatives and name not in pairs:
            pairs[name] = name + REJECTED_SUFFIX
    grown = grow_class_map(class_map, {neg: cls for cls, neg in pairs.items() if neg not in class_map})
    return grown, pairs


def label_rejected(dataset, accepted: np.ndarray, pairs: dict[str, str], class_map) -> int:
    """Move the rejected images of ``dataset`` to their class's rejected class; returns how many moved."""
    to_negative = {class_map.index(c): class_map.index(n) for c, n in pairs.items()}
    negatives = set(to_negative.values())
    declared = [i for i, y in enumerate(dataset.labels) if y in negatives]
    if declared:  # only the expert's verdict may put an image there, or a rejection would train the class
        path = dataset.paths[declared[0]]
        raise DataError(
            f"{path}: declares class {class_map.names[dataset.labels[declared[0]]]!r}, a class that only "
            f"holds expert-rejected samples ({len(declared)} such image(s) in {dataset.root}); "
            "name the image by the class it was sampled for"
        )
    dataset.labels = [y if ok else to_negative[y] for y, ok in zip(dataset.labels, accepted)]
    return int((~accepted).sum())


@dataclass
class Start:
    """Where a finetune starts: the checkpoint whose weights it loads, and the model it started from."""

    source: Checkpoint  # the run's own latest checkpoint when resuming, else --resume_checkpoint
    resume: Checkpoint | None
    init: Checkpoint  # the model finetuning started from (KTO's frozen reference), also when resuming


def find_start(run_dir: Path, train_cfg: TrainConfig, args) -> Start:
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        log.info("resuming finetuning run %s at step %d", run_dir, resume.step)
        init = find_checkpoint(resume.meta.get("init_checkpoint") or resume.path)
        source = resume
    else:
        if not train_cfg.resume_checkpoint:
            raise ConfigError("--resume_checkpoint is required: the pretrained checkpoint to finetune")
        source = init = find_checkpoint(train_cfg.resume_checkpoint)
    check_flags(
        source,
        typed(args, ModelConfig),
        typed(args, DiffusionConfig),
        hint="drop them (the checkpoint's values are used)",
    )
    return Start(source, resume, init)


def check_carry(source: Checkpoint, class_map) -> None:
    """ConfigError when the finetune adds classes to ``source``'s or ``source`` saved no training state."""
    added = [n for n in class_map.names if n not in source.class_map]
    if added:
        raise ConfigError(
            f"--carry_state: this finetune adds classes ({', '.join(added)}) that {source.path} holds no "
            "optimizer state for; drop --carry_state for the round that adds them"
        )
    if not (source.path / "state.pt").exists():
        raise ConfigError(
            f"--carry_state: {source.path} holds no optimizer state (an imported or weights-only "
            "checkpoint); drop --carry_state"
        )


def synthetic_weights(ft: FinetuneConfig, synthetic, mod_dir: Path) -> tuple[np.ndarray, np.ndarray, str, Path]:
    """(raw rewards, per-image loss weights, the transform used, the rewards file) for the synthetic images."""
    rewards_file = find_rewards_file(mod_dir, ft.rewards)
    table = read_rewards_csv(rewards_file)
    missing = [p.name for p in synthetic.paths if p.name not in table]
    if missing:
        raise DataError(
            f"{rewards_file}: no reward for {len(missing)} image(s) of {mod_dir}, e.g. {missing[0]}; "
            "rescore the folder (clinalign reward score) so every image has a row"
        )
    raw = np.array([table[p.name] for p in synthetic.paths])
    if ft.objective not in OBJECTIVES:
        raise ConfigError(f"unknown --objective {ft.objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if ft.objective == "kto":  # liked (+1) / disliked (-1): the judgements themselves, not their strength
        return raw, np.where(raw >= ft.reward_threshold, 1.0, -1.0), "sign", rewards_file
    if ft.objective == "guidance":  # the rejected images train under their rejected class
        accepted = raw >= ft.reward_threshold
        return raw, np.where(accepted, ft.guidance_accepted_weight, 1.0), "guidance", rewards_file
    weights = transform_rewards(raw, np.asarray(synthetic.labels), ft.reward_transform, ft.reward_threshold)
    return raw, weights, ft.reward_transform, rewards_file


def finetune(args: argparse.Namespace | dict[str, Any], progress: bool = False) -> Path:
    """Finetune a pretrained checkpoint on scored synthetic images plus the real data."""
    train_cfg, ft = resolve(TrainConfig, args), resolve(FinetuneConfig, args)
    train_cfg = start_from_diffusers(train_cfg, args, ft.data_pre_dir or train_cfg.data_dir)
    run_dir = train_cfg.run_path()
    start = find_start(run_dir, train_cfg, args)
    source = start.source
    model_cfg = resolve(ModelConfig, args, source.model)
    diffusion_cfg = resolve(DiffusionConfig, args, source.diffusion)
    pre_dir, mod_dir = ft.data_pre_dir or train_cfg.data_dir, ft.data_mod_dir
    if not mod_dir:
        raise ConfigError("--data_mod_dir is required: the folder of scored synthetic images")
    check_synthetic_min_t(ft.synthetic_min_t)
    if ft.synthetic_batch_size < 0:
        raise ConfigError(
            f"--synthetic_batch_size {ft.synthetic_batch_size}: give a count of images, or 0 for --batch_size"
        )
    class_map, concepts = grow_for_concepts(source.class_map, Path(mod_dir), ft.concept)
    guidance = source.guidance
    if ft.objective == "guidance":
        class_map, guidance = grow_for_rejections(class_map, guidance)
    if ft.carry_state and start.resume is None:
        check_carry(source, class_map)
    real = load_dataset(pre_dir, model_cfg, class_map, train_cfg)
    synthetic = load_dataset(mod_dir, model_cfg, class_map, train_cfg)
    check_channels(real, source.channels, source.path)
    check_channels(synthetic, source.channels, source.path)
    raw, weights, mode, rewards_file = synthetic_weights(ft, synthetic, Path(mod_dir))
    if ft.objective == "guidance":
        moved = label_rejected(synthetic, raw >= ft.reward_threshold, guidance, class_map)
        log.info("guidance: %d rejected image(s) train their class's rejected class", moved)
    log.info(
        "finetuning on %d real + %d synthetic images (mean reward %.3f, mean weight %.3f, beta %.2f)",
        len(real),
        len(synthetic),
        raw.mean(),
        weights.mean(),
        ft.beta,
    )
    # The rows this run adds to the starting model's map (also when resuming).
    new_rows = [class_map.index(n) for n in class_map.names if n not in start.init.class_map]
    record = {
        **asdict(ft),
        "reward_transform": mode,
        "rewards": str(rewards_file),
        "data_pre_dir": str(pre_dir),
        "init_checkpoint": str(start.init.path),
        "n_real": len(real),
        "n_synthetic": len(synthetic),
        "concepts": concepts,
        "concept_lr_scale": ft.concept_lr_scale if new_rows else None,
        "guidance": guidance,
    }
    write_run_config(run_dir, model_cfg, diffusion_cfg, train_cfg, source.channels, class_map, record)
    spec = _finetune_spec(
        start,
        ft,
        train_cfg,
        model_cfg,
        diffusion_cfg,
        class_map,
        real,
        synthetic,
        weights,
        new_rows,
        guidance,
        progress,
    )
    return train(spec)


def _guidance_scale(ft: FinetuneConfig, source: Checkpoint) -> float:
    if ft.objective == "guidance":
        return ft.guidance_scale
    return float(source.meta.get("guidance_scale", ft.guidance_scale))


def _finetune_spec(
    start: Start,
    ft: FinetuneConfig,
    train_cfg: TrainConfig,
    model_cfg,
    diffusion_cfg,
    class_map,
    real,
    synthetic,
    weights: np.ndarray,
    new_rows: list[int],
    guidance: dict[str, str],
    progress: bool,
) -> TrainSpec:
    """The loop's input: a real stream weighted beta and a synthetic one weighted per image, sharing timesteps."""
    batch, seed, w = int(train_cfg.batch_size), int(train_cfg.seed), torch.tensor(weights, dtype=torch.float32)
    carry = start.source if ft.carry_state and start.resume is None else None
    # A resumed or carried plain finetune loads its own weights; KTO's reference is always the start's.
    needs_init = (start.resume is None and carry is None) or ft.objective == "kto"
    init_weights = start.init.weights(ema=ft.init_ema, class_map=class_map) if needs_init else None
    meta = {"objective": ft.objective, "beta": ft.beta, "init_checkpoint": str(start.init.path)}
    if guidance:  # sampling reads the pairs and the default strength from every checkpoint
        meta |= {"guidance": guidance, "guidance_scale": _guidance_scale(ft, start.source)}
    return TrainSpec(
        run_dir=train_cfg.run_path(),
        model=model_cfg,
        diffusion=diffusion_cfg,
        train=train_cfg,
        channels=start.source.channels,
        class_map=class_map,
        streams=lambda dist, s: [
            weighted_stream(real, batch, seed, dist, s, weight=ft.beta),
            weighted_stream(synthetic, ft.synthetic_batch_size or batch, seed + 1, dist, s, weight=w),
        ],
        resume=start.resume,
        carry=carry,
        init_weights=None if start.resume or carry else init_weights,
        progress=progress,
        objective=KTOObjective(init_weights, beta=ft.kto_beta) if ft.objective == "kto" else DiffusionObjective(),
        extra_meta=meta,
        new_class_rows=new_rows,
        new_class_lr_scale=ft.concept_lr_scale,
        stream_min_t=(0.0, ft.synthetic_min_t),
    )


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser.add_argument_group("finetuning"), FinetuneConfig)
    add_model_flags(parser, when="")
    add_flags(parser.add_argument_group("training"), TrainConfig)
