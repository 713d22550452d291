"""Image sets for evaluation, and the deterministic splits that keep the judges independent.

Every real image is assigned, from a hash of its *file name* alone, to

- half A (trains the simulated expert, :mod:`clinalign.expert`) or half B (trains the evaluation
  oracle), and independently
- the held-out test split (when no ``--real_test`` folder is given) and the validation split.

Hashing the name (not the path, not the folder order) means the expert command and the evaluate
command, run separately on the same data, agree on the split without sharing any state, and that
adding images never moves an existing image to the other half.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.classmap import ClassMap
from ..data.folder import ImageFolderDataset, load_image
from ..data.transforms import center_crop_arr
from ..errors import DataError
from ..utils.splits import HALF_EXPERT, HALF_ORACLE, derived_seed, half_of, is_held_out, is_validation  # noqa: F401

log = logging.getLogger(__name__)


def assert_disjoint(first: Sequence[str], second: Sequence[str], what: str) -> None:
    """Raise if any file name is in both training sets (the judges must not share images)."""
    both = {Path(n).name for n in first} & {Path(n).name for n in second}
    if both:
        raise AssertionError(f"{what}: {len(both)} file name(s) in both training sets, e.g. {sorted(both)[0]}")


def resize_images(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 NHWC at any size -> ``image_size``, with the same PIL pipeline folders are loaded with.

    Real folders and in-memory samples must be resampled identically: a different filter alone
    shifts feature statistics and would show up as FID.
    """
    if images.shape[1] == image_size and images.shape[2] == image_size:
        return images
    out = np.empty((len(images), image_size, image_size, images.shape[3]), dtype=np.uint8)
    for i, img in enumerate(images):
        arr = center_crop_arr(Image.fromarray(img[..., 0] if img.shape[2] == 1 else img), image_size)
        out[i] = arr[..., None] if arr.ndim == 2 else arr
    return out


