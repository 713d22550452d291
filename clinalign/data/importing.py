"""Bring your own labelled images in: ``OUT/train``, ``OUT/val``, ``OUT/test`` in the seed's naming.

Sources (``SRC``):

- class folders (ImageNet layout): ``SRC/CLASS/**/image.jpg`` — the sub-folder of ``SRC`` names the class;
- seed-named folders: ``SRC/**/CLASS_anything.png`` (or a ``manifest.csv`` of ``ID,class`` in ``SRC``);
- a CSV with columns ``path,class`` (paths relative to the CSV's folder);
- a MedMNIST ``.npz`` (its own train/val/test splits are kept unless ``--split`` is given).

Every output file is named ``CLASS_<original stem>`` (a stem that already starts with ``CLASS_`` is
kept as it is), which is the one rule every stage reads. Without ``--size`` files are copied
byte for byte (a ``.jpg`` stays a ``.jpg``); with it each is decoded, its shorter side scaled to
``size`` and centre-cropped exactly as training reads it (:func:`clinalign.data.folder.fit_image`),
and written as PNG. The split is stratified per class and decided by a seeded hash of the output
name, so it does not depend on listing order and adding images never moves the others. Nothing is
written unless every image can be read: the folder appears whole (temp folder, then rename).
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from ..utils.config import option
from ..utils.fileio import atomic_directory, atomic_writer, write_json_atomic
from ..utils.splits import hash01
from .classmap import validate_class_name
from .folder import _DECODE_THREADS, SKIP_HINT, fit_image, load_image, open_image
from .medmnist import SPLITS, _check_arrays, _flag_from_file_name, _load_split, class_names, md5sum
from .naming import MANIFEST_NAME, declared_classes, is_image_file, list_images
from .pools import fingerprint
from .transforms import save_png

log = logging.getLogger(__name__)

IMPORT_FILE = "import.json"
IMPORT_CSV = "import.csv"  # one row per image: where it came from
LAYOUTS = ("auto", "folders", "names")
DEFAULT_SPLIT = "0.8/0.1/0.1"
_SHOWN = 10  # problems listed by name in one error message


@dataclass
class ImportConfig:
    """``clinalign data import`` settings."""

    split: str = option(
        "",
        "train/val/test fractions, e.g. 0.7/0.1/0.2 (empty: 0.8/0.1/0.1, and a MedMNIST .npz keeps its own splits)",
        metavar="TRAIN/VAL/TEST",
    )
    size: int = option(0, "scale the shorter side to SIZE px and centre-crop, as PNG (0: copy the files unchanged)")
    seed: int = option(0, "which images go to which split (stratified per class)")
    layout: str = option(
        "auto",
        "for a folder SRC: folders (class = sub-folder of SRC), names (class = file-name prefix before the "
        "first '_', or manifest.csv), auto (names when images or manifest.csv sit directly in SRC, else folders; "
        "asks when the two disagree)",
        choices=LAYOUTS,
    )
    flag: str = option("", "which MedMNIST set a .npz is, e.g. bloodmnist (empty: from its file name)")


@dataclass
class Item:
    """One image to import: its class, its output name and where its pixels come from."""

    cls: str
    name: str  # output file name, CLASS_<stem><ext>
    origin: str  # for import.csv and error messages: a path, or NPZ:split[index]
    path: Path | None = None
    pixels: np.ndarray | None = None
    given_split: str | None = None  # a MedMNIST npz's own split


@dataclass
class ImportResult:
    out: Path
    kind: str
    counts: dict[str, dict[str, int]]  # split -> class -> images
    record: dict = field(default_factory=dict)


def output_name(cls: str, stem: str, ext: str) -> str:
    return f"{stem}{ext}" if stem.startswith(f"{cls}_") else f"{cls}_{stem}{ext}"


def parse_split(text: str) -> tuple[float, float, float]:
    parts = text.split("/")
    try:
        fractions = tuple(float(p) for p in parts)
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] == 0:
        raise ConfigError(
            f"--split {text!r}: give three fractions train/val/test that sum to 1, train above 0, e.g. 0.8/0.1/0.1"
        )
    return fractions  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Reading a source


def read_source(src: str | Path, cfg: ImportConfig) -> tuple[str, list[Item]]:
    """``(kind, items)`` for a folder (``folders`` or ``names``), a ``path,class`` CSV or a MedMNIST npz."""
    src = Path(src)
    ext = ".png" if cfg.size else None
    if src.is_file() and src.suffix.lower() == ".npz":
        return "npz", _from_npz(src, cfg)
    if src.is_file() and src.suffix.lower() == ".csv":
        return "csv", _from_csv(src, ext)
    if src.is_file():
        raise DataError(f"{src}: not a folder, a .csv or a .npz; pass one of those")
    layout = cfg.layout if cfg.layout != "auto" else detect_layout(src)
    return layout, _from_folders(src, ext) if layout == "folders" else _from_names(src, ext)


def detect_layout(root: Path) -> str:
    """``names`` when images or a manifest.csv sit directly in ``root``, else ``folders``; asks when ambiguous.

    Ambiguous: every image sits in a sub-folder and its file name also declares a class that is
    not its folder (``pbc/train/basophil_1.jpg``): only the user knows which one is the class.
    """
    paths = list_images(root)
    top = [p for p in paths if p.parent == root]
    if top or (root / MANIFEST_NAME).exists():
        return "names"
    prefixes = [p.name.partition("_") for p in paths]
    if all(sep and prefix for prefix, sep, _ in prefixes):
        folders = {p.relative_to(root).parts[0] for p in paths}
        disagree = [p for p, (prefix, _, _) in zip(paths, prefixes) if prefix != p.relative_to(root).parts[0]]
        if disagree:
            declared = sorted({prefix for prefix, _, _ in prefixes})
            raise DataError(
                f"{root}: images sit in sub-folders ({', '.join(sorted(folders)[:_SHOWN])}) and their file "
                f"names also declare classes ({', '.join(declared[:_SHOWN])}), e.g. {disagree[0]}; pass "
                "--layout folders (class = sub-folder of SRC) or --layout names (class = file-name prefix)"
            )
    return "folders"


def _checked_class(cls: str, where: str) -> str:
    try:
        validate_class_name(cls)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None
    return cls


def _from_folders(root: Path, ext: str | None) -> list[Item]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = []
    for d in dirs:
        cls = _checked_class(d.name, str(d))
        files = sorted((p for p in d.rglob("*") if p.is_file() and is_image_file(p)), key=lambda p: p.as_posix())
        items += [Item(cls, output_name(cls, p.stem, ext or p.suffix), str(p), path=p) for p in files]
    if not items:
        raise DataError(f"{root}: no .jpg/.jpeg/.png images in class sub-folders; expected SRC/CLASS/image.jpg")
    return items


def _from_names(root: Path, ext: str | None) -> list[Item]:
    paths = list_images(root)
    classes = declared_classes(paths, root)
    return [
        Item(_checked_class(c, str(p)), output_name(c, p.stem, ext or p.suffix), str(p), path=p)
        for p, c in zip(paths, classes)
    ]


def _from_csv(path: Path, ext: str | None) -> list[Item]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = fields
            missing = [c for c in ("path", "class") if c not in fields]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(fields) or 'none'}); "
                    "the first row must name the columns path,class"
                )
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc})") from None
    items = []
    for line, row in rows:
        rel, cls = (row.get("path") or "").strip(), (row.get("class") or "").strip()
        if not rel or not cls:
            raise DataError(f"{path}: row {line} has an empty path or class; fill it in or delete the row")
        p = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        _checked_class(cls, f"{path}: row {line}")
        items.append(Item(cls, output_name(cls, p.stem, ext or p.suffix), str(p), path=p))
    if not items:
        raise DataError(f"{path}: no rows below the header; list one image per row as path,class")
    return items


def _from_npz(path: Path, cfg: ImportConfig) -> list[Item]:
    flag = (cfg.flag or _flag_from_file_name(path) or "").lower()
    if not flag:
        raise DataError(f"{path}: cannot tell which MedMNIST set this is from its name; pass --flag, e.g. bloodmnist")
    names = class_names(flag)
    items = []
    for split in SPLITS:
        try:
            images, labels = _load_split(path, split)
        except DataError:
            if split == "train":
                raise
            continue  # a file may hold only some splits
        labels = _check_arrays(path, split, flag, images, labels)
        images = images[..., 0] if images.ndim == 4 and images.shape[3] == 1 else images
        for i, (img, y) in enumerate(zip(images, labels)):
            cls = names[y]
            items.append(Item(cls, f"{cls}_{split}-{i:06d}.png", f"{path}:{split}[{i}]", pixels=img, given_split=split))
    return items


# ---------------------------------------------------------------------------------------------
# Splitting


def _quota(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    val, test = (int(n * f + 0.5) for f in fractions[1:])  # half up: the same count on every Python
    return n - val - test, val, test


def _least_per_class(fractions: tuple[float, float, float]) -> int:
    n = 1
    while any(f > 0 and k == 0 for f, k in zip(fractions, _quota(n, fractions))) or min(_quota(n, fractions)) < 0:
        n += 1
    return n


def assign_splits(items: list[Item], fractions: tuple[float, float, float] | None, seed: int) -> dict[str, list[Item]]:
    """Stratified per class, ranked by a seeded hash of the output name; ``None`` keeps an npz's own splits."""
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    if fractions is None:
        for item in items:
            out[item.given_split].append(item)
        return out
    by_class: dict[str, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.cls, []).append(item)
    least = _least_per_class(fractions)
    short = {c: len(v) for c, v in by_class.items() if len(v) < least}
    if short:
        detail = ", ".join(f"{c} has {n}" for c, n in sorted(short.items()))
        raise DataError(
            f"too few images for --split {'/'.join(f'{f:g}' for f in fractions)}: every class needs at least "
            f"{least} so that each split gets one ({detail}); add images, drop the class, or give a split "
            "of 0 to val/test"
        )
    for cls in sorted(by_class):
        ranked = sorted(by_class[cls], key=lambda i: (hash01(f"clinalign-import:{seed}", i.name), i.name))
        n_train, n_val, _ = _quota(len(ranked), fractions)
        out["train"] += ranked[:n_train]
        out["val"] += ranked[n_train : n_train + n_val]
        out["test"] += ranked[n_train + n_val :]
    return out


