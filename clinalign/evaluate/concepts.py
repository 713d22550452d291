"""Concept accuracy: does a sample requested as a concept show the concept's subtype?

A subtype oracle judges it: a classifier over the subtypes of one parent class (``neutrophil`` ->
``BNE`` / ``SNE``, from the second ``_`` token of real file names), kept independent of the
simulated expert that taught the concept the same way the evaluation oracle is: ``vgg`` (the
expert is a ``resnet``), ``derived_seed("concept-oracle", seed)``, real half B only.

    concept accuracy = share of the samples requested as the concept that the oracle puts in
                       the concept's subtype

Compare it with the same share among samples of the plain parent class: that is what a model that
ignores the concept would score.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.toy import subtype_of
from ..errors import CheckpointError, DataError
from .data import HALF_ORACLE, RealData, as_image_set, half_of, is_validation, stratified_cap
from .features import as_uint8_images, classifier_proba
from .oracle import ORACLE_ARCH, OracleConfig, cache_dir, load_model_dir, save_model_dir, train_judge

log = logging.getLogger(__name__)

MODEL_FILE = "concept_oracle.safetensors"
META_FILE = "concept_oracle.json"
_FORMAT = 1


@dataclass
class SubtypeOracle:
    """P(subtype | image) over the subtypes of ``parent``, trained on real half B."""

    model: nn.Module
    parent: str
    subtypes: list[str]
    channels: int
    config: OracleConfig
    info: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = field(default=None, repr=False)

    def proba(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        return classifier_proba(self.model, as_uint8_images(images, self.config.image_size, self.channels))

    def predict(self, images: np.ndarray | torch.Tensor) -> list[str]:
        return [self.subtypes[k] for k in self.proba(images).argmax(axis=1)]

    @classmethod
    def fit(
        cls,
        real: RealData,
        parent: str,
        config: OracleConfig | None = None,
        progress: bool = False,
        subtypes: Sequence[str] | None = None,
    ) -> SubtypeOracle:
        """``subtypes``: keep only these (e.g. leave out a handful of unlabelled ``NEUTROPHIL`` images)."""
        config = config or OracleConfig()
        real = as_image_set(real)
        real = real.at(config.image_size, real.channels)
        mine = np.array(
            [
                c == parent and half_of(i) == HALF_ORACLE and (subtypes is None or subtype_of(i) in subtypes)
                for c, i in zip(real.classes, real.ids)
            ]
        )
        if not mine.any():
            raise DataError(
                f"{real.name or 'real data'}: no real {parent!r} image in the oracle's half; "
                f"pass real images named {parent}_SUBTYPE_*.png"
            )
        own = real.subset(mine)
        subtypes_of = [subtype_of(i) for i in own.ids]
        subtypes = sorted(set(subtypes_of))
        if len(subtypes) < 2:
            raise DataError(
                f"{real.name or 'real data'}: real {parent!r} images carry one subtype only "
                f"({subtypes}); a subtype oracle needs file names {parent}_SUBTYPE_*.png with two or more"
            )
        val = np.array([is_validation(i, config.val_fraction) for i in own.ids])
        fit_idx = np.flatnonzero(~val)
        fit_idx = fit_idx[stratified_cap([subtypes_of[i] for i in fit_idx], config.max_train, config.seed)]
        val_idx = np.flatnonzero(val)
        log.info(
            "training the %s subtype oracle (%s, %s) on %d real images of half B",
            parent,
            ORACLE_ARCH,
            "/".join(subtypes),
            len(fit_idx),
        )
        model, info = train_judge(
            "concept-oracle",
            ORACLE_ARCH,
            subtypes,
            own.subset(fit_idx),
            [subtypes_of[i] for i in fit_idx],
            own.subset(val_idx),
            [subtypes_of[i] for i in val_idx],
            config,
            HALF_ORACLE,
            progress,
        )
        info["parent"] = parent
        log.info("%s subtype oracle: validation accuracy %.3f", parent, info["val_accuracy"])
        return cls(model, parent, subtypes, real.channels, config, info)

    def save(self, directory: str | Path) -> Path:
        meta = {
            "format": _FORMAT,
            "config": asdict(self.config),
            "parent": self.parent,
            "subtypes": self.subtypes,
            "channels": self.channels,
            "info": self.info,
        }
        self.directory = save_model_dir(
            directory,
            self.model,
            {
                "arch": ORACLE_ARCH,
                "channels": self.channels,
                "num_outputs": len(self.subtypes),
                "width": self.config.width,
            },
            meta,
            MODEL_FILE,
            META_FILE,
        )
        return self.directory

    @classmethod
    def load(cls, directory: str | Path) -> SubtypeOracle:
        model, meta = load_model_dir(directory, MODEL_FILE, META_FILE, "clinalign concepts accuracy")
        try:
            return cls(
                model,
                meta["parent"],
                list(meta["subtypes"]),
                int(meta["channels"]),
                OracleConfig(**meta["config"]),
                meta["info"],
                Path(directory),
            )
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{directory}: {META_FILE} is from another clinalign version ({exc}); delete the folder to retrain"
            ) from None

    @classmethod
    def fit_or_load(
        cls,
        real: RealData,
        parent: str,
        config: OracleConfig,
        models_dir: str | Path,
        progress: bool = False,
        subtypes: Sequence[str] | None = None,
    ) -> SubtypeOracle:
        real = as_image_set(real)
        real = real.at(config.image_size, real.channels)
        directory = cache_dir(
            models_dir,
            {
                "format": _FORMAT,
                "role": "concept-oracle",
                "parent": parent,
                "subtypes": sorted(subtypes) if subtypes else None,
                "real": real.fingerprint(),
                "config": asdict(config),
            },
        )
        if (directory / META_FILE).exists():
            return cls.load(directory)
        oracle = cls.fit(real, parent, config, progress, subtypes)
        oracle.save(directory)
        return oracle


def subtype_shares(oracle: SubtypeOracle, images: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Share of ``images`` the oracle puts in each subtype."""
    if len(images) == 0:
        return {s: float("nan") for s in oracle.subtypes}
    pred = np.asarray(oracle.predict(images))
    return {s: float((pred == s).mean()) for s in oracle.subtypes}


def concept_accuracy(oracle: SubtypeOracle, images: np.ndarray | torch.Tensor, subtype: str) -> float:
    """Share of ``images`` (requested as a concept) the oracle puts in the concept's ``subtype``."""
    if subtype not in oracle.subtypes:
        raise DataError(
            f"subtype {subtype!r} is not one the {oracle.parent} oracle knows "
            f"({', '.join(oracle.subtypes)}); name it as in the real file names"
        )
    return subtype_shares(oracle, images)[subtype]


def concept_report(
    oracle: SubtypeOracle, samples: Sequence[tuple[str, np.ndarray]], targets: dict[str, str]
) -> dict[str, Any]:
    """Per sample group (name, images): n, subtype shares and, for a concept in ``targets``, its accuracy."""
    out: dict[str, Any] = {}
    for name, images in samples:
        shares = subtype_shares(oracle, images)
        row: dict[str, Any] = {"n": len(images), "shares": shares}
        if name in targets:
            row["subtype"] = targets[name]
            row["accuracy"] = shares[targets[name]]
        out[name] = row
    return out
