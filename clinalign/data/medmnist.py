"""MedMNIST ``.npz`` files -> image folders in the seed's naming convention.

``export_npz`` writes one PNG per image, named ``CLASS_%06d.png`` (the index is the image's
position in its split), so the result is an ordinary image folder every stage reads. ``download``
fetches an official npz (MedMNIST v3 on Zenodo) and checks its published MD5 before keeping it.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .naming import safe_class_name
from .transforms import atomic_writer, save_png

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SIZES = (28, 64, 128, 224)

#: Official download location (MedMNIST v3, medmnist/info.py); ``{name}`` is e.g. ``bloodmnist_64``.
URL_TEMPLATE = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"


@dataclass(frozen=True)
class MedMNISTInfo:
    classes: tuple[str, ...]  # index -> file-name-safe class name
    channels: int
    multi_label: bool = False


# Short class names, safe as file-name prefixes (no '_'). The official label strings are long
# sentences ("immature granulocytes(myelocytes, metamyelocytes and promyelocytes)"); these are
# the names a clinician would use, in the official index order.
INFO: dict[str, MedMNISTInfo] = {
    "pathmnist": MedMNISTInfo(
        (
            "adipose",
            "background",
            "debris",
            "lymphocytes",
            "mucus",
            "smooth-muscle",
            "normal-mucosa",
            "stroma",
            "tumor-epithelium",
        ),
        3,
    ),
    "chestmnist": MedMNISTInfo(
        (
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural",
            "hernia",
        ),
        1,
        multi_label=True,
    ),
    # HAM10000's standard abbreviations.
    "dermamnist": MedMNISTInfo(("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"), 3),
    "octmnist": MedMNISTInfo(("cnv", "dme", "drusen", "normal"), 1),
    "pneumoniamnist": MedMNISTInfo(("normal", "pneumonia"), 1),
    "retinamnist": MedMNISTInfo(("grade0", "grade1", "grade2", "grade3", "grade4"), 3),
    "breastmnist": MedMNISTInfo(("malignant", "normal-benign"), 1),
    "bloodmnist": MedMNISTInfo(
        ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"), 3
    ),
    "tissuemnist": MedMNISTInfo(
        (
            "collecting-duct",
            "distal-tubule",
            "glomerular-endothelial",
            "interstitial-endothelial",
            "leukocytes",
            "podocytes",
            "proximal-tubule",
            "thick-ascending-limb",
        ),
        1,
    ),
    **{
        flag: MedMNISTInfo(
            (
                "bladder",
                "femur-left",
                "femur-right",
                "heart",
                "kidney-left",
                "kidney-right",
                "liver",
                "lung-left",
                "lung-right",
                "pancreas",
                "spleen",
            ),
            1,
        )
        for flag in ("organamnist", "organcmnist", "organsmnist")
    },
}

#: Published MD5 of each official file (MedMNIST v3.0.2 medmnist/info.py), by (flag, size).
MD5: dict[tuple[str, int], str] = {
    ("pathmnist", 28): "a8b06965200029087d5bd730944a56c1",
    ("pathmnist", 64): "55aa9c1e0525abe5a6b9d8343a507616",
    ("pathmnist", 128): "ac42d08fb904d92c244187169d1fd1d9",
    ("pathmnist", 224): "2c51a510bcdc9cf8ddb2af93af1eadec",
    ("chestmnist", 28): "02c8a6516a18b556561a56cbdd36c4a8",
    ("chestmnist", 64): "9de6cd0b934ebb5b7426cfba5efbae16",
    ("chestmnist", 128): "db107e5590b27930b62dbaf558aebee3",
    ("chestmnist", 224): "45bd33e6f06c3e8cdb481c74a89152aa",
    ("dermamnist", 28): "0744692d530f8e62ec473284d019b0c7",
    ("dermamnist", 64): "b70a2f5635c6199aeaa28c31d7202e1f",
    ("dermamnist", 128): "2defd784463fa5243564e855ed717de1",
    ("dermamnist", 224): "8974907d8e169bef5f5b96bc506ae45d",
    ("octmnist", 28): "c68d92d5b585d8d81f7112f81e2d0842",
    ("octmnist", 64): "e229e9440236b774d9f0dfef9d07bdaf",
    ("octmnist", 128): "0a97e76651ace45c5d943ee3f65b63ae",
    ("octmnist", 224): "abc493b6d529d5de7569faaef2773ba3",
    ("pneumoniamnist", 28): "28209eda62fecd6e6a2d98b1501bb15f",
    ("pneumoniamnist", 64): "8f4eceb4ccffa70c672198ea285246c6",
    ("pneumoniamnist", 128): "05b46931834c231683c68f40c47b2971",
    ("pneumoniamnist", 224): "d6a3c71de1b945ea11211b03746c1fe1",
    ("retinamnist", 28): "bd4c0672f1bba3e3a89f0e4e876791e4",
    ("retinamnist", 64): "afda852cc34dcda56f86ad2b2457dbcc",
    ("retinamnist", 128): "e48e916a24454daf90583d4e6efb1a18",
    ("retinamnist", 224): "eae7e3b6f3fcbda4ae613ebdcbe35348",
    ("breastmnist", 28): "750601b1f35ba3300ea97c75c52ff8f6",
    ("breastmnist", 64): "742edef2a1fd1524b2efff4bd7ba9364",
    ("breastmnist", 128): "363e4b3f8d712e9b5de15470a2aaadf1",
    ("breastmnist", 224): "b56378a6eefa9fed602bb16d192d4c8b",
    ("bloodmnist", 28): "7053d0359d879ad8a5505303e11de1dc",
    ("bloodmnist", 64): "2b94928a2ae4916078ca51e05b6b800b",
    ("bloodmnist", 128): "adace1e0ed228fccda1f39692059dd4c",
    ("bloodmnist", 224): "b718ff6835fcbdb22ba9eacccd7b2601",
    ("tissuemnist", 28): "ebe78ee8b05294063de985d821c1c34b",
    ("tissuemnist", 64): "123ece2eba09d0aa5d698fda57103344",
    ("tissuemnist", 128): "61b955355d7425a89687b06cca3ce0c2",
    ("tissuemnist", 224): "b077128c4a949f0a4eb01517f9037b9c",
    ("organamnist", 28): "68e3f8846a6bd62f0c9bf841c0d9eacc",
    ("organamnist", 64): "2dcccc29b88e6da5a01161ef20cda288",
    ("organamnist", 128): "eeae80d0a227a8d099027e1b3cfd3b60",
    ("organamnist", 224): "50747347e05c87dd3aaf92c49f9f3170",
    ("organcmnist", 28): "b9ceb9546e10131b32923c5bbeaea2b1",
    ("organcmnist", 64): "3ce34a8724ea6f548e6db4744d03b6a9",
    ("organcmnist", 128): "773c1f009daa3fe5d9a2a201b2a7ed94",
    ("organcmnist", 224): "050f5e875dc056f6768abf94ec9995d1",
    ("organsmnist", 28): "9ab87b696fb54e2a387ebe992d6ed5f1",
    ("organsmnist", 64): "53a6d115339d874c25e309a994ff46d3",
    ("organsmnist", 128): "ded0c5fa01a95dc4978b956f613e9b8e",
    ("organsmnist", 224): "b354719e553fbbb2513d5533f52a4cb1",
}


def info(flag: str) -> MedMNISTInfo:
    key = flag.lower()
    if key not in INFO:
        hint = " (3D sets are volumes, not images)" if key.endswith("3d") else ""
        raise DataError(f"unknown MedMNIST set {flag!r}{hint}; supported: {', '.join(sorted(INFO))}")
    meta = INFO[key]
    if meta.multi_label:
        raise DataError(
            f"{key} is multi-label (an image can show several findings), which a single file-name "
            "class cannot express; choose a multi-class set such as bloodmnist or pathmnist"
        )
    return meta


def class_names(flag: str) -> list[str]:
    return [safe_class_name(name) for name in info(flag).classes]


def file_name(flag: str, size: int) -> str:
    """Official file name: ``bloodmnist.npz`` at 28 px, ``bloodmnist_64.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


