"""Downstream utility: train on synthetic, test on real (TSTR).

Esteban, Hyland, Rätsch, "Real-valued (Medical) Time Series Generation with Recurrent Conditional
GANs", 2017 (TSTR); the real + synthetic variant asks whether synthetic data *adds* to real data.
Three classifiers with the same architecture, seed and budget are tested on the same real held-out
images: real only (the baseline), synthetic only, and real + synthetic. The real-only result
depends only on the real data and the config, so it is cached beside the evaluation models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.classmap import ClassMap
from ..data.folder import images_to_tensor
from ..models.fit import balanced_accuracy, fit_classifier, predict_proba
from ..utils.config import option
from ..utils.fileio import atomic_writer
from .data import ImageSet, derived_seed, stratified_cap
from .oracle import seeded_classifier

log = logging.getLogger(__name__)


@dataclass
class UtilityConfig:
    arch: str = option("resnet", flag=False)
    width: int = option(16, flag=False)
    # A budget in optimiser steps, not epochs, so that a small synthetic set gets as much training
    # as the real baseline instead of losing on set size alone.
    steps: int = option(300, "optimiser steps per TSTR classifier", name="utility_steps")
    batch_size: int = option(64, flag=False)
    lr: float = option(2e-3, flag=False)
    max_train: int = option(2000, "images per TSTR training set (stratified subsample)", name="utility_max_train")
    seed: int = option(0, flag=False)


def train_test(
    train: ImageSet, test: ImageSet, class_map: ClassMap, config: UtilityConfig, progress: bool = False
) -> dict:
    """Accuracy and balanced accuracy on ``test`` of a classifier trained on ``train`` only."""
    seed = derived_seed("utility", config.seed)
    epochs = max(1, math.ceil(config.steps / math.ceil(len(train) / config.batch_size)))
    model = seeded_classifier(config.arch, train.channels, len(class_map), config.width, seed)
    fit_classifier(
        model,
        images_to_tensor(train.images),
        torch.from_numpy(train.labels(class_map)),
        num_classes=len(class_map),
        epochs=epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=seed,
        progress=progress,
    )
    y = torch.from_numpy(test.labels(class_map))
    pred = predict_proba(model, images_to_tensor(test.images)).argmax(dim=1)
    return {
        "n_train": len(train),
        "accuracy": float((pred == y).float().mean()),
        "balanced_accuracy": balanced_accuracy(pred, y, len(class_map)),
    }


def _real_subset(train: ImageSet, config: UtilityConfig) -> ImageSet:
    return train.subset(stratified_cap(train.classes, config.max_train, config.seed))


def real_only(
    train: ImageSet,
    test: ImageSet,
    class_map: ClassMap,
    config: UtilityConfig,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict:
    """The real-only baseline, cached in ``cache_dir`` (keyed by the config) when given."""
    key = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]
    path = None if cache_dir is None else Path(cache_dir) / f"utility_real_only_{key}.json"
    if path is not None and path.exists():
        return json.loads(path.read_text())
    log.info("TSTR: training the real-only baseline classifier")
    result = train_test(_real_subset(train, config), test, class_map, config, progress)
    if path is not None:
        with atomic_writer(path, "w") as f:
            f.write(json.dumps(result))
    return result


def tstr(
    samples: ImageSet,
    train: ImageSet,
    test: ImageSet,
    class_map: ClassMap,
    config: UtilityConfig,
    baseline: dict,
    progress: bool = False,
) -> dict:
    """``{"real_only", "synthetic_only", "real_plus_synthetic"}``, each with accuracy on real test.

    ``baseline`` is :func:`real_only`'s result (computed once for all sample sets).
    """
    synthetic = samples.subset(stratified_cap(samples.classes, config.max_train, config.seed))
    log.info("TSTR: training on %d synthetic images, then on real + synthetic", len(synthetic))
    return {
        "real_only": baseline,
        "synthetic_only": train_test(synthetic, test, class_map, config, progress),
        "real_plus_synthetic": train_test(
            _real_subset(train, config).concat(synthetic), test, class_map, config, progress
        ),
        "classes_in_synthetic": sorted(set(samples.classes)),
        "n_test": len(test),
    }
