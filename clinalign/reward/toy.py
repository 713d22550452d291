"""A toy reward-model benchmark: toy cells with simulated expert verdicts.

Plausible: a toy cell of class c declared as c (half of them lightly blurred or noised, as a
generator's output would be). Implausible, declared as c, in a mix that a model has to *look at
the declared class* to get right:

- ``wrong_class`` (40 %): a well-formed cell of another class. Only the declared class makes it
  implausible, so a model that ignores the class cannot tell it from a plausible image.
- ``stain`` (20 %): the cell of class c with its colour channels permuted (a stain that does
  not exist: blue smear, green granules).
- ``smeared`` (20 %): the cell of class c blurred until nucleus shape and granules are gone.
- ``chimera`` (20 %): half a cell of class c, half a cell of another class, blended.

The real data, the training feedback, the validation feedback and a held-out test set come
from disjoint seeds, so the benchmark measures generalisation to new images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ..data.layouts import ALIGN, NOTALIGN
from ..data.toy import CLASS_NAMES, generate, render_cell
from ..data.transforms import save_png
from ..errors import DataError

IMPLAUSIBLE_MIX: dict[str, float] = {"wrong_class": 0.4, "stain": 0.2, "smeared": 0.2, "chimera": 0.2}
_STREAM = 7919  # keeps these cells apart from data.toy's own seeds


@dataclass
class ToyFeedback:
    images: np.ndarray  # uint8 NHWC
    declared: list[str]
    plausible: np.ndarray  # 1 plausible, 0 implausible
    kinds: list[str]  # "plausible" or one of IMPLAUSIBLE_MIX

    def __len__(self) -> int:
        return len(self.declared)


def _classes(classes: int) -> list[str]:
    if not 2 <= classes <= len(CLASS_NAMES):
        raise DataError(f"toy feedback needs 2 to {len(CLASS_NAMES)} classes, got {classes}")
    return sorted(CLASS_NAMES[:classes])


def toy_feedback(
    classes: int = 4, per_class: int = 40, size: int = 32, seed: int = 0, implausible_share: float = 0.5
) -> ToyFeedback:
    """``per_class`` judged images per declared class, ``implausible_share`` of them implausible."""
    names = _classes(classes)
    kinds_list = list(IMPLAUSIBLE_MIX)
    probs = np.asarray([IMPLAUSIBLE_MIX[k] for k in kinds_list])
    images, declared, plausible, kinds = [], [], [], []
    for c in names:
        for i in range(per_class):
            rng = np.random.default_rng([seed, _STREAM, CLASS_NAMES.index(c), i])
            other = names[(names.index(c) + 1 + int(rng.integers(len(names) - 1))) % len(names)]
            if rng.random() >= implausible_share:
                img = render_cell(c, rng, size)[0].astype(np.float32)
                if rng.random() < 0.5:  # generator-like softness or grain, still clinically fine
                    img = (
                        gaussian_filter(img, (0.6, 0.6, 0)) if rng.random() < 0.5 else img + rng.normal(0, 4, img.shape)
                    )
                kind = "plausible"
            else:
                kind = kinds_list[int(rng.choice(len(kinds_list), p=probs))]
                if kind == "wrong_class":
                    img = render_cell(other, rng, size)[0].astype(np.float32)
                elif kind == "stain":
                    perm = ([2, 1, 0], [1, 2, 0], [2, 0, 1])[int(rng.integers(3))]
                    img = render_cell(c, rng, size)[0][..., perm].astype(np.float32)
                elif kind == "smeared":
                    sigma = size / 10
                    img = gaussian_filter(render_cell(c, rng, size)[0].astype(np.float32), (sigma, sigma, 0))
                else:
                    a = render_cell(c, rng, size)[0].astype(np.float32)
                    b = render_cell(other, rng, size)[0].astype(np.float32)
                    img = 0.5 * a + 0.5 * b
            images.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
            declared.append(c)
            plausible.append(int(kind == "plausible"))
            kinds.append(kind)
    return ToyFeedback(np.stack(images), declared, np.asarray(plausible, np.int64), kinds)


def file_names(fb: ToyFeedback) -> list[str]:
    """Seed-convention names ``CLASS_KIND-INDEX.png`` (class = prefix before the first ``_``)."""
    return [f"{c}_{k.replace('_', '-')}-{i:05d}.png" for i, (c, k) in enumerate(zip(fb.declared, fb.kinds))]


def write_feedback(fb: ToyFeedback, root: Path) -> Path:
    for img, c, y, name in zip(fb.images, fb.declared, fb.plausible, file_names(fb)):
        save_png(img, root / c / (ALIGN if y else NOTALIGN) / name)
    return root


def write_samples(fb: ToyFeedback, root: Path) -> Path:
    """The same images as an unjudged sample folder (what a sampler writes)."""
    for img, name in zip(fb.images, file_names(fb)):
        save_png(img, root / name)
    return root


def write_toy_reward_data(
    root: str | Path,
    classes: int = 4,
    real_per_class: int = 60,
    feedback_per_class: int = 60,
    val_real_per_class: int = 20,
    val_feedback_per_class: int = 40,
    size: int = 32,
    seed: int = 0,
) -> dict[str, Path]:
    """The four folders of ``clinalign reward train`` under ``root``; returns their paths."""
    root = Path(root)
    out = {
        "train_dir": root / "train",
        "val_dir": root / "val",
        "train_anno_dir": root / "train_anno",
        "val_anno_dir": root / "val_anno",
    }
    generate(out["train_dir"], classes, real_per_class, size, seed, layout="imagenet")
    generate(out["val_dir"], classes, val_real_per_class, size, seed + 1, layout="imagenet")
    write_feedback(toy_feedback(classes, feedback_per_class, size, seed + 2), out["train_anno_dir"])
    write_feedback(toy_feedback(classes, val_feedback_per_class, size, seed + 3), out["val_anno_dir"])
    return out
