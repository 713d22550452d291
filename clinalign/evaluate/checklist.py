"""A checklist judge: the features a haematologist checks, measured from the pixels.

A pathologist judges a cell by a checklist — cell size, nucleus shape, chromatin, cytoplasm
colour, granules, inclusions (Sun et al. 2023, Sec. 4) — not by whether a classifier recognises
its class. A classifier oracle happily calls a smooth orange blob an eosinophil; an eosinophil
without its red granules is one a pathologist rejects. Fine detail of this kind is what
likelihood training smooths away and what expert feedback exists to restore.

Each criterion is a number measured on a centred single-cell image:

- ``cell_size``: the share of the image the cell covers (the component at the centre that
  differs from the slide's background colour);
- ``nc_ratio``: nucleus area / cell area (nucleus: the dark part of the cell);
- ``lobes``: connected nucleus parts of at least 2 px (a segmented neutrophil 3-5, an eosinophil 2);
- ``chromatin``: mean brightness of the nucleus;
- ``cytoplasm_hue``: red minus blue of the cytoplasm (eosinophil orange, lymphocyte and ig blue);
- ``granules``: fine-grain contrast inside the cytoplasm, away from its edges and the nucleus
  (an eosinophil's coarse granules, a basophil's dark ones).

The judge is *calibrated*, not hand-tuned: for every class it accepts the range of each feature
that real cells of that class occupy (their ``quantile`` .. ``1 - quantile`` percentiles), so by
construction real cells pass each criterion at about ``1 - 2 quantile``; the real pass rates are
stored and reported beside every sample pass rate. A sample passes the checklist when every
criterion is in its declared class's range.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import DataError

log = logging.getLogger(__name__)

CRITERIA = ("cell_size", "nc_ratio", "lobes", "chromatin", "cytoplasm_hue", "granules")
_BODY_CONTRAST = 0.08  # colour distance from the background that counts as cell
_NUCLEUS_LUMA = 0.5  # nuclei (and basophil granules) are darker than this; cytoplasm is lighter


def _cell_masks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell body, nucleus, inner cytoplasm) boolean masks of one float HxWx3 image in [0, 1]."""
    border = np.concatenate(
        [x[:2].reshape(-1, 3), x[-2:].reshape(-1, 3), x[:, :2].reshape(-1, 3), x[:, -2:].reshape(-1, 3)]
    )
    differs = np.linalg.norm(x - np.median(border, axis=0), axis=2) > _BODY_CONTRAST
    labels, n = ndi.label(differs)
    c, r = x.shape[0] // 2, max(1, x.shape[0] // 12)
    centre = labels[c - r : c + r + 1, c - r : c + r + 1].ravel()
    centre = centre[centre > 0]
    if n == 0 or len(centre) == 0:
        empty = np.zeros(x.shape[:2], dtype=bool)
        return empty, empty, empty
    body = ndi.binary_fill_holes(labels == np.bincount(centre).argmax())
    nucleus = body & (x.mean(axis=2) < _NUCLEUS_LUMA)
    inner = ndi.binary_erosion(body, iterations=2) & ~ndi.binary_dilation(nucleus)
    return body, nucleus, inner


def measure(image: np.ndarray) -> np.ndarray:
    """The :data:`CRITERIA` of one uint8 HxWx3 cell image (NaN where a feature has nothing to measure)."""
    x = image.astype(np.float32) / 255.0
    body, nucleus, inner = _cell_masks(x)
    area = float(body.sum())
    if area == 0:
        return np.array([0.0, np.nan, 0.0, np.nan, np.nan, np.nan])
    parts, _ = ndi.label(nucleus)
    sizes = np.bincount(parts.ravel())[1:]
    luma = x.mean(axis=2)
    cyto = inner if inner.sum() >= 3 else body & ~nucleus
    hue = float((x[cyto][:, 0] - x[cyto][:, 2]).mean()) if cyto.any() else np.nan
    detail = np.abs(luma - ndi.gaussian_filter(luma, 1.0))
    return np.array(
        [
            area / body.size,
            float(nucleus.sum()) / area,
            float((sizes >= 2).sum()),
            float(luma[nucleus].mean()) if nucleus.any() else np.nan,
            hue,
            float(detail[inner].mean()) if inner.any() else np.nan,
        ]
    )


def measure_all(images: np.ndarray) -> np.ndarray:
    """(N, len(CRITERIA)) features of uint8 NHWC images (grey images are judged as RGB)."""
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise DataError(f"the checklist needs uint8 NHWC images with 1 or 3 channels, got {images.shape}")
    if images.shape[3] == 1:
        images = np.repeat(images, 3, axis=3)
    return np.stack([measure(im) for im in images]) if len(images) else np.zeros((0, len(CRITERIA)))