def check_output_names(items: list[Item]) -> None:
    """Every output name once across all splits (IDs are file names everywhere downstream)."""
    seen: dict[str, Item] = {}
    clashes = []
    for item in items:
        if item.name in seen:
            clashes.append(f"{item.origin} and {seen[item.name].origin} -> {item.name}")
        seen.setdefault(item.name, item)
    if clashes:
        raise DataError(
            f"{len(clashes)} output name(s) would be written twice ({'; '.join(clashes[:_SHOWN])}"
            f"{'; ...' if len(clashes) > _SHOWN else ''}); file names are image IDs, so rename the originals "
            "to have distinct names within a class"
        )


# ---------------------------------------------------------------------------------------------
# Writing


def _convert(item: Item, dest: Path, size: int) -> str | None:
    """Write one image; the reason it cannot be read, or None."""
    try:
        if item.pixels is not None:
            arr = fit_image(Image.fromarray(item.pixels), size) if size else item.pixels
            save_png(arr, dest)
        elif size:
            save_png(load_image(item.path, size), dest)
        else:
            open_image(item.path)  # a copied file must decode as well as a converted one
            shutil.copyfile(item.path, dest)
    except DataError as exc:  # the hint is training's flag; an import names every bad file instead
        return str(exc).replace(f"; replace or delete it, or {SKIP_HINT}", "")
    return None


