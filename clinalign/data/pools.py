"""Three disjoint pools of real images: the generator's, the expert's and the oracle's.

A pathologist has seen years of cells the generator never saw, and the evaluation must not be
judged by anyone who learnt from either. So the real training images are split into

- **G**, the generator's training set: ``per_class`` images of every class, as in the paper's
  small-data regime (128 per class), chosen by a seeded hash of the file name;
- **E**, the simulated expert's experience: half of the rest;
- **O**, the evaluation oracle's: the other half of the rest,

plus the separate test split (FID, TSTR). ``label_noise`` mislabels a share of G per class (the
files say one class, the cell is another's), as clinical sets carry it; E and O stay clean, as an
expert's experience is. E and O follow the name-hash halves that the expert and
the oracle already train on (:func:`clinalign.utils.splits.half_of`), so giving the expert E and
the oracle O keeps both on their own half. Each pool is written as a folder of links to the
original files, and ``pools.json`` records every pool's size, class counts and fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..utils.fileio import atomic_directory, write_json_atomic
from ..utils.splits import HALF_EXPERT, half_of, hash01
from .naming import check_unique_names, declared_classes, list_images

log = logging.getLogger(__name__)

POOLS_FILE = "pools.json"
POOL_NAMES = ("G", "E", "O")


@dataclass
class Pools:
    """The three pools as lists of files (absolute paths to the originals)."""

    G: list[Path]
    E: list[Path]
    O: list[Path]  # noqa: E741 - the issue's and the paper's name
    per_class: int
    seed: int
    source: Path
    # G's mislabelled files: original name -> the name it is written under (another class's prefix)
    renamed: dict[str, str] = field(default_factory=dict)
    label_noise: float = 0.0

    def written_name(self, f: Path) -> str:
        return self.renamed.get(f.name, f.name)

    def folders(self, root: Path) -> dict[str, Path]:
        return {name: Path(root) / name for name in POOL_NAMES}

    def check_disjoint(self) -> None:
        """AssertionError if any file name is in two pools (a judge that saw the generator's data)."""
        names = {p: {f.name for f in getattr(self, p)} for p in POOL_NAMES}
        for a, b in (("G", "E"), ("G", "O"), ("E", "O")):
            both = names[a] & names[b]
            if both:
                raise AssertionError(f"pools {a} and {b} share {len(both)} image(s), e.g. {sorted(both)[0]}")

    def summary(self) -> dict:
        out = {"source": str(self.source), "per_class": self.per_class, "seed": self.seed}
        for name in POOL_NAMES:
            files = getattr(self, name)
            names = [Path(self.written_name(f)) for f in files]
            out[name] = {
                "n": len(files),
                "classes": dict(sorted(Counter(declared_classes(names)).items())),
                "fingerprint": fingerprint(files, self.renamed),
            }
        if self.label_noise:
            out |= {
                "label_noise": self.label_noise,
                "mislabelled_per_class": len(self.renamed) // len(out["G"]["classes"]),
            }
        return out


def fingerprint(files: list[Path], renamed: dict[str, str] | None = None) -> str:
    """sha256 over the sorted file names (as written) and their sizes: the same pool gives the same print anywhere."""
    renamed = renamed or {}
    h = hashlib.sha256()
    for name, size in sorted((renamed.get(f.name, f.name), f.stat().st_size) for f in files):
        h.update(f"{name}\t{size}\n".encode())
    return h.hexdigest()[:16]


def split_pools(train_dir: str | Path, per_class: int, seed: int = 0, label_noise: float = 0.0) -> Pools:
    """G (``per_class`` per class, stratified and seeded), E and O (the rest, by name-hash half).

    ``label_noise``: the share of G's images per class written under another class's name. The
    files of G, E and O stay the same (so do E's and O's prints and the judges trained on them):
    each class hands its last ``round(per_class * label_noise)`` images of G to the other classes
    in turn, and receives as many, so every class keeps ``per_class``. The original name follows the
    new class (``eosinophil_basophil_BA_101611.jpg``), so the true class is the subtype token.
    """
    if not 0.0 <= label_noise < 1.0:
        raise DataError(f"--label_noise must be in [0, 1), got {label_noise}")
    source = Path(train_dir)
    files = list_images(source)
    check_unique_names(files, "pools are keyed by file name; rename one of them")
    classes = declared_classes(files, source)
    by_class: dict[str, list[Path]] = {}
    for f, c in zip(files, classes):
        by_class.setdefault(c, []).append(f)
    if per_class < 1:
        raise DataError(f"--real_per_class must be at least 1, got {per_class}")
    short = {c: len(fs) for c, fs in by_class.items() if len(fs) <= per_class}
    if short:
        detail = ", ".join(f"{c} has {n}" for c, n in sorted(short.items()))
        raise DataError(
            f"{source}: --real_per_class {per_class} leaves no image of some classes for the expert "
            f"and the oracle ({detail}); pass --real_per_class below {min(short.values())}"
        )
    names = sorted(by_class)
    wrong = round(per_class * label_noise)
    if wrong and len(names) < 2:
        raise DataError(f"{source}: --label_noise needs at least 2 classes")
    g: list[Path] = []
    renamed: dict[str, str] = {}
    for ci, c in enumerate(names):
        ranked = sorted(by_class[c], key=lambda p: hash01(f"clinalign-pool-G:{seed}", p.name))
        g += ranked[:per_class]
        for i, f in enumerate(ranked[per_class - wrong : per_class]):
            # offsets 1..k-1 in turn: every class receives exactly `wrong` images from the others
            other = names[(ci + 1 + i % (len(names) - 1)) % len(names)]
            renamed[f.name] = f"{other}_{f.name}"
    clash = set(renamed.values()) & {f.name for f in files}
    if clash:
        raise DataError(f"{source}: a mislabelled name is taken by another file ({sorted(clash)[0]}); rename that file")
    chosen = {p.name for p in g}
    rest = [f for f in files if f.name not in chosen]
    e = [f for f in rest if half_of(f.name) == HALF_EXPERT]
    o = [f for f in rest if half_of(f.name) != HALF_EXPERT]
    pools = Pools(sorted(g), e, o, per_class, seed, source, renamed, label_noise if wrong else 0.0)
    pools.check_disjoint()
    return pools


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copyfile(src, dest)


def write_pools(pools: Pools, root: str | Path) -> dict[str, Path]:
    """``root/G``, ``root/E``, ``root/O`` (links to the originals) and ``root/pools.json``.

    An existing set written with the same pools is reused; one from other pools is an error.
    """
    root = Path(root)
    summary = pools.summary()
    folders = pools.folders(root)
    record = root / POOLS_FILE
    if record.exists():
        old = json.loads(record.read_text())
        if all(old.get(p, {}).get("fingerprint") == summary[p]["fingerprint"] for p in POOL_NAMES) and all(
            f.is_dir() for f in folders.values()
        ):
            return folders
        raise DataError(
            f"{root}: holds pools from other data or settings ({record}); use a new output folder or delete this one"
        )
    root.mkdir(parents=True, exist_ok=True)
    for name, folder in folders.items():
        with atomic_directory(folder) as tmp:
            for f in getattr(pools, name):
                _link(f, tmp / pools.written_name(f))
    write_json_atomic(record, summary)
    log.info("real pools in %s: G %d, E %d, O %d images", root, len(pools.G), len(pools.E), len(pools.O))
    return folders


def read_pools(root: str | Path) -> dict:
    """The ``pools.json`` summary of a pool folder (sizes, class counts, fingerprints)."""
    path = Path(root) / POOLS_FILE
    if not path.exists():
        raise DataError(f"{root}: no {POOLS_FILE}; create the pools with clinalign data pools")
    return json.loads(path.read_text())


def write_toy_pools(
    root: str | Path,
    classes: int,
    per_class: int,
    expert_per_class: int,
    oracle_per_class: int,
    test_per_class: int,
    size: int,
    seed: int = 0,
    label_noise: float = 0.0,
) -> dict[str, Path]:
    """Toy-cell pools: G, E, O and test drawn with four seeds (an expert's experience is fresh cells).

    File names carry a pool suffix (``_g``, ``_e``, ``_o``, ``_t``) so the pools never share an ID.
    ``label_noise``: the share of G's images per class that are another class's cell under this
    class's name (``_gx``; :func:`clinalign.data.toy.write_mislabelled`); E, O and test stay clean,
    as an expert's experience is. Reuses a complete earlier set written with the same settings.
    """
    from .toy import generate, write_mislabelled

    if not 0.0 <= label_noise < 1.0:
        raise DataError(f"--label_noise must be in [0, 1), got {label_noise}")
    root = Path(root)
    wrong = round(per_class * label_noise)
    plan = {
        "G": (per_class, "_g"),
        "E": (expert_per_class, "_e"),
        "O": (oracle_per_class, "_o"),
        "test": (test_per_class, "_t"),
    }
    folders = {name: root / name for name in plan}
    if (root / POOLS_FILE).exists() and all(f.is_dir() for f in folders.values()):
        before = read_pools(root).get("label_noise", 0.0)
        if before != label_noise:
            raise DataError(
                f"{root} holds toy pools with label noise {before}, not {label_noise}: "
                "give a new output folder to draw other pools"
            )
        return folders
    for k, (name, (n, suffix)) in enumerate(plan.items()):
        with atomic_directory(folders[name]) as tmp:
            clean = n - wrong if name == "G" else n
            generate(tmp, classes=classes, per_class=clean, size=size, seed=seed + k, suffix=suffix)
            if name == "G" and wrong:
                write_mislabelled(tmp, classes, wrong, size, seed + len(plan), suffix="_gx")
    pools = Pools(
        list_images(folders["G"]),
        list_images(folders["E"]),
        list_images(folders["O"]),
        per_class,
        seed,
        Path(f"toy cells ({classes} classes, {size} px)"),
    )
    pools.check_disjoint()
    summary = pools.summary()
    if wrong:
        summary |= {"label_noise": label_noise, "mislabelled_per_class": wrong}
    write_json_atomic(root / POOLS_FILE, summary)
    return folders
