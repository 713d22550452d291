"""The simulated expert as a reviewer in the review app: it works through its queue like a person.

The database side (claiming the next item, recording a verdict idempotently) is the review
package's (:func:`clinalign.review.queue.work_queue`); this module only says how the simulated
expert judges one item.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np

from ..utils.splits import derived_seed
from .simulator import ExpertSimulator

log = logging.getLogger(__name__)


@dataclass
class ReviewResult:
    reviewer: str
    n: int
    plausible: int
    per_class: dict[str, dict[str, int]]


def _decode_blob(data: bytes, channels: int) -> np.ndarray:
    from PIL import Image

    from ..data.transforms import to_8bit
    from ..evaluate.data import match_channels

    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(to_8bit(img.convert("RGB") if img.mode not in ("L", "RGB") else img))
    return match_channels(arr[None, ..., None] if arr.ndim == 2 else arr[None], channels)


def check_reviewer(db: str, reviewer: str) -> None:
    """Raise DataError unless the review database ``db`` exists and has the reviewer ``reviewer``."""
    from ..review.db import Store
    from ..review.queue import reviewer_id

    store = Store(db, create=False, must_exist=True)
    try:
        reviewer_id(store, reviewer)
    finally:
        store.dispose()


def review_queue(
    db: str,
    reviewer: str,
    expert: ExpertSimulator,
    tau: float = 0.5,
    noise: float = 0.0,
    seed: int = 0,
    limit: int | None = None,
    concepts: dict[str, str] | None = None,
    concept_min_p: float = 0.5,
) -> ReviewResult:
    """Work through ``reviewer``'s queue in the review web app's database like a person would.

    ``concepts`` (concept -> expert label, as for :func:`clinalign.expert.simulator.simulate`): a
    plausible image gets the concept its subtype stands for, when the batch offers that concept for
    the image's class. Each verdict flips with probability ``noise`` (seeded per reviewer).
    """
    from ..review.db import Store
    from ..review.queue import QueueItem, work_queue

    rng = np.random.default_rng(derived_seed(f"expert-noise:{reviewer}", seed))

    def judge(item: QueueItem) -> tuple[bool, str | None]:
        pixels = _decode_blob(item.image, expert.channels)
        plausible = bool(expert.judge(pixels, [item.declared_class], tau)[0][0]) ^ bool(rng.random() < noise)
        mine = {c: label for c, label in (concepts or {}).items() if c in item.concepts}
        if not (plausible and mine):
            return plausible, None
        return True, expert.assign_concepts(pixels, [item.declared_class], np.ones(1, bool), mine, concept_min_p)[0]

    store = Store(db, create=False, must_exist=True)
    try:
        per_class = work_queue(store, reviewer, judge, limit=limit)
    finally:
        store.dispose()
    n = sum(c["plausible"] + c["implausible"] for c in per_class.values())
    total = sum(c["plausible"] for c in per_class.values())
    log.info("%s judged %d image(s) in %s: %d plausible", reviewer, n, store.safe_url, total)
    return ReviewResult(reviewer, n, total, per_class)