# ---------------------------------------------------------------------------------------------
# Export


def _load_split(npz_path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise DataError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    try:
        # Our own file handle, so a corrupt archive cannot leak an open file.
        with open(npz_path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise DataError(f"{npz_path}: holds a single array, not a MedMNIST .npz archive")
            keys = list(data.keys())
            if f"{split}_images" not in keys or f"{split}_labels" not in keys:
                raise DataError(
                    f"{npz_path}: no '{split}_images'/'{split}_labels' arrays (found: {', '.join(keys)}); "
                    "pass a MedMNIST npz or another --split"
                )
            return data[f"{split}_images"], data[f"{split}_labels"]
    except FileNotFoundError:
        raise DataError(f"{npz_path}: file not found; pass the path of a MedMNIST .npz") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{npz_path}: not a readable .npz ({exc}); download it again") from None


def _check_arrays(npz_path: Path, split: str, flag: str, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    meta = info(flag)
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataError(
            f"{npz_path}: {split}_labels has {labels.shape[1]} columns (multi-label); "
            "a file-name class needs one label per image"
        )
    labels = labels.reshape(len(labels)) if labels.ndim else labels
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or len(images) != len(labels) or images.dtype != np.uint8:
        raise DataError(
            f"{npz_path}: expected uint8 {split}_images of shape (N, H, W[, 3]) and N labels, got "
            f"{images.dtype} {images.shape} and {labels.shape}; is it a 2D MedMNIST file?"
        )
    channels = 1 if images.ndim == 3 else images.shape[3]
    if channels != meta.channels:
        raise DataError(
            f"{npz_path}: images have {channels} channel(s) but {flag} has {meta.channels}; "
            "pass the --flag of the set this file comes from"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(meta.classes)):
        raise DataError(
            f"{npz_path}: labels range {labels.min()}..{labels.max()} but {flag} has "
            f"{len(meta.classes)} classes; pass the --flag of the set this file comes from"
        )
    return labels.astype(np.int64)


def _flag_from_file_name(npz_path: Path) -> str | None:
    stem = npz_path.name.lower()
    matches = [flag for flag in INFO if stem.startswith(flag)]
    return max(matches, key=len) if matches else None


def export_npz(
    npz_path: str | Path,
    split: str,
    out_dir: str | Path,
    layout: str = "prefix",
    flag: str = "bloodmnist",
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write one split of a MedMNIST npz as PNGs; returns how many were written.

    ``layout="prefix"``: ``OUT/CLASS_000123.png``; ``"imagenet"``: ``OUT/CLASS/CLASS_000123.png``.
    The number is the image's position in the split, so files can be traced back to the npz.
    Grayscale sets stay single-channel. ``progress(done, total)`` is called after each image.
    """
    if layout not in ("prefix", "imagenet"):
        raise DataError(f"--layout must be 'prefix' or 'imagenet', got {layout!r}")
    npz_path, out = Path(npz_path), Path(out_dir)
    flag = flag.lower()
    named = _flag_from_file_name(npz_path)
    if named is not None and named != flag:
        # A mislabelled export trains a model on wrong classes without any error; refuse instead.
        raise DataError(f"{npz_path}: file name says {named} but --flag is {flag}; pass --flag {named}")
    names = class_names(flag)
    images, labels = _load_split(npz_path, split)
    labels = _check_arrays(npz_path, split, flag, images, labels)
    for i, (img, label) in enumerate(zip(images, labels)):
        name = names[label]
        folder = out / name if layout == "imagenet" else out
        save_png(img, folder / f"{name}_{i:06d}.png")
        if progress is not None:
            progress(i + 1, len(labels))
    logger.info("exported %d %s %s images from %s to %s", len(labels), flag, split, npz_path, out)
    return int(len(labels))


def class_counts(npz_path: str | Path, split: str, flag: str = "bloodmnist") -> dict[str, int]:
    """Images per class in one split, without writing anything."""
    images, labels = _load_split(Path(npz_path), split)
    labels = _check_arrays(Path(npz_path), split, flag.lower(), images, labels)
    names = class_names(flag)
    counts = np.bincount(labels, minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


# ---------------------------------------------------------------------------------------------
# Download


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(
    flag: str,
    dest_dir: str | Path,
    size: int = 28,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Fetch the official ``flag`` npz at ``size`` px into ``dest_dir`` and verify its MD5.

    An existing file with the right checksum is reused. The download goes to a temp file that is
    renamed only after the checksum matches, so a broken transfer never looks like a dataset.
    ``progress(bytes_so_far, total_or_None)`` is called as data arrives.
    """
    flag = flag.lower()
    info(flag)
    if size not in SIZES:
        raise DataError(f"--size must be one of {', '.join(map(str, SIZES))} for MedMNIST, got {size}")
    expected = MD5[(flag, size)]
    dest = Path(dest_dir) / file_name(flag, size)
    if dest.exists() and md5sum(dest) == expected:
        logger.info("%s already downloaded and verified", dest)
        return dest
    url = URL_TEMPLATE.format(name=dest.stem)
    try:
        with atomic_writer(dest) as f, urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest, done = hashlib.md5(), 0
            while block := response.read(1 << 20):
                f.write(block)
                digest.update(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
            if digest.hexdigest() != expected:  # raising here discards the temp file
                raise DataError(
                    f"{url}: downloaded file has MD5 {digest.hexdigest()}, expected {expected}; "
                    "the download was corrupted or the file changed upstream: try again, or download "
                    "it by hand and pass --npz"
                )
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"{url}: download failed ({exc}); check the connection, or download it by hand and pass --npz"
        ) from None
    logger.info("downloaded %s (md5 verified)", dest)
    return dest
