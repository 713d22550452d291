"""Choose what the experts judge next: the samples the reward model is least sure about.

Uncertainty sampling (Lewis & Gale 1994): a judgement teaches the model most where its reward is
closest to 0.5, the calibrated decision boundary. Taking the N most uncertain overall would let
one hard class take the whole batch, so classes take turns (round-robin by declared class, each
class's items most-uncertain first) and every class gets its share; a class that runs out drops
out of the rotation. The seed shuffles the rotation order and breaks exact ties.

The picked files are copied (same file names: they are the IDs the rewards CSV and the review
database use) into a new folder with ``manifest.csv`` (``ID,class,reward``, most informative
first), which ``clinalign review add-batch --samples OUT`` loads as a batch.
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.naming import MANIFEST_NAME
from ..errors import DataError
from ..utils.fileio import atomic_directory
from .score import DEFAULT_BATCH, score_folder_images

log = logging.getLogger(__name__)


@dataclass
class SelectionResult:
    out: Path
    ids: list[str]
    classes: list[str]
    rewards: list[float]
    per_class: dict[str, int]


def pick_uncertain(rewards: Sequence[float] | np.ndarray, classes: Sequence[str], n: int, seed: int = 0) -> list[int]:
    """Indices of ``n`` items: per class ordered by |reward - 0.5|, classes taking turns."""
    if n < 1:
        raise DataError(f"--n {n}: must be at least 1")
    p = np.asarray(rewards, dtype=np.float64)
    cls = np.asarray(list(classes), dtype=object)
    if len(p) != len(cls):
        raise ValueError(f"{len(p)} rewards but {len(cls)} classes")
    rng = np.random.default_rng(seed)
    queues: dict[str, list[int]] = {}
    for c in sorted(set(cls.tolist())):
        idx = np.flatnonzero(cls == c)
        order = np.lexsort((rng.random(len(idx)), np.abs(p[idx] - 0.5)))  # last key sorts first
        queues[c] = idx[order].tolist()
    rotation = [str(c) for c in rng.permutation(sorted(queues))]
    picked: list[int] = []
    while len(picked) < n and any(queues.values()):
        for c in rotation:
            if queues[c] and len(picked) < n:
                picked.append(queues[c].pop(0))
    return picked


def select_for_review(
    checkpoint: str | Path,
    images: str | Path,
    n: int,
    out: str | Path,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
    on_listed: Callable[[int], None] | None = None,
    device: str | torch.device = "cpu",
) -> SelectionResult:
    """Score ``images``, pick ``n`` by uncertainty, and copy them with a manifest into ``out``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not an empty folder; pass a new --out folder")
    if n < 1:
        raise DataError(f"--n {n}: must be at least 1")
    scores = score_folder_images(checkpoint, images, batch_size, progress, on_listed, device)
    paths, classes = scores.paths, scores.classes
    if n > len(paths):
        log.warning("--n %d but only %d images under %s: selecting all of them", n, len(paths), images)
    picked = pick_uncertain(scores.rewards, classes, n, seed)

    with atomic_directory(out) as tmp:  # out is empty or absent (checked above)
        with open(tmp / MANIFEST_NAME, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["ID", "class", "reward"])
            for i in picked:
                shutil.copyfile(paths[i], tmp / paths[i].name)
                w.writerow([paths[i].name, classes[i], f"{scores.rewards[i]:.6f}"])
    per_class: dict[str, int] = {}
    for i in picked:
        per_class[classes[i]] = per_class.get(classes[i], 0) + 1
    log.info("selected %d of %d images for review into %s (%s)", len(picked), len(paths), out, per_class)
    return SelectionResult(
        out,
        [paths[i].name for i in picked],
        [classes[i] for i in picked],
        [float(scores.rewards[i]) for i in picked],
        dict(sorted(per_class.items())),
    )
