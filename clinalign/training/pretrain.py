"""Pretraining: real images, each weighted 1, through the one training loop."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Iterator

import torch

from .. import __version__
from .checkpoint import write_json_atomic
from ..utils.distributed import DistInfo
from ..errors import ConfigError
from .config import DIFFUSION_FLAGS, MODEL_FLAGS, TRAIN_FLAGS, resolve, typed
from .loop import Batch, TrainSpec, default_run_dir, prepare_resume, train

log = logging.getLogger(__name__)


def weighted_stream(dataset, batch_size: int, seed: int, dist: DistInfo, start_step: int,
                    weight: float | torch.Tensor = 1.0) -> Iterator[Batch]:
    """Endless (x, y, w) batches of ``dataset``; ``weight`` is a constant or one value per dataset item."""
    from ..data.folder import infinite_batches

    for x, y, idx in infinite_batches(dataset, batch_size, seed=seed, rank=dist.rank,
                                      world_size=dist.world_size, start_step=start_step, with_indices=True):
        w = weight[idx] if isinstance(weight, torch.Tensor) else torch.full((len(x),), float(weight))
        yield x, y, w


def load_dataset(data_dir: str, image_size: int, class_cond: bool, class_map, train_cfg: dict[str, Any]):
    from ..data.folder import ImageFolderDataset

    if not data_dir:
        raise ConfigError("--data_dir is required: the folder of training images (searched recursively)")
    return ImageFolderDataset(data_dir, image_size, class_cond=class_cond, class_map=class_map,
                              rgb=bool(train_cfg.get("rgb")), skip_bad_images=bool(train_cfg.get("skip_bad_images")))


def check_channels(dataset, expected: int, source: Path) -> None:
    if dataset.channels != expected:
        raise ConfigError(
            f"{source}: the model was trained on {expected}-channel images but {dataset.root} gives "
            f"{dataset.channels}-channel images; pass --rgb True (or convert the images) so they match")


def pretrain(args: argparse.Namespace | dict[str, Any], progress: bool = False) -> Path:
    """Train (or resume) a diffusion model on an image folder. Returns the last checkpoint."""
    train_cfg = resolve(args, TRAIN_FLAGS)
    typed_model, typed_diffusion = typed(args, MODEL_FLAGS), typed(args, DIFFUSION_FLAGS)
    run_dir = default_run_dir(train_cfg)
    resume = prepare_resume(run_dir, typed_model, typed_diffusion, train_cfg["resume_checkpoint"])
    model_cfg = resolve(args, MODEL_FLAGS, resume.model_config if resume else None)
    diffusion_cfg = resolve(args, DIFFUSION_FLAGS, resume.diffusion_config if resume else None)

    dataset = load_dataset(train_cfg["data_dir"], model_cfg["image_size"], model_cfg["class_cond"],
                           resume.class_map if resume else None, train_cfg)
    if resume:
        check_channels(dataset, resume.channels, resume.path)
        log.info("resuming from %s (step %d)", resume.path, resume.step)
    log.info("%d images, %d classes, %d channel(s) from %s", len(dataset), len(dataset.class_map),
             dataset.channels, train_cfg["data_dir"])
    write_run_config(run_dir, model_cfg, diffusion_cfg, train_cfg, dataset.channels, dataset.class_map,
                     {"n_images": len(dataset), "n_skipped": dataset.n_skipped})
    batch = int(train_cfg["batch_size"])
    seed = int(train_cfg["seed"])
    spec = TrainSpec(
        run_dir=run_dir, model_cfg=model_cfg, diffusion_cfg=diffusion_cfg, train_cfg=train_cfg,
        channels=dataset.channels, class_map=dataset.class_map,
        streams=lambda dist, start: [weighted_stream(dataset, batch, seed, dist, start)],
        resume=resume, progress=progress, extra_meta={"objective": "pretrain"},
    )
    return train(spec)


def write_run_config(run_dir: Path, model_cfg, diffusion_cfg, train_cfg, channels, class_map,
                     extra: dict[str, Any] | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", {
        "clinalign_version": __version__, "model": model_cfg, "diffusion": diffusion_cfg, "train": train_cfg,
        "channels": channels, "class_map": class_map.to_dict(), **(extra or {}),
    })
    from ..data.classmap import CLASS_MAP_FILE

    class_map.save(run_dir / CLASS_MAP_FILE)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed's flags: model and diffusion ones inherit from a checkpoint when not typed."""
    from .config import add_flags

    add_flags(parser.add_argument_group("model (from the checkpoint when resuming)"), MODEL_FLAGS, inherit=True)
    add_flags(parser.add_argument_group("diffusion (from the checkpoint when resuming)"), DIFFUSION_FLAGS, inherit=True)
    add_flags(parser.add_argument_group("training"), TRAIN_FLAGS)