def _write_all(tmp: Path, splits: dict[str, list[Item]], size: int, progress: Callable | None) -> None:
    jobs = [(item, tmp / split / item.name) for split, items in splits.items() for item in items]
    for split, items in splits.items():
        if items:
            (tmp / split).mkdir()
    bad = []
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        for done, reason in enumerate(pool.map(lambda job: _convert(*job, size), jobs), 1):
            if reason is not None:
                bad.append(reason)
            if progress is not None:
                progress(done, len(jobs))
    if bad:
        more = f" (and {len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else ""
        raise DataError(
            f"{len(bad)} of {len(jobs)} images cannot be read, so nothing was written ({'; '.join(bad[:_SHOWN])}"
            f"{more}); replace or delete them and rerun"
        )


def _record(src: Path, kind: str, cfg: ImportConfig, fractions, splits: dict[str, list[Item]], tmp: Path) -> dict:
    counts = {s: dict(sorted(Counter(i.cls for i in items).items())) for s, items in splits.items() if items}
    originals = [i.path for items in splits.values() for i in items if i.path is not None]
    source = {"path": str(src.resolve()), "kind": kind, "images": sum(len(v) for v in splits.values())}
    if src.is_file():
        source["md5"] = md5sum(src)
    if originals:
        source["fingerprint"] = fingerprint(originals)
    return {
        "source": source,
        "split": list(fractions) if fractions else "as in the npz",
        "seed": cfg.seed,
        "size": cfg.size or None,
        "classes": sorted({i.cls for items in splits.values() for i in items}),
        "counts": counts,
        "fingerprints": {s: fingerprint(sorted((tmp / s).iterdir())) for s in counts},
    }


def import_images(
    src: str | Path, out: str | Path, cfg: ImportConfig, progress: Callable[[int, int], None] | None = None
) -> ImportResult:
    """Read ``src``, split it, and write ``out/{train,val,test}``, ``import.json`` and ``import.csv``."""
    src, out = Path(src), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; pass a new output folder")
    if cfg.size < 0:
        raise ConfigError(f"--size {cfg.size}: give a positive size in pixels, or 0 to copy the files unchanged")
    kind, items = read_source(src, cfg)
    fractions = parse_split(cfg.split or DEFAULT_SPLIT) if kind != "npz" or cfg.split else None
    check_output_names(items)
    splits = assign_splits(items, fractions, cfg.seed)
    with atomic_directory(out) as tmp:
        _write_all(tmp, splits, cfg.size, progress)
        record = _record(src, kind, cfg, fractions, splits, tmp)
        write_json_atomic(tmp / IMPORT_FILE, record)
        with atomic_writer(tmp / IMPORT_CSV, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["ID", "class", "split", "source"])
            for split, members in splits.items():
                writer.writerows([i.name, i.cls, split, i.origin] for i in sorted(members, key=lambda i: i.name))
    log.info("imported %d images from %s (%s) into %s", len(items), src, kind, out)
    return ImportResult(out, kind, record["counts"], record)
