"""Score a folder of synthetic images: the seed's ``rewards.csv`` (``ID,rewards``).

``ID`` is the image file name (the finetuning data loader matches rewards to files by name, so
names must be unique across sub-folders), ``rewards`` the calibrated P(plausible) with six
decimals. Rows are sorted by ID so the same folder always gives the same bytes. The declared
class of each image is its file-name prefix, or its row in ``manifest.csv``.

Details a person may want (class, raw logit, uncalibrated probability) go to a second file,
``rewards_detail.csv`` beside the first, never into it: the seed's reader expects two columns.
Both files are written to temporary names and renamed into place only once every image has been
scored, so a failure leaves no partial CSV.

Decoding runs in a thread pool one batch ahead of the network (PIL and torch both release the
GIL), so on two cores the two overlap instead of adding up.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.folder import load_image
from ..data.naming import check_unique_names, declared_classes, list_images
from ..errors import DataError
from .files import write_texts
from .model import RewardModel

log = logging.getLogger(__name__)

DETAIL_SUFFIX = "_detail"
DEFAULT_BATCH = 512


@dataclass
class Scores:
    """Per-image results in ID order."""

    ids: list[str]
    paths: list[Path]
    classes: list[str]
    logits: np.ndarray
    probability_uncalibrated: np.ndarray
    rewards: np.ndarray
    decode_seconds: float = 0.0
    total_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ScoreResult:
    out: Path
    detail: Path
    n: int
    seconds: float
    decode_seconds: float

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def list_scored_images(images: str | Path) -> tuple[list[Path], list[str]]:
    """Image paths sorted by file name (the ID) with their declared classes; IDs must be unique."""
    root = Path(images)
    paths = list_images(root)  # raises for a missing folder or one with no images
    classes = declared_classes(paths, root)
    check_unique_names(
        paths,
        "the rewards CSV identifies images by file name, so names must be unique "
        "across sub-folders. Rename one of them",
    )
    order = sorted(range(len(paths)), key=lambda i: paths[i].name)
    return [paths[i] for i in order], [classes[i] for i in order]


def decode_for_model(path: Path, size: int, channels: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """``load_image`` with a fast path for files already at the model's size and mode.

    Returns the pixels and, when the file had to be scaled, its original size.
    """
    original = None
    try:
        with Image.open(path) as img:
            if img.size == (size, size) and img.mode == ("RGB" if channels == 3 else "L"):
                img.load()
                arr = np.asarray(img)
                return (arr if channels == 3 else arr[:, :, None]), None
            original = img.size if img.size != (size, size) else None
    except Exception:
        pass  # the general path below reports the problem with the file name and a fix
    return load_image(path, size, channels), original


def _decode_batch(paths: list[Path], size: int, channels: int) -> tuple[np.ndarray, float, list]:
    t0 = time.perf_counter()
    out = np.empty((len(paths), size, size, channels), np.uint8)
    resized = []
    for i, p in enumerate(paths):
        out[i], original = decode_for_model(p, size, channels)
        if original is not None:
            resized.append((p, original))
    return out, time.perf_counter() - t0, resized


def thread_plan(decode_threads: int | None = None) -> tuple[int, int]:
    """(decode threads, torch intra-op threads) that together do not oversubscribe the CPU.

    Oversubscription is not a small loss here: with 2 OpenMP threads on a 2-core machine and
    anything else running (our own decoder included), every OpenMP barrier waits for a
    descheduled thread and the network ran at 1,500-2,000 images/s instead of ~10,000 with one
    thread (bench/reward_speed.py). So the decoder gets a thread of its own and torch the rest,
    never more than it is already allowed.
    """
    cpus = os.cpu_count() or 1
    decode = decode_threads or (1 if cpus <= 4 else 2)
    return decode, max(1, min(torch.get_num_threads(), cpus - decode))


def score_paths(
    model: RewardModel,
    paths: list[Path],
    classes: list[str],
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
    decode_threads: int | None = None,
) -> Scores:
    """Decode and score ``paths`` declared as ``classes``; ``progress(n)`` after each batch.

    Decoding runs one batch ahead in ``decode_threads`` threads; on CPU, torch's thread count is
    lowered for the duration (see :func:`thread_plan`) and restored afterwards.
    """
    if batch_size < 1:
        raise DataError(f"--batch_size {batch_size}: must be at least 1")
    known = set(model.class_map.names)
    for p, c in zip(paths, classes):
        if c not in known:
            raise DataError(
                f"{p}: declares class {c!r}, which the reward model was not trained on "
                f"(its classes: {', '.join(model.class_map.names)}); rename the file or retrain with that class"
            )
    idx = torch.as_tensor(model.class_map.indices(classes), dtype=torch.int64)
    decode_threads, torch_threads = thread_plan(decode_threads)
    before = torch.get_num_threads()
    if model.device.type == "cpu":
        torch.set_num_threads(torch_threads)
    try:
        return _score(model, paths, classes, idx, batch_size, progress, decode_threads)
    finally:
        torch.set_num_threads(before)


def _decoded_batches(paths: list[Path], model: RewardModel, batch_size: int, decode_threads: int):
    """Yield ``(uint8 images, decode seconds, resized files)`` per batch, with the next batch decoding ahead."""
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    # Each decode task does a whole sub-batch, so thread overhead is paid per batch, not per image.
    sub = max(1, -(-batch_size // decode_threads))
    with ThreadPoolExecutor(decode_threads) as pool:

        def submit(chunk: list[Path]):
            return [
                pool.submit(_decode_batch, chunk[j : j + sub], model.image_size, model.channels)
                for j in range(0, len(chunk), sub)
            ]

        pending: deque = deque()
        ahead = iter(chunks)
        for chunk in (next(ahead, None), next(ahead, None)):  # keep one batch decoding ahead
            if chunk is not None:
                pending.append(submit(chunk))
        while pending:
            parts = [f.result() for f in pending.popleft()]
            nxt = next(ahead, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield (
                np.concatenate([a for a, _, _ in parts]),
                sum(s for _, s, _ in parts),
                [r for _, _, rs in parts for r in rs],
            )


def _score(
    model: RewardModel,
    paths: list[Path],
    classes: list[str],
    idx: torch.Tensor,
    batch_size: int,
    progress: Callable[[int], None] | None,
    decode_threads: int,
) -> Scores:
    t0 = time.perf_counter()
    logits, decode_seconds, resized, done = [], 0.0, [], 0
    for images, seconds, off in _decoded_batches(paths, model, batch_size, decode_threads):
        decode_seconds += seconds
        resized += off
        logits.append(model.score_uint8(images, idx[done : done + len(images)], batch_size))
        done += len(images)
        if progress is not None:
            progress(len(images))
    if resized:
        p, (w, h) = resized[0]
        size = model.image_size
        log.warning(
            "%d of %d images are not %dx%d (e.g. %s is %dx%d); they were scaled and centre-cropped to the "
            "reward model's size",
            len(resized),
            len(paths),
            size,
            size,
            p,
            w,
            h,
        )
    z = torch.cat(logits) if logits else torch.zeros(0)
    return Scores(
        ids=[p.name for p in paths],
        paths=list(paths),
        classes=list(classes),
        logits=z.numpy().astype(np.float64),
        probability_uncalibrated=model.probabilities(z, calibrated=False).numpy().astype(np.float64),
        rewards=model.probabilities(z).numpy().astype(np.float64),
        decode_seconds=decode_seconds,
        total_seconds=time.perf_counter() - t0,
    )


def rewards_csv(scores: Scores) -> str:
    """The seed's format exactly: header ``ID,rewards``, ``\\n`` line ends, six decimals."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "rewards"])
    for i, r in zip(scores.ids, scores.rewards):
        w.writerow([i, f"{r:.6f}"])
    return buf.getvalue()


