"""Training data of the reward model: real images (pseudo-labels) and expert feedback (verdicts).

Two sources, as in the paper (Sun et al. 2023, Sec. 3.2):

- real images in ImageNet layout ``CLASS/img.png``: a real image declared as its own class is
  plausible; the same image declared as another class is implausible (pseudo-label
  y = 1{c != c~} for "implausible"), with the wrong class drawn afresh each epoch;
- judged synthetic images ``CLASS/align/*.png`` (plausible) and ``CLASS/notalign/*.png``
  (implausible), from a folder or straight from the review database.

Everything is decoded once into uint8 arrays; all checks (class names, classes without real
images, one-sided feedback, image sizes) happen here, before any training starts.
"""

from __future__ import annotations

import difflib
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.classmap import ClassMap, validate_class_name
from ..data.folder import _decode_all, _stack
from ..data.layouts import ALIGN, NOTALIGN, LabelledImages, read_class_folder, read_feedback_folder
from ..data.naming import declared_classes, is_image_file, list_images
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Split:
    """Decoded images with class indices and, for feedback, verdicts (1 plausible, 0 implausible)."""

    images: np.ndarray  # uint8 NHWC
    classes: np.ndarray  # int64 class indices into the run's class map
    paths: list[Path]
    plausible: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.classes)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(
            self.images[idx],
            self.classes[idx],
            [self.paths[i] for i in idx],
            None if self.plausible is None else self.plausible[idx],
        )


@dataclass
class RewardData:
    class_map: ClassMap
    real_classes: list[str]  # classes with real training images: the pool wrong classes come from
    image_size: int
    channels: int
    train_real: Split | None = None
    train_feedback: Split | None = None
    val_real: Split | None = None
    val_feedback: Split | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        def count(s: Split | None) -> dict | None:
            if s is None:
                return None
            out = {"images": len(s)}
            if s.plausible is not None:
                out["plausible"] = int(s.plausible.sum())
                out["implausible"] = int(len(s) - s.plausible.sum())
            return out

        return {
            "classes": list(self.class_map.names),
            "real_classes": self.real_classes,
            "image_size": self.image_size,
            "channels": self.channels,
            "train_real": count(self.train_real),
            "train_feedback": count(self.train_feedback),
            "val_real": count(self.val_real),
            "val_feedback": count(self.val_feedback),
            "warnings": self.warnings,
        }


# ---------------------------------------------------------------------------------------------
# Wrong-class pseudo-labels


