"""How images are found on disk and what class they declare.

The seed's convention: an image folder is searched recursively for .jpg/.jpeg/.png (any case);
the class of an image is its file name's prefix before the first ``_``; directory names are
ignored. A ``manifest.csv`` (columns ``ID,class``) beside the images overrides the prefix, so
sample folders whose names cannot carry the class still work.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
MANIFEST_NAME = "manifest.csv"


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(root: str | Path) -> list[Path]:
    """All image files below ``root``, sorted by their path relative to it (deterministic)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder does not exist; pass the folder that holds your images")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, not a folder; pass the folder that holds your images")
    paths = sorted(
        (p for p in root.rglob("*") if p.is_file() and is_image_file(p)), key=lambda p: p.relative_to(root).as_posix()
    )
    if not paths:
        raise DataError(
            f"{root}: no .jpg/.jpeg/.png images found (searched recursively); "
            "point to the folder that holds your images"
        )
    return paths


def label_of(path: str | Path) -> str:
    """The class a file name declares: its prefix before the first ``_``."""
    name = Path(path).name
    prefix, sep, _ = name.partition("_")
    if not sep or not prefix:
        raise DataError(
            f"{path}: file name has no class prefix; name it CLASS_anything{Path(path).suffix} (the class is the "
            "text before the first '_'); images kept in class folders come in with `clinalign data import SRC OUT "
            "--layout folders`, and an unconditional model takes --class_cond False"
        )
    return prefix


def read_manifest(path: str | Path) -> dict[str, str]:
    """``ID -> class`` from a manifest.csv (columns ``ID`` and ``class``; others ignored)."""
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "ID" not in fields or "class" not in fields:
            raise DataError(
                f"{path}: expected columns 'ID' and 'class', found {fields}; "
                "fix the header or delete the file to use file-name prefixes"
            )
        return {row["ID"]: row["class"] for row in reader}


def check_unique_names(paths: list[Path], why: str) -> None:
    """DataError naming both files when two paths share a file name (an image's ID); ``why`` says what needs it."""
    by_name: dict[str, Path] = {}
    for p in paths:
        if p.name in by_name:
            raise DataError(f"{p}: same file name as {by_name[p.name]}; {why}")
        by_name[p.name] = p


def declared_classes(paths: list[Path], root: str | Path | None = None) -> list[str]:
    """The declared class of each image: from ``root/manifest.csv`` when present, else the prefix."""
    manifest: dict[str, str] = {}
    if root is not None and (Path(root) / MANIFEST_NAME).exists():
        manifest = read_manifest(Path(root) / MANIFEST_NAME)
    return [manifest.get(p.name) or label_of(p) for p in paths]


def safe_class_name(name: str) -> str:
    """Make a label usable as a file-name prefix: no '_' (the prefix separator), no path characters."""
    cleaned = name.strip().lower()
    for ch in (" ", "_", "/", "\\", ",", "(", ")", "'", ":"):
        cleaned = cleaned.replace(ch, "-")
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "-")
    return cleaned.strip("-") or "unnamed"
