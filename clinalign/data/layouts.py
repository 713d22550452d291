"""The two folder layouts of the reward-model stage (the seed's conventions).

- class folder (ImageNet layout): ``CLASS/image.png`` — real images, the folder names the class.
- feedback folder: ``CLASS/align/*.png`` (judged plausible) and ``CLASS/notalign/*.png``
  (judged implausible) — synthetic images with their declared class and the expert's verdict.

Readers return decoded pixels with their class names (and verdicts); the writer creates a
feedback folder atomically (temp dir, then rename), so a crash never leaves half a judgement set.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..utils.fileio import atomic_directory, write_text_atomic
from .classmap import validate_class_name
from .folder import _decode_all, _stack
from .naming import is_image_file

log = logging.getLogger(__name__)

ALIGN, NOTALIGN = "align", "notalign"


@dataclass
class LabelledImages:
    """Decoded images (uint8 NHWC) with their class names, source files and, for feedback, verdicts."""

    images: np.ndarray
    classes: list[str]
    paths: list[Path]
    plausible: np.ndarray | None = None  # 1 = plausible (align), 0 = implausible (notalign)

    def __len__(self) -> int:
        return len(self.classes)


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_image_file(p))


def _class_dirs(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: folder does not exist; pass the folder that holds one sub-folder per class ({what})")
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{root}: has no class sub-folders; expected {what}")
    for d in dirs:
        try:
            validate_class_name(d.name)
        except DataError as exc:
            raise DataError(f"{d}: {exc}") from None
    return dirs


def _decode(paths: list[Path], image_size: int, channels: int | None, skip_bad: bool) -> tuple[np.ndarray, list[int]]:
    arrays, bad = _decode_all(paths, image_size, channels, skip_bad)
    keep = [i for i in range(len(paths)) if i not in bad]
    if bad:
        log.warning("skipped %d undecodable image(s), e.g. %s", len(bad), paths[next(iter(bad))])
    if not keep:
        return np.zeros((0, image_size, image_size, channels or 3), np.uint8), []
    ch = channels or (1 if all(arrays[i].shape[2] == 1 for i in keep) else 3)
    return _stack([arrays[i] for i in keep], ch), keep


def read_class_folder(
    root: str | Path, image_size: int, channels: int | None = None, skip_bad_images: bool = False
) -> LabelledImages:
    """Real images in ImageNet layout ``CLASS/**/img.png`` (``align``/``notalign`` sub-folders excluded)."""
    root = Path(root)
    paths, classes = [], []
    for d in _class_dirs(root, "CLASS/image.png"):
        for p in _images_in(d, recursive=True):
            if {ALIGN, NOTALIGN} & set(p.relative_to(d).parts[:-1]):
                continue
            paths.append(p)
            classes.append(d.name)
    if not paths:
        raise DataError(f"{root}: no .jpg/.jpeg/.png images in its class sub-folders; expected CLASS/image.png")
    images, keep = _decode(paths, image_size, channels, skip_bad_images)
    return LabelledImages(images, [classes[i] for i in keep], [paths[i] for i in keep])


def read_feedback_folder(
    root: str | Path, image_size: int, channels: int | None = None, skip_bad_images: bool = False
) -> LabelledImages:
    """Judged synthetic images: ``CLASS/align/*.png`` (plausible) and ``CLASS/notalign/*.png``."""
    root = Path(root)
    paths, classes, verdicts = [], [], []
    for d in _class_dirs(root, "CLASS/align/*.png and CLASS/notalign/*.png"):
        found = False
        for sub, verdict in ((ALIGN, 1), (NOTALIGN, 0)):
            if (d / sub).is_dir():
                found = True
                for p in _images_in(d / sub, recursive=False):
                    paths.append(p)
                    classes.append(d.name)
                    verdicts.append(verdict)
        if not found:
            raise DataError(
                f"{d}: has neither an 'align' nor a 'notalign' sub-folder; "
                "put judged images in CLASS/align/ (plausible) and CLASS/notalign/ (implausible)"
            )
    if not paths:
        raise DataError(f"{root}: no judged images in any CLASS/align or CLASS/notalign folder")
    images, keep = _decode(paths, image_size, channels, skip_bad_images)
    return LabelledImages(
        images,
        [classes[i] for i in keep],
        [paths[i] for i in keep],
        np.asarray([verdicts[i] for i in keep], dtype=np.int64),
    )


def write_feedback_folder(
    out: str | Path,
    items: Iterable[tuple[Path, str, bool]],
    overwrite: bool = False,
    concepts: dict[str, str] | None = None,
    extra_files: dict[str, str] | None = None,
) -> dict:
    """Copy ``(source image, declared class, plausible)`` items into ``out/CLASS/align|notalign/``.

    File names are kept (they are the IDs of the rewards CSV). ``concepts`` ({concept: parent})
    is written as ``concepts.json`` (see :mod:`clinalign.concepts`); ``extra_files`` ({name: text},
    e.g. ``judgements.csv``) beside the class folders. Written into a temporary sibling and renamed
    into place, so the verdicts and their record appear together; returns counts per class and verdict.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: already exists and is not empty; pass a new output folder")
    counts: dict[str, dict[str, int]] = {}
    with atomic_directory(out) as tmp:
        for src, cls, plausible in items:
            validate_class_name(cls)
            sub = ALIGN if plausible else NOTALIGN
            dest = tmp / cls / sub
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / Path(src).name)
            counts.setdefault(cls, {ALIGN: 0, NOTALIGN: 0})[sub] += 1
        if concepts:
            from .concepts import write_concepts_file

            write_concepts_file(tmp, concepts)
        for name, text in (extra_files or {}).items():
            write_text_atomic(tmp / name, text)
    return counts
