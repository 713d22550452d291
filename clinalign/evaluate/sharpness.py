"""Sharpness: how much fine detail (chromatin, granules, membrane edges) an image keeps.

FID moves with blur while the oracle and the clinical checklist hardly do: on PBC, rounds of
finetuning on the model's own samples blurred the cells and FID rose with plausibility
(docs/feedback.md). So every set reports its median sharpness beside the real test images'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# ITU-R 601 luma, as PIL's "L" mode: detail a reader sees in grey levels.
LUMA = np.array([0.299, 0.587, 0.114])


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """Per image (uint8 NHWC, grey or RGB): the variance of the 4-neighbour Laplacian of its grey levels."""
    x = images.astype(np.float64)
    grey = x[..., 0] if x.shape[3] == 1 else x[..., :3] @ LUMA
    p = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
    lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4.0 * grey
    return lap.reshape(len(images), -1).var(axis=1)


def sharpness_summary(values: np.ndarray, real_median: float | None = None) -> dict[str, Any]:
    """The median (robust to a few noisy samples) and its ratio to the real test images' median."""
    median = float(np.median(values)) if len(values) else float("nan")
    out: dict[str, Any] = {"median": median}
    if real_median:
        out["relative_to_real"] = median / real_median
    return out