def wrong_classes(true_idx: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each item a class drawn uniformly from ``candidates`` minus its own class.

    ``candidates`` are sorted class indices that contain every ``true_idx``; with fewer than two
    candidates there is no wrong class and every entry is -1.
    """
    true_idx = np.asarray(true_idx, dtype=np.int64)
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) < 2:
        return np.full(len(true_idx), -1, dtype=np.int64)
    pos = np.searchsorted(candidates, true_idx)
    if np.any(pos >= len(candidates)) or np.any(candidates[np.minimum(pos, len(candidates) - 1)] != true_idx):
        raise ValueError("every true class must be among the candidates")
    r = rng.integers(0, len(candidates) - 1, size=len(true_idx))
    return candidates[r + (r >= pos)]  # skip over the true class's slot


# ---------------------------------------------------------------------------------------------
# Reading and checking


def is_prefix_layout(root: Path) -> bool:
    """True when images sit directly in ``root`` (the seed's ``CLASS_*.png`` naming), not in class folders."""
    return root.is_dir() and any(p.is_file() and is_image_file(p) for p in root.iterdir())


def read_real_folder(root: Path, image_size: int, channels: int | None, skip_bad: bool) -> LabelledImages:
    """Real images in ImageNet layout (``CLASS/img.png``, the seed's ``--train_dir``) or, when
    images sit directly in ``root``, in the seed's image-folder naming (``CLASS_*.png``, any depth,
    or ``manifest.csv``), which the diffusion stages use for the same real data."""
    if not is_prefix_layout(root):
        return read_class_folder(root, image_size, channels, skip_bad)
    paths = list_images(root)
    classes = declared_classes(paths, root)
    for p, c in zip(paths, classes):
        try:
            validate_class_name(c)
        except DataError as exc:
            raise DataError(f"{p}: {exc}") from None
    log.info("%s: images named CLASS_*.png (no class sub-folders): classes from file names", root)
    arrays, bad = _decode_all(paths, image_size, channels, skip_bad)
    keep = [i for i in range(len(paths)) if i not in bad]
    if bad:
        log.warning("skipped %d undecodable image(s), e.g. %s", len(bad), paths[next(iter(bad))])
    if not keep:
        raise DataError(f"{root}: none of the {len(paths)} images could be decoded; check the files")
    ch = channels or (1 if all(arrays[i].shape[2] == 1 for i in keep) else 3)
    return LabelledImages(_stack([arrays[i] for i in keep], ch), [classes[i] for i in keep], [paths[i] for i in keep])


def first_image(root: Path) -> Path:
    """The first image of a real-image folder in the order :func:`read_real_folder` reads it."""
    if not root.is_dir():
        raise DataError(f"{root}: folder does not exist; pass the folder that holds one sub-folder per class")
    if is_prefix_layout(root):
        return list_images(root)[0]
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in d.rglob("*") if p.is_file() and is_image_file(p))
        if images:
            return images[0]
    raise DataError(f"{root}: no .jpg/.jpeg/.png images in its class sub-folders; expected CLASS/image.png")


def image_size_of(path: Path) -> int:
    """The side ``load_image`` would give the file's own scale: its shorter side."""
    try:
        with Image.open(path) as img:
            return min(img.size)
    except Exception as exc:
        raise DataError(f"{path}: cannot read image header ({exc}); replace or delete it") from None


def feedback_counts(root: Path) -> dict[str, dict[str, int]]:
    """Number of image files per class and verdict folder (0 for an empty or missing folder)."""
    counts: dict[str, dict[str, int]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        counts[d.name] = {
            sub: sum(1 for p in (d / sub).iterdir() if p.is_file() and is_image_file(p)) if (d / sub).is_dir() else 0
            for sub in (ALIGN, NOTALIGN)
        }
    return counts


def check_feedback_balance(root: Path, what: str, require_both: bool) -> list[str]:
    """Warn about one-sided classes; error (with ``require_both``) when the whole set is one-sided."""
    warnings = []
    counts = feedback_counts(root)
    for cls, c in counts.items():
        if c[ALIGN] == 0 and c[NOTALIGN] == 0:
            warnings.append(f"{root / cls}: no judged images in align/ or notalign/; class {cls!r} gets no feedback")
        elif c[ALIGN] == 0 or c[NOTALIGN] == 0:
            empty = ALIGN if c[ALIGN] == 0 else NOTALIGN
            warnings.append(
                f"{root / cls / empty}: empty ({c[ALIGN]} plausible, {c[NOTALIGN]} implausible judged images); "
                f"one-sided feedback cannot teach the reward model the boundary for {cls!r}"
            )
    total_align = sum(c[ALIGN] for c in counts.values())
    total_notalign = sum(c[NOTALIGN] for c in counts.values())
    if total_align + total_notalign and (total_align == 0 or total_notalign == 0):
        only = "plausible (align)" if total_notalign == 0 else "implausible (notalign)"
        msg = (
            f"{root}: every judged image in the {what} is {only}; the feedback cannot teach what separates "
            "plausible from implausible. Judge more images, or export with another --rule"
        )
        if require_both:
            raise DataError(msg + " (or drop --require_both to train on it anyway)")
        warnings.append(msg)
    for w in warnings:
        log.warning("%s", w)
    return warnings


def scan_sizes(paths: list[Path], image_size: int) -> str | None:
    """One warning for all files that are not ``image_size`` x ``image_size``, or None."""
    off: Counter = Counter()
    example: dict[tuple[int, int], Path] = {}
    for p in paths:
        try:
            with Image.open(p) as img:
                size = img.size
        except Exception:
            continue  # decoding already reported (or skipped) it
        if size != (image_size, image_size):
            off[size] += 1
            example.setdefault(size, p)
    if not off:
        return None
    size, _ = off.most_common(1)[0]
    msg = (
        f"{sum(off.values())} of {len(paths)} images are not {image_size}x{image_size} "
        f"(e.g. {example[size]} is {size[0]}x{size[1]}); they are scaled (shorter side) and centre-cropped "
        f"to {image_size}x{image_size}. Pass --image_size to choose the size"
    )
    log.warning("%s", msg)
    return msg


def _check_new_classes(
    feedback: set[str],
    real: set[str],
    anno_root: Path | None,
    real_root: Path | None,
    recorded: dict[str, str] | None = None,
) -> tuple[dict[str, str | None], list[str]]:
    """Classes judged in the feedback but absent from the real data.

    A warning, not an error: the review app exports images reassigned to a new concept (e.g.
    ``neutrophil-band`` under ``neutrophil``) under the concept's name, and such a class can only
    be learned from feedback. A name that is a near-miss of a real class (``neutrofil``) is almost
    certainly a typo that would silently split a class in two, so that one is an error.
    Returns the parents of concept-like names (``PARENT-...``) and the warnings. A concept the
    feedback folder's ``concepts.json`` (``recorded``) names is expected to lack real images: its
    positives come from the expert's assignments only, and real images of its parent are not
    positives for it (a real neutrophil may be a band or a segmented one).
    """
    recorded = recorded or {}
    parents: dict[str, str | None] = {}
    warnings = []
    for cls in sorted(feedback & set(recorded)):
        parents[cls] = recorded[cls]
        log.info(
            "%s: concept %r under %r, learned from the judged images alone",
            anno_root / cls if anno_root else cls,
            cls,
            recorded[cls],
        )
    for cls in sorted(feedback - real - set(recorded)):
        parent = next((r for r in sorted(real, key=len, reverse=True) if cls.startswith(r + "-")), None)
        close = difflib.get_close_matches(cls, sorted(real), n=1, cutoff=0.8)
        where = anno_root / cls if anno_root else cls
        if parent is None and close:
            raise DataError(
                f"{where}: class {cls!r} has no real images in {real_root}, but {close[0]!r} does; "
                f"if it is a typo rename the folder to {close[0]!r}, else add real images under "
                f"{real_root}/{cls}/"
            )
        parents[cls] = parent
        warnings.append(
            f"{where}: class {cls!r} has feedback but no real images in {real_root}"
            + (f" (a concept under {parent!r}?)" if parent else "")
            + "; the reward model learns it from the judged images alone. Add real images under "
            f"{real_root}/{cls}/ for a reliable reward"
        )
    for w in warnings:
        log.warning("%s", w)
    return parents, warnings


def _subsample(fb: LabelledImages, fraction: float, seed: int) -> LabelledImages:
    """Keep ``fraction`` of the judged images of each class (the seed's ``--ratio``)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--ratio {fraction}: must be in (0, 1]")
    if fraction == 1.0:
        return fb
    rng = np.random.default_rng([seed, 7])
    keep: list[int] = []
    classes = np.asarray(fb.classes)
    for c in sorted(set(fb.classes)):
        idx = np.flatnonzero(classes == c)
        keep += sorted(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False).tolist())
    keep.sort()
    assert fb.plausible is not None
    return LabelledImages(
        fb.images[keep], [fb.classes[i] for i in keep], [fb.paths[i] for i in keep], fb.plausible[keep]
    )


def _split(li: LabelledImages, class_map: ClassMap, root: Path, what: str) -> Split:
    unknown = sorted(set(li.classes) - set(class_map.names))
    if unknown:
        raise DataError(
            f"{root / unknown[0]}: class {unknown[0]!r} of the {what} is not among the training classes "
            f"({', '.join(class_map.names)}); the model cannot score it. Add it to the training data or remove "
            "the folder"
        )
    return Split(
        li.images,
        np.asarray(class_map.indices(li.classes), dtype=np.int64),
        li.paths,
        None if li.plausible is None else np.asarray(li.plausible, dtype=np.int64),
    )


def _reward_image_size(paths: dict[str, Path | None], image_size: int | None) -> int:
    """The given size, else the first training image's own (shorter side)."""
    if image_size is None:
        first = first_image(paths["train"]) if paths["train"] else None
        if first is None:
            anno = paths["train_anno"]
            assert anno is not None
            first = next((p for p in sorted(anno.rglob("*")) if p.is_file() and is_image_file(p)), None)
            if first is None:
                raise DataError(f"{anno}: no judged images in any CLASS/align or CLASS/notalign folder")
        image_size = image_size_of(first)
        log.info("image size %d px (from %s; pass --image_size to change it)", image_size, first)
    if image_size < 8:
        raise ConfigError(f"--image_size {image_size}: must be at least 8")
    return image_size


@dataclass
class _Read:
    """The four inputs decoded at one size and channel count, with the warnings reading raised."""

    train_real: LabelledImages | None = None
    train_fb: LabelledImages | None = None
    val_real: LabelledImages | None = None
    val_fb: LabelledImages | None = None
    channels: int = 0
    warnings: list[str] = field(default_factory=list)


def _read_inputs(
    paths: dict[str, Path | None],
    image_size: int,
    require_both: bool,
    feedback_fraction: float,
    seed: int,
    skip_bad: bool,
) -> _Read:
    r = _Read()
    channels: int | None = None
    if paths["train"]:
        r.train_real = read_real_folder(paths["train"], image_size, None, skip_bad)
        channels = int(r.train_real.images.shape[3])
    if paths["train_anno"]:
        r.warnings += check_feedback_balance(paths["train_anno"], "training feedback", require_both)
        r.train_fb = read_feedback_folder(paths["train_anno"], image_size, channels, skip_bad)
        channels = channels or int(r.train_fb.images.shape[3])
        r.train_fb = _subsample(r.train_fb, feedback_fraction, seed)
    if paths["val"]:
        r.val_real = read_real_folder(paths["val"], image_size, channels, skip_bad)
    if paths["val_anno"]:
        r.warnings += check_feedback_balance(paths["val_anno"], "validation feedback", require_both=False)
        r.val_fb = read_feedback_folder(paths["val_anno"], image_size, channels, skip_bad)
    assert channels is not None
    r.channels = channels
    return r


def _class_map(r: _Read, paths: dict[str, Path | None]) -> ClassMap:
    """Every real and judged class, with the parents of concepts (``concepts.json`` or ``PARENT-...`` names)."""
    from ..data.concepts import read_concepts_file

    real = set(r.train_real.classes) if r.train_real else set()
    judged = set(r.train_fb.classes) if r.train_fb else set()
    if r.train_real is not None and len(real) < 2:
        msg = (
            f"{paths['train']}: only one class ({', '.join(real)}); real images cannot be paired with a wrong "
            "class, so they teach nothing about the declared class"
        )
        log.warning("%s", msg)
        r.warnings.append(msg)
    recorded = {
        **(read_concepts_file(paths["val_anno"]) if paths["val_anno"] else {}),
        **(read_concepts_file(paths["train_anno"]) if paths["train_anno"] else {}),
    }
    # Informational in the reward model (it scores a concept like any class): keep known parents only.
    parents: dict[str, str | None] = {c: p for c, p in recorded.items() if c in judged and p in real | judged}
    if r.train_real is not None:
        parents, new_warnings = _check_new_classes(
            judged, real, paths["train_anno"], paths["train"], {c: p for c, p in recorded.items() if p in real | judged}
        )
        r.warnings += new_warnings
    return ClassMap(sorted(real | judged), parents)


def load_reward_data(
    train_dir: str | Path | None,
    train_anno_dir: str | Path | None = None,
    val_dir: str | Path | None = None,
    val_anno_dir: str | Path | None = None,
    *,
    image_size: int | None = None,
    require_both: bool = False,
    feedback_fraction: float = 1.0,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> RewardData:
    """Read, check and decode every folder of a reward-model run."""
    paths = {
        k: Path(v) if v is not None else None
        for k, v in (("train", train_dir), ("train_anno", train_anno_dir), ("val", val_dir), ("val_anno", val_anno_dir))
    }
    if paths["train"] is None and paths["train_anno"] is None:
        raise ConfigError("give --train_dir (real images, CLASS/img.png) and/or --train_anno_dir (judged images)")
    image_size = _reward_image_size(paths, image_size)
    r = _read_inputs(paths, image_size, require_both, feedback_fraction, seed, skip_bad_images)
    class_map = _class_map(r, paths)
    loaded = [x for x in (r.train_real, r.train_fb, r.val_real, r.val_fb) if x is not None]
    size_warning = scan_sizes([p for x in loaded for p in x.paths], image_size)
    if size_warning:
        r.warnings.append(size_warning)
    real = set(r.train_real.classes) if r.train_real else set()
    data = RewardData(
        class_map=class_map,
        real_classes=sorted(real),
        image_size=image_size,
        channels=r.channels,
        train_real=_split(r.train_real, class_map, paths["train"], "training images") if r.train_real else None,
        train_feedback=_split(r.train_fb, class_map, paths["train_anno"], "training feedback") if r.train_fb else None,
        val_real=_split(r.val_real, class_map, paths["val"], "validation images") if r.val_real else None,
        val_feedback=_split(r.val_fb, class_map, paths["val_anno"], "validation feedback") if r.val_fb else None,
        warnings=r.warnings,
    )
    if data.val_real is not None:
        missing = sorted(set(class_map.name(int(i)) for i in data.val_real.classes) - real)
        if missing:
            # A validation class with no real training images has no wrong-class pairs to learn from.
            raise DataError(
                f"{paths['val'] / missing[0]}: class {missing[0]!r} has no real training images in "
                f"{paths['train']}; add them or remove the validation folder"
            )
    log.info("reward data: %s", {k: v for k, v in data.summary().items() if k != "warnings"})
    return data


# ---------------------------------------------------------------------------------------------
# Feedback straight from the review database


def export_feedback_db(url: str, dest: Path, rule: str = "majority") -> Path:
    """Export the judgements in the review database ``url`` into ``dest`` (feedback layout)."""
    try:
        from ..review.db import Store
        from ..review.export import export_feedback
    except ImportError as exc:  # the review extra (sqlalchemy) is not installed
        raise ConfigError(
            f"--train_anno_db needs the review app ({exc}); run `clinalign review export --db {url} --out DIR` "
            "where it is installed and pass --train_anno_dir DIR"
        ) from None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"--train_anno_db {url!r}: not a database URL; use e.g. sqlite:///feedback.db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).expanduser().is_file():
        # Opening a missing SQLite file would create an empty one and report "no judgements".
        raise DataError(
            f"--train_anno_db {url}: no such database file {parsed.database}; pass the --db of `clinalign review serve`"
        )
    try:
        summary = export_feedback(Store(url, create=False), dest, rule=rule)
    except SQLAlchemyError as exc:
        raise DataError(
            f"--train_anno_db {url}: cannot read judgements ({str(exc).splitlines()[0]}); is it a "
            "clinalign review database?"
        ) from None
    if summary.exported == 0:
        raise DataError(
            f"{url}: no decided judgements to train on (excluded: {summary.excluded or 'none'}); "
            "collect verdicts first, or try another --anno_rule"
        )
    log.info("exported %d judged images from %s (rule %s)", summary.exported, url, rule)
    return dest


def temporary_export(url: str, rule: str = "majority") -> tuple[tempfile.TemporaryDirectory, Path]:
    """Export into a fresh temporary directory; the caller keeps the handle alive while training."""
    tmp = tempfile.TemporaryDirectory(prefix="clinalign-feedback-")
    try:
        return tmp, export_feedback_db(url, Path(tmp.name) / "feedback", rule)
    except BaseException:
        tmp.cleanup()
        raise
