"""The evaluation oracle and the domain feature extractor, trained once per real data set and cached.

The oracle is a classifier that must stay independent of the simulated expert
(:mod:`clinalign.expert`), or a generator finetuned on the expert's verdicts could score well
simply by exploiting that one network's blind spots. So, by construction:

- architecture: ``vgg`` (the expert is a ``resnet``),
- seed: ``derived_seed("oracle", seed)`` (the expert uses ``derived_seed("expert", seed)``),
- data: real half B only (the expert trains on half A; halves come from a hash of the file name,
  :func:`clinalign.evaluate.data.half_of`), never the held-out test split.

The domain feature extractor (FID, k-NN manifold, memorisation) is the oracle's penultimate layer
unless the user gives a classifier checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.classmap import ClassMap
from ..data.folder import images_to_tensor
from ..errors import CheckpointError, DataError
from ..models.classifier import build_classifier, load_classifier, save_classifier
from ..models.fit import balanced_accuracy, fit_classifier
from ..utils.config import option
from ..utils.fileio import atomic_directory
from .data import (
    HALF_ORACLE,
    ImageSet,
    RealData,
    as_image_set,
    assert_disjoint,
    derived_seed,
    half_of,
    is_validation,
    split_real,
    stratified_cap,
)
from .features import FeatureExtractor, as_uint8_images, classifier_features, classifier_proba

log = logging.getLogger(__name__)

ORACLE_ARCH = "vgg"
ORACLE_FILE = "oracle.safetensors"
META_FILE = "evaluation_models.json"
_FORMAT = 1


@dataclass
class OracleConfig:
    """How the oracle is trained; every field is part of the cache key."""

    image_size: int = option(32, "side every image is scaled to (the generator's, for samples from one)")
    width: int = option(32, "oracle base channel width")
    epochs: int = option(10, "oracle training epochs (early stopping on its validation slice)")
    batch_size: int = option(64, "oracle training batch size")
    lr: float = option(2e-3, "oracle learning rate")
    seed: int = option(0, "seeds the oracle, the bootstrap and the TSTR classifiers")
    test_fraction: float = option(0.2, "share of --real held out as test when --real_test is not given")
    val_fraction: float = option(0.1, "of half B, for early stopping", flag=False)
    max_train: int = option(0, "cap on oracle training images (stratified; 0 = all of half B)")

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise DataError(f"--image_size must be at least 8, got {self.image_size}")
        if self.epochs < 1 or self.width < 1 or self.batch_size < 2:
            raise DataError("--epochs and --width must be positive and --batch_size at least 2")


def seeded_classifier(arch: str, channels: int, num_outputs: int, width: int, seed: int) -> nn.Module:
    """A classifier whose initial weights depend on ``seed`` only (not on the global RNG's history)."""
    torch.manual_seed(seed)
    return build_classifier(arch, channels, num_outputs, width)


def train_judge(
    role: str,
    arch: str,
    labels: list[str],
    fit: ImageSet,
    fit_labels: list[str],
    val: ImageSet,
    val_labels: list[str],
    config: Any,
    half: str,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier over ``labels`` for one of the judges (expert, oracle, subtype oracle) and what it
    was trained on. Its seed is ``derived_seed(role, config.seed)``, so judges never share one.

    ``config`` gives ``width``, ``epochs``, ``batch_size``, ``lr`` and ``seed``.
    """
    start = time.perf_counter()
    index = {lab: k for k, lab in enumerate(labels)}
    seed = derived_seed(role, config.seed)
    model = seeded_classifier(arch, fit.channels, len(labels), config.width, seed)
    result = fit_classifier(
        model,
        images_to_tensor(fit.images),
        torch.tensor([index[lab] for lab in fit_labels]),
        images_to_tensor(val.images) if len(val) else None,
        torch.tensor([index[lab] for lab in val_labels]) if len(val) else None,
        num_classes=len(labels),
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=seed,
        progress=progress,
    )
    info = {
        "role": role,
        "arch": arch,
        "half": half,
        "seed": seed,
        "user_seed": config.seed,
        "train_ids": sorted(fit.ids),
        "n_train": len(fit),
        "n_val": len(val),
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_accuracy,
        "fit_seconds": round(time.perf_counter() - start, 2),
    }
    return model, info


def cache_dir(root: str | Path, payload: dict[str, Any]) -> Path:
    """``root/<16 hex digits>``: one folder per (data fingerprint, config), so caches never collide."""
    return Path(root) / hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def save_model_dir(
    directory: str | Path,
    model: nn.Module,
    weights_meta: dict[str, Any],
    meta: dict[str, Any],
    model_file: str,
    meta_file: str,
) -> Path:
    """Weights + a JSON description, written into a temp sibling and renamed into place."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_classifier(tmp / model_file, model, weights_meta)
        (tmp / meta_file).write_text(json.dumps(meta, indent=1))
    return directory


def load_model_dir(
    directory: str | Path, model_file: str, meta_file: str, made_by: str
) -> tuple[nn.Module, dict[str, Any]]:
    """Inverse of :func:`save_model_dir`; user-fixable problems become CheckpointErrors."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / meta_file).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{directory}: no {meta_file}; pass a folder written by {made_by} (or delete it to retrain)"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / meta_file}: unreadable ({exc}); delete the folder to retrain") from None
    model, _ = load_classifier(directory / model_file)
    return model, meta


def _oracle_half(train: ImageSet, held: ImageSet, config: OracleConfig, name: str) -> tuple[ImageSet, ImageSet]:
    """(training, validation) images of real half B, never the held-out test images."""
    in_b = np.array([half_of(i) == HALF_ORACLE for i in train.ids])
    val_mask = np.array([is_validation(i, config.val_fraction) for i in train.ids])
    fit_set = train.subset(np.flatnonzero(in_b & ~val_mask))
    val_set = train.subset(np.flatnonzero(in_b & val_mask))
    fit_set = fit_set.subset(stratified_cap(fit_set.classes, config.max_train, config.seed))
    if len(fit_set) < 2:
        raise DataError(f"{name or 'real data'}: only {len(fit_set)} image(s) in the oracle's half; add real images")
    # Independence by construction: half B only, and nothing the metrics test on.
    assert all(half_of(i) == HALF_ORACLE for i in fit_set.ids + val_set.ids)
    assert_disjoint(fit_set.ids + val_set.ids, held.ids, "oracle training vs real test")
    return fit_set, val_set


def check_independent(expert_info: dict[str, Any], oracle_info: dict[str, Any]) -> None:
    """Raise AssertionError unless the expert and the oracle differ in architecture, seed and data."""
    if expert_info["arch"] == oracle_info["arch"]:
        raise AssertionError(f"expert and oracle share the architecture {expert_info['arch']!r}")
    if expert_info["seed"] == oracle_info["seed"]:
        raise AssertionError(f"expert and oracle share the seed {expert_info['seed']}")
    if expert_info["half"] == oracle_info["half"]:
        raise AssertionError(f"expert and oracle are both trained on half {expert_info['half']}")
    assert_disjoint(expert_info["train_ids"], oracle_info["train_ids"], "expert vs oracle")


@dataclass
class EvaluationModels:
    """The oracle (class probabilities) and the feature extractor, with what they were trained on."""

    oracle: nn.Module
    features: FeatureExtractor
    class_map: ClassMap
    channels: int
    config: OracleConfig
    info: dict[str, Any]
    inception: FeatureExtractor | None = None  # standard FID, when the user gives the network
    directory: Path | None = field(default=None, repr=False)  # where it is cached (TSTR reuses it)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def prepare(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Any uint8 NHWC / float NCHW batch -> uint8 NHWC at the models' size and channels."""
        return as_uint8_images(images, self.image_size, self.channels)

    def oracle_proba(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return classifier_proba(self.oracle, self.prepare(images))

    def embed(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.features(self.prepare(images))

    # -- training -------------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, real: RealData, test: RealData | None = None, config: OracleConfig | None = None, progress: bool = False
    ) -> EvaluationModels:
        """Train the oracle on real half B (minus the test split); see the module docstring.

        ``real`` / ``test``: an ImageSet, an ImageFolderDataset or ``(uint8 NHWC, class names[, ids])``.
        """
        config = config or OracleConfig()
        real = as_image_set(real)
        real = real.at(config.image_size, real.channels)
        test = None if test is None else as_image_set(test).at(config.image_size, real.channels)
        train, held = split_real(real, test, config.test_fraction)
        class_map = ClassMap.from_labels(train.classes + held.classes)
        fit_set, val_set = _oracle_half(train, held, config, real.name)
        log.info(
            "training the evaluation oracle (%s, %d px) on %d real images of half B (%d for validation)",
            ORACLE_ARCH,
            config.image_size,
            len(fit_set),
            len(val_set),
        )
        model, info = train_judge(
            "oracle",
            ORACLE_ARCH,
            class_map.names,
            fit_set,
            fit_set.classes,
            val_set,
            val_set.classes,
            config,
            HALF_ORACLE,
            progress,
        )
        pred = classifier_proba(model, held.images).argmax(axis=1)
        y = held.labels(class_map)
        info.update(
            n_test=len(held),
            test_accuracy=float((pred == y).mean()),
            test_balanced_accuracy=balanced_accuracy(torch.from_numpy(pred), torch.from_numpy(y), len(class_map)),
            real=real.name,
            real_fingerprint=real.fingerprint(),
            test_fingerprint=test.fingerprint() if test is not None else None,
        )
        log.info(
            "oracle: real test accuracy %.3f (balanced %.3f), trained in %.1fs",
            info["test_accuracy"],
            info["test_balanced_accuracy"],
            info["fit_seconds"],
        )
        features = classifier_features(model, f"oracle penultimate layer ({ORACLE_ARCH}, real half B)")
        return cls(model, features, class_map, real.channels, config, info)

    # -- persistence ----------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``oracle.safetensors`` + ``evaluation_models.json`` into ``directory`` atomically."""
        meta = {
            "format": _FORMAT,
            "config": asdict(self.config),
            "class_map": self.class_map.to_dict(),
            "channels": self.channels,
            "info": self.info,
        }
        self.directory = save_model_dir(
            directory,
            self.oracle,
            {
                "arch": ORACLE_ARCH,
                "channels": self.channels,
                "num_outputs": len(self.class_map),
                "width": self.config.width,
                "classes": self.class_map.names,
            },
            meta,
            ORACLE_FILE,
            META_FILE,
        )
        return self.directory

    @classmethod
    def load(cls, directory: str | Path) -> EvaluationModels:
        model, meta = load_model_dir(directory, ORACLE_FILE, META_FILE, "clinalign evaluate")
        try:
            config, class_map = OracleConfig(**meta["config"]), ClassMap.from_dict(meta["class_map"])
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{directory}: {META_FILE} is from another clinalign version ({exc}); delete the folder to retrain"
            ) from None
        features = classifier_features(model, f"oracle penultimate layer ({ORACLE_ARCH}, real half B)")
        return cls(model, features, class_map, int(meta["channels"]), config, meta["info"], directory=Path(directory))

    @classmethod
    def fit_or_load(
        cls, real: RealData, test: RealData | None, config: OracleConfig, models_dir: str | Path, progress: bool = False
    ) -> EvaluationModels:
        """Reuse ``models_dir/<key>`` when the same real data and config trained it, else fit and save."""
        real = as_image_set(real)
        real = real.at(config.image_size, real.channels)
        test = None if test is None else as_image_set(test).at(config.image_size, real.channels)
        directory = cache_dir(
            models_dir,
            {
                "format": _FORMAT,
                "real": real.fingerprint(),
                "test": test.fingerprint() if test else None,
                "config": asdict(config),
            },
        )
        if (directory / META_FILE).exists():
            log.info("reusing the evaluation models in %s", directory)
            return cls.load(directory)
        models = cls.fit(real, test, config, progress=progress)
        models.save(directory)
        log.info("saved the evaluation models to %s", directory)
        return models