def detail_csv(scores: Scores) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "class", "logit", "probability_uncalibrated", "rewards"])
    for i, c, z, pu, r in zip(
        scores.ids, scores.classes, scores.logits, scores.probability_uncalibrated, scores.rewards
    ):
        w.writerow([i, c, f"{z:.6f}", f"{pu:.6f}", f"{r:.6f}"])
    return buf.getvalue()


def detail_path(out: Path) -> Path:
    return out.with_name(out.stem + DETAIL_SUFFIX + (out.suffix or ".csv"))


def score_folder_images(
    checkpoint: str | Path,
    images: str | Path,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
    on_listed: Callable[[int], None] | None = None,
    device: str | torch.device = "cpu",
) -> Scores:
    """Load the reward model and score every image under ``images`` (sorted by ID)."""
    model = RewardModel.load(checkpoint, device)
    paths, classes = list_scored_images(images)
    if on_listed is not None:
        on_listed(len(paths))
    return score_paths(model, paths, classes, batch_size, progress)


def score_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
    on_listed: Callable[[int], None] | None = None,
    device: str | torch.device = "cpu",
) -> ScoreResult:
    """``rewards.csv`` (+ ``rewards_detail.csv``) for every image under ``images``."""
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; --out takes the CSV file to write, e.g. {out / 'rewards.csv'}")
    scores = score_folder_images(checkpoint, images, batch_size, progress, on_listed, device)
    detail = detail_path(out)
    write_texts({detail: detail_csv(scores), out: rewards_csv(scores)})
    log.info(
        "scored %d images in %.2fs (%.0f images/s; decoding %.2fs of thread time) -> %s",
        len(scores),
        scores.total_seconds,
        len(scores) / max(scores.total_seconds, 1e-9),
        scores.decode_seconds,
        out,
    )
    return ScoreResult(out, detail, len(scores), scores.total_seconds, scores.decode_seconds)
