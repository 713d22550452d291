"""Clinical plausibility as judged by the evaluation oracle, honestly.

A classifier alone is easy to fool: a CNN with 98 % test accuracy on blood cells can put 0.99 of
its probability on one class for uniform noise, because softmax must sum to one whatever the
input. And a cell can be recognised and look like real data in a feature space while missing what a
pathologist checks (an eosinophil without granules). So a sample counts as plausible only when all hold:

1. class-consistent: the oracle gives its *declared* class probability >= tau (default 0.5);
2. on-manifold: its feature vector lies inside the k-NN ball (k = 5) of at least one real
   training image (the precision criterion of Kynkäänniemi et al. 2019 / Naeem et al. 2020);
3. clinically consistent: every criterion of the clinical checklist (:mod:`.checklist`) is within
   the range real cells of the declared class show (``MetricConfig.checklist`` turns this part off
   for images that are not single cells).

Every component is reported beside the combined rate, and the same judgement applied to held-out
*real* images gives the ceiling a generator can be expected to reach.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .checklist import Checklist
from .data import ImageSet, RealData, as_image_set, split_real, stratified_cap
from .fid import gaussian_stats
from .oracle import EvaluationModels
from .prdc import ManifoldResult, knn_radii, prdc
from .sharpness import laplacian_variance, sharpness_summary

log = logging.getLogger(__name__)


@dataclass
class RealReference:
    """The real data as every sample set sees it: features, k-NN radii, FID statistics, test outputs."""

    train: ImageSet
    test: ImageSet
    train_features: np.ndarray  # every real training image (memorisation looks at all of them)
    reference_index: np.ndarray  # the subset that spans the k-NN manifold (capped for speed)
    radii: np.ndarray  # k-NN radius of each reference vector
    k: int
    stats: tuple[np.ndarray, np.ndarray]  # FID mean / covariance over all training features
    class_stats: dict[str, tuple[np.ndarray, np.ndarray]]
    test_features: np.ndarray
    test_proba: np.ndarray
    test_manifold: ManifoldResult  # real held-out vs real train: what "good" looks like
    inception_stats: tuple[np.ndarray, np.ndarray] | None = None
    # The generator's own training images: what a sample could be a copy of (default: ``train``).
    generator: ImageSet | None = None
    generator_features: np.ndarray | None = None
    checklist: Checklist | None = None  # clinical feature ranges calibrated on ``train``

    def __post_init__(self) -> None:
        if self.generator is None:
            self.generator, self.generator_features = self.train, self.train_features

    @property
    def reference_features(self) -> np.ndarray:
        return self.train_features[self.reference_index]

    @cached_property
    def test_sharpness(self) -> float:
        """The real test images' median sharpness (sharpness.py), what every set's is measured against."""
        return sharpness_summary(laplacian_variance(self.test.images))["median"]

    @classmethod
    def build(
        cls,
        models: EvaluationModels,
        real: RealData,
        test: RealData | None = None,
        k: int = 5,
        max_reference: int = 10000,
        seed: int = 0,
        generator: RealData | None = None,
        checklist_quantile: float = 0.005,
    ) -> RealReference:
        """Embed the real data once; ``real``/``test`` must be what ``models`` was fitted with.

        ``generator``: the generator's training images, when they are not ``real`` (memorisation is
        measured against them; plausibility and FID against ``real``, which the generator never saw).
        """
        real = as_image_set(real).at(models.image_size, models.channels)
        test = None if test is None else as_image_set(test).at(models.image_size, models.channels)
        if models.info.get("real_fingerprint") not in (None, real.fingerprint()):
            log.warning(
                "the evaluation models were trained on other real data (%s) than %s; the oracle may "
                "have seen the test images",
                models.info.get("real"),
                real.name or "this set",
            )
        train, held = split_real(real, test, models.config.test_fraction)
        feats = models.embed(train.images)
        ref_idx = stratified_cap(train.classes, max_reference, seed)
        if len(ref_idx) <= k:
            raise ValueError(f"need more than k={k} real training images, got {len(ref_idx)}")
        radii = knn_radii(feats[ref_idx], k)
        classes = np.asarray(train.classes, dtype=object)
        class_stats = {
            c: gaussian_stats(feats[classes == c]) for c in sorted(set(train.classes)) if (classes == c).sum() >= 2
        }
        test_feats = models.embed(held.images)
        inception_stats = gaussian_stats(models.inception(train.images)) if models.inception else None
        gen = None if generator is None else as_image_set(generator).at(models.image_size, models.channels)
        return cls(
            train,
            held,
            feats,
            ref_idx,
            radii,
            k,
            gaussian_stats(feats),
            class_stats,
            test_feats,
            models.oracle_proba(held.images),
            prdc(feats[ref_idx], test_feats, k, radii),
            inception_stats,
            gen,
            None if gen is None else models.embed(gen.images),
            Checklist.calibrate(train.images, train.classes, checklist_quantile),
        )


@dataclass
class Judgement:
    """Per-sample plausibility: the oracle's view, the manifold's, the checklist's, and their conjunction."""

    classes: list[str]
    p_declared: np.ndarray
    predicted: list[str]
    in_manifold: np.ndarray
    tau: float
    checklist: np.ndarray | None = None  # every clinical criterion passed (None: not part of the verdict)

    @property
    def recognised(self) -> np.ndarray:
        return self.p_declared >= self.tau

    @property
    def plausible(self) -> np.ndarray:
        both = self.recognised & self.in_manifold
        return both if self.checklist is None else both & self.checklist


