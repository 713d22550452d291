"""Memorisation: is a sample a near copy of a real training image?

For each sample, the distance to its nearest real training image, in feature space and in pixel
space, is compared with the same distance for *real held-out* images (real test -> real train):
a fresh real image is a fair model of "new, not copied". A sample closer to the training set than
the 1st percentile of those real-to-real distances is counted as a near copy (after the
nearest-neighbour copy tests of Meehan et al., "A Non-Parametric Test to Detect Data-Copying in
Generative Models", AISTATS 2020, and the authenticity idea of Alaa et al., ICML 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .plausibility import RealReference
from .prdc import NearestNeighbours, nearest_neighbours


def pixel_vectors(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 (N, H*W*C) in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def copy_threshold(real_nn: np.ndarray, percentile: float = 1.0) -> float:
    """The ``percentile``-th percentile of real-to-real NN distances, kept above zero.

    Zero happens when the test split holds exact duplicates of training images; a zero threshold
    would then flag nothing, so the smallest positive distance is used instead.
    """
    t = float(np.percentile(real_nn, percentile))
    if t <= 0:
        positive = real_nn[real_nn > 0]
        t = float(positive.min()) if len(positive) else np.finfo(np.float32).eps
    return t


@dataclass
class CopyReference:
    """Real-to-real nearest-neighbour distances (test -> the generator's training set) in both spaces,
    and the thresholds."""

    train_pixels: np.ndarray
    real_nn_feature: np.ndarray
    real_nn_pixel: np.ndarray
    threshold_feature: float
    threshold_pixel: float
    percentile: float

    @classmethod
    def build(cls, reference: RealReference, percentile: float = 1.0) -> CopyReference:
        train_pixels = pixel_vectors(reference.generator.images)
        nn_f = nearest_neighbours(reference.test_features, reference.generator_features).distance
        nn_p = nearest_neighbours(pixel_vectors(reference.test.images), train_pixels).distance
        return cls(
            train_pixels, nn_f, nn_p, copy_threshold(nn_f, percentile), copy_threshold(nn_p, percentile), percentile
        )


@dataclass
class Memorisation:
    """Per-sample nearest real training image and near-copy flags, in feature and pixel space."""

    feature: NearestNeighbours
    pixel: NearestNeighbours
    near_copy_feature: np.ndarray
    near_copy_pixel: np.ndarray

    def summary(self, ref: CopyReference) -> dict:
        def space(nn: NearestNeighbours, flags: np.ndarray, real_nn: np.ndarray, threshold: float) -> dict:
            return {
                "near_copy_fraction": float(flags.mean()) if len(flags) else float("nan"),
                "n_near_copies": int(flags.sum()),
                "threshold": threshold,
                "median_nn_distance": float(np.median(nn.distance)) if len(flags) else float("nan"),
                "real_median_nn_distance": float(np.median(real_nn)),
            }

        return {
            "percentile": ref.percentile,
            "feature": space(self.feature, self.near_copy_feature, ref.real_nn_feature, ref.threshold_feature),
            "pixel": space(self.pixel, self.near_copy_pixel, ref.real_nn_pixel, ref.threshold_pixel),
        }


def memorisation(
    sample_features: np.ndarray, sample_images: np.ndarray, reference: RealReference, copies: CopyReference
) -> Memorisation:
    """Nearest image of the generator's training set to each sample, and whether it is closer than the
    copy threshold."""
    nn_f = nearest_neighbours(sample_features, reference.generator_features)
    nn_p = nearest_neighbours(pixel_vectors(sample_images), copies.train_pixels)
    return Memorisation(nn_f, nn_p, nn_f.distance < copies.threshold_feature, nn_p.distance < copies.threshold_pixel)