@dataclass
class ChecklistVerdict:
    """Per-image, per-criterion pass flags and the overall verdict."""

    classes: list[str]
    features: np.ndarray  # (N, criteria)
    passed: np.ndarray  # (N, criteria) bool

    @property
    def plausible(self) -> np.ndarray:
        return self.passed.all(axis=1)

    def summary(self) -> dict[str, Any]:
        """Pass rates overall and per class, each criterion and all of them."""
        classes = np.asarray(self.classes, dtype=object)

        def rates(mask: np.ndarray) -> dict[str, Any]:
            n = int(mask.sum())
            out: dict[str, Any] = {"n": n, "all": float(self.plausible[mask].mean()) if n else float("nan")}
            out.update({c: float(self.passed[mask, i].mean()) if n else float("nan") for i, c in enumerate(CRITERIA)})
            return out

        return {
            **rates(np.ones(len(classes), dtype=bool)),
            "per_class": {c: rates(classes == c) for c in sorted(set(self.classes))},
        }


@dataclass
class Checklist:
    """Per-class accepted range of every criterion, calibrated on real images."""

    ranges: dict[str, list[list[float]]]  # class -> [[low, high] per criterion]
    quantile: float
    # class -> per criterion: may the feature be missing (no nucleus in a platelet is normal)?
    missing_ok: dict[str, list[bool]] = field(default_factory=dict)
    real_pass: dict[str, Any] = field(default_factory=dict)  # the calibration set's own pass rates
    n_real: dict[str, int] = field(default_factory=dict)

    @classmethod
    def calibrate(cls, images: np.ndarray, classes: list[str], quantile: float = 0.01) -> Checklist:
        """Ranges from real images: the [quantile, 1 - quantile] percentiles of each feature per class."""
        if not 0.0 <= quantile < 0.5:
            raise DataError(f"checklist quantile must be in [0, 0.5), got {quantile}")
        feats = measure_all(images)
        arr = np.asarray(classes, dtype=object)
        ranges, counts, missing_ok = {}, {}, {}
        for c in sorted(set(classes)):
            f = feats[arr == c]
            counts[c] = len(f)
            missing_ok[c] = [bool(v) for v in np.isnan(f).mean(axis=0) > quantile]
            if len(f) < 20:
                log.warning("checklist: only %d real image(s) of %s; its ranges are rough", len(f), c)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a feature no real cell of the class has
                lo = np.nanquantile(f, quantile, axis=0)
                hi = np.nanquantile(f, 1.0 - quantile, axis=0)
            ranges[c] = [[float(a), float(b)] for a, b in zip(lo, hi)]
        checklist = cls(ranges, quantile, missing_ok, n_real=counts)
        checklist.real_pass = checklist.judge_features(feats, list(classes)).summary()
        log.info("checklist calibrated on %d real images: real pass rate %.3f", len(feats), checklist.real_pass["all"])
        return checklist

    def judge(self, images: np.ndarray, classes: list[str]) -> ChecklistVerdict:
        return self.judge_features(measure_all(images), classes)

    def judge_features(self, feats: np.ndarray, classes: list[str]) -> ChecklistVerdict:
        passed = np.zeros(feats.shape, dtype=bool)
        for i, c in enumerate(classes):
            if c not in self.ranges:  # a class the calibration never saw: nothing can pass
                continue
            r, f = np.asarray(self.ranges[c]), feats[i]
            with np.errstate(invalid="ignore"):
                inside = (f >= r[:, 0]) & (f <= r[:, 1])
            passed[i] = np.where(np.isnan(f), self.missing_ok[c], inside)
        return ChecklistVerdict(list(classes), feats, passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "criteria": list(CRITERIA),
            "quantile": self.quantile,
            "ranges": self.ranges,
            "missing_ok": self.missing_ok,
            "real_pass": self.real_pass,
            "n_real": self.n_real,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Checklist:
        if list(d.get("criteria", [])) != list(CRITERIA):
            raise DataError(
                f"checklist criteria {d.get('criteria')} differ from this version's {list(CRITERIA)}; recalibrate"
            )
        return cls(
            {c: [list(map(float, r)) for r in v] for c, v in d["ranges"].items()},
            float(d["quantile"]),
            {c: list(map(bool, v)) for c, v in d["missing_ok"].items()},
            d.get("real_pass", {}),
            d.get("n_real", {}),
        )