def declared_probability(proba: np.ndarray, classes: Sequence[str], models: EvaluationModels) -> np.ndarray:
    """P_oracle(declared class | image) for each sample."""
    idx = np.asarray(models.class_map.indices(classes), dtype=np.int64)
    return proba[np.arange(len(idx)), idx] if len(idx) else np.zeros(0)


def judge(
    models: EvaluationModels,
    proba: np.ndarray,
    classes: Sequence[str],
    in_manifold: np.ndarray,
    tau: float = 0.5,
    checklist: np.ndarray | None = None,
) -> Judgement:
    """Combine the oracle's probabilities with manifold membership and the checklist (see the module docstring)."""
    predicted = [models.class_map.names[i] for i in proba.argmax(axis=1)] if len(proba) else []
    return Judgement(
        list(classes),
        declared_probability(proba, classes, models),
        predicted,
        np.asarray(in_manifold, dtype=bool),
        tau,
        None if checklist is None else np.asarray(checklist, dtype=bool),
    )


def judge_images(
    models: EvaluationModels, reference: RealReference, images: np.ndarray, classes: Sequence[str], tau: float = 0.5
) -> Judgement:
    """Plausibility of in-memory images (uint8 NHWC or float NCHW) declaring ``classes``."""
    images = models.prepare(images)
    inside = prdc(reference.reference_features, models.embed(images), reference.k, reference.radii).in_manifold
    checklist = reference.checklist.judge(images, list(classes)).plausible if reference.checklist else None
    return judge(models, models.oracle_proba(images), classes, inside, tau, checklist)


def _rates(j: Judgement, mask: np.ndarray) -> dict[str, float]:
    n = int(mask.sum())
    if n == 0:
        return {
            "n": 0,
            "rate": float("nan"),
            "oracle_rate": float("nan"),
            "manifold_rate": float("nan"),
            "checklist_rate": float("nan"),
            "mean_p_declared": float("nan"),
        }
    return {
        "n": n,
        "rate": float(j.plausible[mask].mean()),
        "oracle_rate": float(j.recognised[mask].mean()),
        "manifold_rate": float(j.in_manifold[mask].mean()),
        "checklist_rate": float(j.checklist[mask].mean()) if j.checklist is not None else float("nan"),
        "mean_p_declared": float(j.p_declared[mask].mean()),
    }


def summarise(j: Judgement) -> dict:
    """Rates overall and per declared class: combined, oracle only, manifold only, mean P(declared)."""
    classes = np.asarray(j.classes, dtype=object)
    out = _rates(j, np.ones(len(classes), dtype=bool))
    out["tau"] = j.tau
    out["per_class"] = {c: _rates(j, classes == c) for c in sorted(set(j.classes))}
    return out