def match_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Make uint8 NHWC images have ``channels`` (1 or 3): gray -> RGB by repetition, RGB -> gray by luma."""
    have = images.shape[3]
    if have == channels:
        return images
    if channels == 3 and have == 1:
        return np.repeat(images, 3, axis=3)
    if channels == 1 and have in (3, 4):
        luma = images[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL "L"
        return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
    if channels == 3 and have == 4:
        return np.ascontiguousarray(images[..., :3])
    raise DataError(f"cannot convert {have}-channel images to {channels} channels")


@dataclass
class ImageSet:
    """Images (uint8 NHWC, all one size) with the class each declares and an ID (file name) each."""

    images: np.ndarray
    classes: list[str]
    ids: list[str]
    paths: list[Path] | None = None
    name: str = ""
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}")
        if not len(self.images) == len(self.classes) == len(self.ids):
            raise ValueError(f"{len(self.images)} images, {len(self.classes)} classes, {len(self.ids)} ids")
        self.classes = [str(c) for c in self.classes]
        self.ids = [str(i) for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        image_size: int,
        channels: int | None = None,
        class_map: ClassMap | None = None,
        skip_bad_images: bool = False,
    ) -> ImageSet:
        """A folder in the seed's naming (class = prefix before the first ``_``, or manifest.csv)."""
        ds = ImageFolderDataset(
            root, image_size, class_cond=True, class_map=class_map, rgb=channels == 3, skip_bad_images=skip_bad_images
        )
        images = ds.images if channels is None else match_channels(ds.images, channels)
        return cls(
            images,
            [ds.class_map.names[y] for y in ds.labels],
            [p.name for p in ds.paths],
            list(ds.paths),
            name=str(root),
        )

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        classes: Sequence[str],
        ids: Sequence[str] | None = None,
        image_size: int | None = None,
        name: str = "",
    ) -> ImageSet:
        """In-memory images (uint8 NHWC); ``ids`` default to ``CLASS_000123.png`` names."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 NHWC, got {images.dtype}; convert with transforms.to_uint8")
        if images.ndim == 3:
            images = images[..., None]
        if image_size is not None:
            images = resize_images(images, image_size)
        if ids is None:
            ids = [f"{c}_{i:06d}.png" for i, c in enumerate(classes)]
        return cls(np.ascontiguousarray(images), list(classes), list(ids), None, name=name)

    @classmethod
    def from_toy(
        cls, classes: int = 4, per_class: int = 100, size: int = 32, seed: int = 0, id_suffix: str = ""
    ) -> ImageSet:
        """Toy blood cells in memory, with the IDs ``clinalign.data.toy.generate`` would write.

        Two toy sets drawn with different seeds share file names; give one an ``id_suffix`` when
        both are used together (the IDs key the splits and the memorisation report).
        """
        from ..data.toy import toy_arrays, toy_class_map, toy_file_name

        names = toy_class_map(classes).names
        images, labels, subtypes = toy_arrays(classes, per_class, size, seed)
        labels_ = [names[y] for y in labels]
        per = {name: 0 for name in names}
        ids = []
        for c, sub in zip(labels_, subtypes):
            ids.append(toy_file_name(c, sub, per[c], id_suffix))
            per[c] += 1
        return cls(images, labels_, ids, None, name=f"toy cells (seed {seed})")

    def subset(self, index: np.ndarray | Sequence[int] | Sequence[bool]) -> ImageSet:
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return ImageSet(
            self.images[idx],
            [self.classes[i] for i in idx],
            [self.ids[i] for i in idx],
            None if self.paths is None else [self.paths[i] for i in idx],
            self.name,
        )

    def concat(self, other: ImageSet) -> ImageSet:
        paths = None if self.paths is None or other.paths is None else self.paths + other.paths
        return ImageSet(
            np.concatenate([self.images, other.images]),
            self.classes + other.classes,
            self.ids + other.ids,
            paths,
            self.name,
        )

    def at(self, image_size: int, channels: int) -> ImageSet:
        """This set at another size / channel count (re-decoded from the files when there are any)."""
        if image_size == self.image_size and channels == self.channels:
            return self
        if self.paths is not None:
            images = np.stack([load_image(p, image_size, channels) for p in self.paths])
        else:
            images = match_channels(resize_images(self.images, image_size), channels)
        return ImageSet(images, self.classes, self.ids, self.paths, self.name)

    def labels(self, class_map: ClassMap) -> np.ndarray:
        return np.asarray(class_map.indices(self.classes), dtype=np.int64)

    def fingerprint(self) -> str:
        """Content hash (IDs, classes, pixels): the cache key of models trained on this set."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update("\n".join(f"{i}\t{c}" for i, c in zip(self.ids, self.classes)).encode())
            h.update(str(self.images.shape).encode())
            h.update(np.ascontiguousarray(self.images).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


#: What the public entry points accept as image data.
RealData = ImageSet | ImageFolderDataset | tuple


def as_image_set(data: RealData) -> ImageSet:
    """Accept what a caller has at hand: an ImageSet, a loaded ImageFolderDataset, or
    ``(uint8 NHWC images, class names[, ids])``."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, ImageFolderDataset) and data.images is not None:
        return ImageSet(
            data.images,
            [data.class_map.names[y] for y in data.labels],
            [p.name for p in data.paths],
            list(data.paths),
            name=str(data.root),
        )
    if isinstance(data, tuple) and len(data) in (2, 3):
        return ImageSet.from_arrays(*data)
    raise TypeError(
        f"expected an ImageSet, an ImageFolderDataset (cache=True) or (images, classes[, ids]), "
        f"got {type(data).__name__}"
    )


def split_real(real: ImageSet, test: ImageSet | None, test_fraction: float) -> tuple[ImageSet, ImageSet]:
    """``(train, test)``: the given test set, or a name-hash held-out part of ``real``."""
    if test is not None:
        overlap = set(real.ids) & set(test.ids)
        if overlap:
            log.warning(
                "%d real test file name(s) also appear in the real training folder, e.g. %s; "
                "memorisation and utility numbers will be optimistic",
                len(overlap),
                sorted(overlap)[0],
            )
        return real, test
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction must be in (0, 1), got {test_fraction}; or pass --real_test DIR")
    held = np.array([is_held_out(n, test_fraction) for n in real.ids])
    if held.all() or not held.any():
        raise DataError(
            f"{real.name or 'real data'}: {len(real)} images are too few to hold out a test split; "
            "add images or pass --real_test DIR"
        )
    return real.subset(~held), real.subset(held)


def class_counts(classes: Sequence[str]) -> dict[str, int]:
    names, counts = np.unique(np.asarray(classes, dtype=object), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def stratified_cap(classes: Sequence[str], cap: int, seed: int) -> np.ndarray:
    """Indices of at most ``cap`` items, keeping the class proportions (every class keeps one)."""
    n = len(classes)
    if cap <= 0 or cap >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    arr = np.asarray(classes, dtype=object)
    keep: list[np.ndarray] = []
    for c in sorted(set(classes)):
        idx = np.flatnonzero(arr == c)
        take = max(1, int(round(cap * len(idx) / n)))
        keep.append(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return np.sort(np.concatenate(keep))
