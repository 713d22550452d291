"""Image folders as training data: decode, scale, crop, label, and serve batches.

Every image is decoded once, up front: a bad file is reported before training starts rather than
hours into it, and a dataset of small images (12k 64x64 blood cells are ~150 MB) is then served
from one uint8 array with no worker processes.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ..errors import DataError
from .classmap import ClassMap, validate_class_name
from .naming import declared_classes, list_images
from .transforms import center_crop_arr, is_gray_mode, to_8bit

logger = logging.getLogger(__name__)

SKIP_HINT = "pass --skip_bad_images True to leave such files out"
# PIL releases the GIL while decoding, so a few threads overlap file reads and decodes.
_DECODE_THREADS = min(4, os.cpu_count() or 1)
_PROGRESS_MIN = 2000  # below this, a progress bar is noise


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``; any failure becomes a DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()  # lazy open reads only the header; load() is what finds truncation
            return img
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... per format
        detail = str(exc) or type(exc).__name__
        raise DataError(f"{path}: cannot decode image ({detail}); replace or delete it, or {SKIP_HINT}") from None


def image_channels(path: str | Path) -> int:
    """1 for a grayscale file (modes 1, L, LA, I, I;16, F), else 3. Reads only the header."""
    try:
        with Image.open(path) as img:
            return 1 if is_gray_mode(img.mode) else 3
    except Exception as exc:
        raise DataError(f"{path}: cannot read image header ({exc}); replace or delete it, or {SKIP_HINT}") from None


def load_image(path: str | Path, image_size: int, channels: int | None = None) -> np.ndarray:
    """Decode, scale the shorter side to ``image_size``, centre-crop: uint8 ``(S, S, C)``.

    ``channels`` 1 or 3 forces the output; ``None`` keeps the file's own (1 for grayscale).
    """
    return fit_image(open_image(path), image_size, channels)


def fit_image(img: Image.Image, image_size: int, channels: int | None = None) -> np.ndarray:
    """:func:`load_image` for an image already in memory (an array of a MedMNIST file, say)."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    img = to_8bit(img)
    if channels == 1 and img.mode == "RGB":
        img = img.convert("L")
    arr = center_crop_arr(img, image_size)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1] (batched :func:`transforms.to_tensor`)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class ImageArrayDataset(Dataset):
    """Images already in memory (uint8 NHWC) with integer labels; the base of the folder dataset."""

    def __init__(
        self,
        images: np.ndarray | None,
        labels: Sequence[int],
        class_map: ClassMap | None = None,
        hflip: bool = False,
    ) -> None:
        if images is not None:
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
                raise ValueError(f"images must be uint8 (N, S, S, C), got {images.dtype} {images.shape}")
            if len(images) != len(labels):
                raise ValueError(f"{len(images)} images but {len(labels)} labels")
            self.image_size = int(images.shape[1])
            self.channels = int(images.shape[3])
        self.images = images
        self.labels = [int(y) for y in labels]
        self.class_map = class_map
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.labels)

    def _pixels(self, indices: np.ndarray) -> np.ndarray:
        return self.images[indices]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        flip = self.hflip and bool(torch.rand(()) < 0.5)  # torch RNG, so torch.manual_seed governs it
        x, y = self.get_batch([i], flip=np.array([flip]))
        return x[0], int(y[0])

    def get_batch(self, indices: Sequence[int] | np.ndarray, flip: np.ndarray | None = None):
        """``(x float32 NCHW, y int64 N)`` for ``indices``; ``flip`` is a per-item horizontal-flip mask."""
        idx = np.asarray(indices, dtype=np.int64)
        x = images_to_tensor(self._pixels(idx))
        if flip is not None and flip.any():
            mask = torch.from_numpy(np.asarray(flip, dtype=bool))
            x[mask] = x[mask].flip(-1)
        y = torch.as_tensor([self.labels[i] for i in idx], dtype=torch.int64)
        return x, y


