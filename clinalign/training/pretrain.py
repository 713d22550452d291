"""Pretraining: real images, each weighted 1, through the one training loop."""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..diffusion import DiffusionConfig
from ..errors import ConfigError
from ..models.unet import ModelConfig
from ..utils.config import add_flags, resolve, typed
from ..utils.distributed import DistInfo
from ..utils.fileio import write_json_atomic
from .config import TrainConfig
from .init_from import start_from_diffusers
from .loop import Batch, TrainSpec, prepare_resume, train

log = logging.getLogger(__name__)


def weighted_stream(
    dataset, batch_size: int, seed: int, dist: DistInfo, start_step: int, weight: float | torch.Tensor = 1.0
) -> Iterator[Batch]:
    """Endless (x, y, w) batches of ``dataset``; ``weight`` is a constant or one value per dataset item."""
    from ..data.folder import infinite_batches

    for x, y, idx in infinite_batches(
        dataset,
        batch_size,
        seed=seed,
        rank=dist.rank,
        world_size=dist.world_size,
        start_step=start_step,
        with_indices=True,
    ):
        w = weight[idx] if isinstance(weight, torch.Tensor) else torch.full((len(x),), float(weight))
        yield x, y, w


def load_dataset(data_dir: str, model: ModelConfig, class_map, train_cfg: TrainConfig):
    from ..data.folder import ImageFolderDataset

    if not data_dir:
        raise ConfigError("--data_dir is required: the folder of training images (searched recursively)")
    return ImageFolderDataset(
        data_dir,
        model.image_size,
        class_cond=model.class_cond,
        class_map=class_map,
        rgb=train_cfg.rgb,
        skip_bad_images=train_cfg.skip_bad_images,
    )


def check_channels(dataset, expected: int, source: Path) -> None:
    if dataset.channels != expected:
        raise ConfigError(
            f"{source}: the model was trained on {expected}-channel images but {dataset.root} gives "
            f"{dataset.channels}-channel images; pass --rgb True (or convert the images) so they match"
        )


def class_counts(dataset) -> dict[str, int]:
    """Images per class name (the run's record of its data)."""
    names = dataset.class_map.names if len(dataset.class_map) else []
    counts = np.bincount(np.asarray(dataset.labels, dtype=np.int64), minlength=len(names)) if names else []
    return {name: int(n) for name, n in zip(names, counts)}


def data_fingerprint(dataset) -> str | None:
    """SHA-256 of the file names, classes, shape and decoded pixels (as evaluate fingerprints an image set)."""
    if dataset.images is None:
        return None
    names = dataset.class_map.names
    h = hashlib.sha256()
    h.update(
        "\n".join(f"{p.name}\t{names[y] if names else ''}" for p, y in zip(dataset.paths, dataset.labels)).encode()
    )
    h.update(str(dataset.images.shape).encode())
    h.update(np.ascontiguousarray(dataset.images).tobytes())
    return h.hexdigest()


def started_from(resume) -> dict[str, str]:
    """The diffusers folder a run was started from (--init_from), carried into every checkpoint."""
    return {"init_from": resume.meta["init_from"]} if resume is not None and resume.meta.get("init_from") else {}


def pretrain(args: argparse.Namespace | dict[str, Any], progress: bool = False, save_steps=()) -> Path:
    """Train (or resume) a diffusion model on an image folder. Returns the last checkpoint.

    ``save_steps``: steps to checkpoint besides every ``save_interval`` (for comparisons at given costs).
    """
    train_cfg = resolve(TrainConfig, args)
    train_cfg = start_from_diffusers(train_cfg, args, train_cfg.data_dir)
    run_dir = train_cfg.run_path()
    resume = prepare_resume(
        run_dir, typed(args, ModelConfig), typed(args, DiffusionConfig), train_cfg.resume_checkpoint
    )
    model_cfg = resolve(ModelConfig, args, resume.model if resume else None)
    diffusion_cfg = resolve(DiffusionConfig, args, resume.diffusion if resume else None)

    dataset = load_dataset(train_cfg.data_dir, model_cfg, resume.class_map if resume else None, train_cfg)
    if resume:
        check_channels(dataset, resume.channels, resume.path)
        log.info("resuming from %s (step %d)", resume.path, resume.step)
    log.info(
        "%d images, %d classes, %d channel(s) from %s",
        len(dataset),
        len(dataset.class_map),
        dataset.channels,
        train_cfg.data_dir,
    )
    write_run_config(
        run_dir,
        model_cfg,
        diffusion_cfg,
        train_cfg,
        dataset.channels,
        dataset.class_map,
        {
            "n_images": len(dataset),
            "n_skipped": dataset.n_skipped,
            "class_counts": class_counts(dataset),
            "data_fingerprint": data_fingerprint(dataset),
        },
    )
    batch, seed = int(train_cfg.batch_size), int(train_cfg.seed)
    spec = TrainSpec(
        run_dir=run_dir,
        model=model_cfg,
        diffusion=diffusion_cfg,
        train=train_cfg,
        channels=dataset.channels,
        class_map=dataset.class_map,
        streams=lambda dist, start: [weighted_stream(dataset, batch, seed, dist, start)],
        resume=resume,
        progress=progress,
        extra_meta={"objective": "pretrain", **started_from(resume)},
        save_steps=frozenset(int(s) for s in save_steps),
    )
    return train(spec)


def write_run_config(
    run_dir: Path,
    model_cfg: ModelConfig,
    diffusion_cfg: DiffusionConfig,
    train_cfg,
    channels: int,
    class_map,
    extra: dict[str, Any] | None = None,
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        run_dir / "config.json",
        {
            "clinalign_version": __version__,
            "model": asdict(model_cfg),
            "diffusion": asdict(diffusion_cfg),
            "train": asdict(train_cfg),
            "channels": channels,
            "class_map": class_map.to_dict(),
            **(extra or {}),
        },
    )
    from ..data.classmap import CLASS_MAP_FILE

    class_map.save(run_dir / CLASS_MAP_FILE)


def add_model_flags(
    parser: argparse.ArgumentParser, when: str = "when resuming", defaults: dict[str, Any] | None = None
) -> None:
    """The seed's model and diffusion flags; untyped ones come from the checkpoint."""
    add_flags(parser.add_argument_group(f"model (from the checkpoint {when})"), ModelConfig, inherit=True)
    add_flags(
        parser.add_argument_group(f"diffusion (from the checkpoint {when})"),
        DiffusionConfig,
        inherit=True,
        defaults=defaults,
    )


def add_train_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None) -> None:
    """The seed's flags: model and diffusion ones inherit from a checkpoint when not typed;
    ``defaults`` overrides training defaults for one command (``clinalign train``'s recipe)."""
    add_model_flags(parser, defaults=defaults)
    add_flags(parser.add_argument_group("training"), TrainConfig, defaults=defaults)