class ImageFolderDataset(ImageArrayDataset):
    """An image folder in the seed's convention (see :mod:`clinalign.data.naming`).

    Attributes: ``paths``, ``labels`` (class indices), ``class_map`` (empty when not class
    conditional), ``channels`` (1 if every image is grayscale and ``rgb`` is False, else 3),
    ``image_size``, ``n_skipped`` and ``skipped`` (files left out with ``skip_bad_images``; the
    reason for each is in ``skip_reasons``).
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        class_cond: bool = True,
        class_map: ClassMap | None = None,
        rgb: bool = False,
        skip_bad_images: bool = False,
        cache: bool = True,
        hflip: bool = False,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.root = Path(root)
        start = time.perf_counter()
        paths = list_images(self.root)
        if class_cond:
            class_map, labels = _label_files(paths, self.root, class_map)
        else:
            # Unconditional: every label is 0 and the map is empty, so len(class_map) is the
            # number of classes a model must embed (none) without a None check downstream.
            class_map, labels = ClassMap([]), [0] * len(paths)

        arrays, bad = _decode_all(paths, image_size, 3 if rgb else None, skip_bad_images, keep_pixels=cache)
        self.skipped = [paths[i] for i in bad]
        self.skip_reasons = {paths[i]: reason for i, reason in bad.items()}
        self.n_skipped = len(self.skipped)
        keep = [i for i in range(len(paths)) if i not in bad]
        if not keep:
            raise DataError(f"{self.root}: none of the {len(paths)} images could be decoded; check the files")
        if bad:
            logger.warning("%s: skipped %d undecodable image(s), e.g. %s", self.root, len(bad), self.skipped[0])

        self.paths = [paths[i] for i in keep]
        channels = 1 if all(arrays[i].shape[2] == 1 for i in keep) else 3
        images = _stack([arrays[i] for i in keep], channels) if cache else None
        del arrays
        super().__init__(images, [labels[i] for i in keep], class_map, hflip)
        self.image_size, self.channels = image_size, channels
        logger.info(
            "%s: %d images, %s, %d channel(s), %dx%d, in %.1fs",
            self.root,
            len(self.paths),
            f"{len(class_map)} classes" if class_cond else "unconditional",
            channels,
            image_size,
            image_size,
            time.perf_counter() - start,
        )

    def _pixels(self, indices: np.ndarray) -> np.ndarray:
        if self.images is not None:
            return self.images[indices]
        return np.stack([load_image(self.paths[i], self.image_size, self.channels) for i in indices])


def _label_files(paths: list[Path], root: Path, class_map: ClassMap | None) -> tuple[ClassMap, list[int]]:
    names = declared_classes(paths, root)
    checked: set[str] = set()
    for path, name in zip(paths, names):
        if name in checked:
            continue
        try:
            validate_class_name(name)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        if class_map is not None and name not in class_map:
            raise DataError(
                f"{path}: declares class {name!r}, which is not in the run's class map "
                f"(known classes: {', '.join(class_map.names)}); rename or remove the file, "
                "or train a new run that includes the class"
            )
        checked.add(name)
    if class_map is None:
        class_map = ClassMap.from_labels(names)
    return class_map, class_map.indices(names)


def _decode_all(
    paths: list[Path], image_size: int, channels: int | None, skip_bad: bool, keep_pixels: bool = True
) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """Decode in path order; the first bad file raises unless ``skip_bad``.

    Without ``keep_pixels`` each result is shrunk to a 1x1 stand-in that still carries the
    channel count, so validating a folder too large to cache does not hold it all in memory.
    """

    def decode(path: Path) -> np.ndarray | DataError:
        try:
            arr = load_image(path, image_size, channels)
        except DataError as exc:
            return exc
        return arr if keep_pixels else arr[:1, :1].copy()  # a view would keep the full array alive

    arrays: list[np.ndarray | None] = []
    bad: dict[int, str] = {}
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        results = pool.map(decode, paths)
        for i, result in enumerate(
            tqdm(
                results,
                total=len(paths),
                desc="decoding images",
                unit="img",
                disable=len(paths) < _PROGRESS_MIN or None,
                leave=False,
            )
        ):
            if isinstance(result, DataError):
                if not skip_bad:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise result
                bad[i] = str(result)
                arrays.append(None)
            else:
                arrays.append(result)
    return arrays, bad


def _stack(arrays: list[np.ndarray], channels: int) -> np.ndarray:
    out = np.empty((len(arrays), *arrays[0].shape[:2], channels), dtype=np.uint8)
    for i, arr in enumerate(arrays):
        out[i] = arr  # a (S, S, 1) grayscale image broadcasts into 3 channels
    return out


# ---------------------------------------------------------------------------------------------
# Batches


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's indices for ``epoch``: a (seed, epoch) permutation, dealt round-robin.

    Each rank gets ``n // world_size`` items (the remainder is dropped, as DistributedSampler
    with drop_last does), so every rank runs the same number of steps and shards are disjoint.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world_size
    return perm[rank : per_rank * world_size : world_size]


def infinite_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int = 0,
    drop_last: bool = True,
    sampler: Iterable[int] | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    with_indices: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield ``(x, y)`` (or ``(x, y, indices)``) batches forever, reshuffled every epoch.

    Deterministic in (seed, rank, world_size), and resumable: starting at ``start_step=k`` yields
    exactly what an uninterrupted run yields from its k-th batch on, because each epoch's order is
    a pure function of (seed, epoch). ``sampler`` replaces the built-in order (e.g. a
    ``DistributedSampler``; its ``set_epoch`` is called each epoch), in which case ``rank`` and
    ``world_size`` are the sampler's business. Horizontal flips (``dataset.hflip``) are drawn from
    (seed, epoch, rank) too, so a resumed run flips the same images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if seed < 0 or start_step < 0:
        raise ValueError("seed and start_step must be non-negative")
    n = len(dataset)
    to_skip = start_step
    for epoch in itertools.count():
        order = _sampler_order(sampler, epoch) if sampler is not None else epoch_order(n, seed, epoch, rank, world_size)
        n_steps = len(order) // batch_size if drop_last else -(-len(order) // batch_size)
        if n_steps == 0:
            raise DataError(
                f"{len(order)} images per {'rank' if world_size > 1 else 'epoch'} is fewer than "
                f"--batch_size {batch_size}; lower the batch size or add images"
            )
        if to_skip >= n_steps:
            to_skip -= n_steps
            continue
        flips = None
        if getattr(dataset, "hflip", False):
            flips = np.random.default_rng([seed, epoch, rank, 1]).random(len(order)) < 0.5
        for step in range(to_skip, n_steps):
            sl = slice(step * batch_size, (step + 1) * batch_size)
            idx = order[sl]
            x, y = _fetch(dataset, idx, None if flips is None else flips[sl])
            yield (x, y, torch.from_numpy(np.asarray(idx, dtype=np.int64))) if with_indices else (x, y)
        to_skip = 0


def _sampler_order(sampler: Iterable[int], epoch: int) -> np.ndarray:
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return np.fromiter((int(i) for i in sampler), dtype=np.int64)


def _fetch(dataset: Dataset, idx: np.ndarray, flip: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(idx, flip=flip)
    items = [dataset[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items], dtype=torch.int64)
