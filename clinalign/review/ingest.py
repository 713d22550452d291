"""Putting things into the feedback store: batches of images, reviewers and admins, concepts."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import secrets
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy import func, insert, select, text

from ..errors import ClinalignError, DataError
from . import db
from .db import ADMIN, QC, REFERENCE, REVIEWER, SAMPLE, Batch, Blob, Concept, Image, Slot, Store, User
from .problems import Conflict, Invalid, NotFound
from .tokens import hash_token, new_token

log = logging.getLogger(__name__)

# The paper's criteria for judging a blood-cell image (Sun et al., 2023): the default per-class
# checklist of reason tags.
DEFAULT_REASONS = [
    "cell size",
    "nucleus shape",
    "chromatin pattern",
    "cytoplasm colour",
    "granules",
    "inclusions",
]
MAX_IMAGE_BYTES = 20 * 1024 * 1024
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 .@+-]{0,99}$")
CONCEPT_RE = re.compile(r"^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*$")
BATCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def new_uid() -> str:
    # Opaque, unguessable IDs: a reviewer learns nothing (order, QC status, file name) from them.
    return secrets.token_hex(12)


# ---------------------------------------------------------------------------------------------
# Images


@dataclass
class LoadedImage:
    path: Path
    data: bytes
    media_type: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def load_image(path: Path) -> LoadedImage:
    """Read and verify an image file; the format comes from its bytes, not its extension."""
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise DataError(f"{path}: {size} bytes is larger than the {MAX_IMAGE_BYTES} byte limit")
        data = path.read_bytes()
        with PILImage.open(io.BytesIO(data)) as im:
            im.verify()
        with PILImage.open(io.BytesIO(data)) as im:
            fmt, (w, h) = im.format, im.size
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (no image format recognised)") from None
    except Exception as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if fmt not in FORMATS:
        raise DataError(f"{path}: {fmt} images are not supported; convert it to PNG or JPEG")
    return LoadedImage(path, data, FORMATS[fmt], w, h)


def _listed(items: list[str], most: int = 10) -> str:
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most} more"


def load_images(paths: list[Path]) -> list[LoadedImage]:
    """Every image, or one DataError naming every file that is not a readable PNG/JPEG."""
    loaded, bad = [], []
    for p in paths:
        try:
            loaded.append(load_image(p))
        except DataError as exc:
            bad.append(str(exc))
    if bad:
        raise DataError(
            f"{len(bad)} of {len(paths)} files are not readable PNG or JPEG images: {_listed(bad)}; "
            "remove or replace them"
        )
    return loaded


def conform(img: LoadedImage, size: tuple[int, int], media_type: str) -> LoadedImage:
    """Re-encode a real (QC) image like the synthetic samples: same size, same format, no
    metadata, so nothing but the picture itself tells the two apart."""
    with PILImage.open(io.BytesIO(img.data)) as im:
        im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, PILImage.LANCZOS)
        out = io.BytesIO()
        im.save(out, format="PNG" if media_type == "image/png" else "JPEG", quality=95)
    return LoadedImage(img.path, out.getvalue(), media_type, size[0], size[1])


def check_class_name(name: str, source: Path) -> str:
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or len(name) > 200:
        raise DataError(f"{source}: class {name!r} cannot be used as a folder name; rename it")
    return name


REFERENCE_LAYOUTS = ("auto", "folders", "prefix")


def _prefix(name: str) -> str:
    prefix, sep, _ = name.partition("_")
    return prefix if sep else ""


def prefix_classes(paths: list[Path], root: Path) -> list[str]:
    """Classes from ``root/manifest.csv`` or the file-name prefix; one error naming every file
    that has neither, with the fix add-batch offers."""
    from ..data.naming import MANIFEST_NAME, read_manifest

    manifest = read_manifest(root / MANIFEST_NAME) if (root / MANIFEST_NAME).exists() else {}
    classes = [manifest.get(p.name) or _prefix(p.name) for p in paths]
    missing = [str(p.relative_to(root)) for p, c in zip(paths, classes, strict=True) if not c]
    if missing:
        raise DataError(
            f"{root}: {len(missing)} of {len(paths)} images have no class prefix: {_listed(missing)}; name each "
            f"CLASS_anything.png (the class is the text before the first '_'), or list them in "
            f"{root / MANIFEST_NAME} with the columns ID,class"
        )
    return [check_class_name(c, p) for c, p in zip(classes, paths, strict=True)]


def reference_classes(paths: list[Path], root: Path, layout: str = "auto") -> list[str]:
    """Classes of real images: ``folders`` = ImageNet layout ``CLASS/img.png``; ``prefix`` = the
    seed's ``CLASS_*.png`` (any depth). ``auto`` picks folders when every image sits exactly one
    folder below ``root``, else prefixes."""
    if layout not in REFERENCE_LAYOUTS:
        raise ClinalignError(f"--reference_layout {layout!r}: use one of {', '.join(REFERENCE_LAYOUTS)}")
    rel = [p.relative_to(root) for p in paths]
    one_deep = all(len(r.parts) == 2 for r in rel)
    if layout == "folders" and not one_deep:
        bad = next(r for r in rel if len(r.parts) != 2)
        raise DataError(f"{root / bad}: not in a class folder; --reference_layout folders expects CLASS/image.png")
    if layout == "folders" or (layout == "auto" and one_deep):
        return [check_class_name(r.parts[0], p) for r, p in zip(rel, paths, strict=True)]
    return prefix_classes(paths, root)


# ---------------------------------------------------------------------------------------------
# Batches


@dataclass
class BatchSummary:
    name: str
    samples: int
    qc: int
    references: int
    per_image: int
    classes: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        per_class = ", ".join(f"{c}: {n}" for c, n in sorted(self.classes.items()))
        return [
            f"batch {self.name!r}: {self.samples} synthetic images ({per_class}), "
            f"{self.qc} QC items, {self.references} reference images, "
            f"{self.per_image} reviewer(s) per image",
        ]


def parse_checklist(path: Path | None) -> dict[str, list[str]]:
    """``{"*": [...], "CLASS": [...]}``; ``*`` is the default for classes not listed."""
    checklist: dict[str, list[str]] = {"*": list(DEFAULT_REASONS)}
    if path is None:
        return checklist
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the checklist ({exc}); give a JSON object") from exc
    if not isinstance(raw, dict):
        raise DataError(f'{path}: expected a JSON object like {{"*": ["cell size"], "neutrophil": [...]}}')
    for cls, tags in raw.items():
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise DataError(f"{path}: {cls!r} must map to a list of strings")
        for t in tags:
            if not t.strip() or ";" in t or len(t) > 60:
                raise DataError(f"{path}: reason tag {t!r} must be 1-60 characters without ';'")
        checklist[str(cls)] = [t.strip() for t in tags]
    return checklist


def checklist_for(batch: Batch, cls: str) -> list[str]:
    checklist = json.loads(batch.checklist)
    return checklist.get(cls, checklist.get("*", []))


def _pick_qc(
    pool: dict[str, list[LoadedImage]], wanted_classes: set[str], n: int, rng: random.Random
) -> list[tuple[str, LoadedImage]]:
    """Draw ``n`` real images, round-robin over classes so no class dominates the QC set."""
    classes = sorted(c for c in pool if c in wanted_classes and pool[c])
    if not classes:
        if pool:
            log.warning("no reference class matches a sample class; QC items use all reference classes")
        classes = sorted(c for c in pool if pool[c])
    queues = {c: rng.sample(pool[c], len(pool[c])) for c in classes}
    picked: list[tuple[str, LoadedImage]] = []
    while len(picked) < n and any(queues.values()):
        for c in rng.sample(classes, len(classes)):
            if queues[c] and len(picked) < n:
                picked.append((c, queues[c].pop()))
    if len(picked) < n:
        log.warning("only %d real images available for QC, wanted %d", len(picked), n)
    return picked


def _add_blob(s, img: LoadedImage, seen: set[str]) -> str:
    sha = img.sha256
    if sha not in seen and s.get(Blob, sha) is None:
        s.add(Blob(sha256=sha, media_type=img.media_type, width=img.width, height=img.height, data=img.data))
    seen.add(sha)
    return sha


def _check_batch_args(name: str, per_image: int, qc_share: float) -> None:
    if not BATCH_RE.match(name):
        raise ClinalignError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (max 100)")
    if per_image < 1:
        raise ClinalignError(f"--per_image {per_image}: must be at least 1")
    if not 0.0 <= qc_share < 0.9:
        raise ClinalignError(f"--qc_share {qc_share}: must be in [0, 0.9)")


@dataclass
class _References:
    root: Path
    strips: dict[str, list[LoadedImage]] = field(default_factory=dict)  # shown beside each image
    pool: dict[str, list[LoadedImage]] = field(default_factory=dict)  # QC items are drawn from here


def _load_references(root: Path, layout: str, strip: int, rng: random.Random) -> _References:
    from ..data.naming import list_images

    paths = list_images(root)
    grouped: dict[str, list[LoadedImage]] = defaultdict(list)
    for img, c in zip(load_images(paths), reference_classes(paths, root, layout), strict=True):
        grouped[c].append(img)
    refs = _References(root)
    for c, imgs in sorted(grouped.items()):
        imgs = rng.sample(imgs, len(imgs))
        refs.strips[c] = imgs[:strip]
        # Keep QC items out of the reference strip when there are enough images, so a
        # reviewer never sees the "synthetic" image beside its identical real twin.
        refs.pool[c] = imgs[strip:] or imgs
    return refs


def _qc_items(
    refs: _References | None, loaded: list[LoadedImage], classes: list[str], qc_share: float, rng: random.Random
) -> list[tuple[str, LoadedImage]]:
    if qc_share <= 0:
        return []
    if refs is None or not refs.pool:
        log.warning("no --reference folder: the batch has no QC items")
        return []
    # share of the queue: n_qc / (n_samples + n_qc) = qc_share
    n_qc = round(qc_share * len(loaded) / (1.0 - qc_share))
    picked = _pick_qc(refs.pool, set(classes), n_qc, rng) if n_qc else []
    if not picked:
        return []
    size = Counter((i.width, i.height) for i in loaded).most_common(1)[0][0]
    media = Counter(i.media_type for i in loaded).most_common(1)[0][0]
    return [(c, conform(img, size, media)) for c, img in picked]


QueueEntry = tuple[str, str, LoadedImage, str]  # kind, class, image, file name


def _insert_batch(store: Store, batch: Batch, queue: list[QueueEntry], refs: _References | None) -> int:
    """One transaction: the batch, its images (queue order, then references) and their slots."""
    with store.write() as s:
        if s.scalar(select(Batch.id).where(Batch.name == batch.name)) is not None:
            raise Conflict(f"batch {batch.name!r} already exists in {store.safe_url}; choose another --name")
        s.add(batch)
        s.flush()
        seen: set[str] = set()

        def image(kind: str, cls: str, img: LoadedImage, fname: str, pos: int) -> Image:
            sha = _add_blob(s, img, seen)
            return Image(
                uid=new_uid(),
                batch_id=batch.id,
                kind=kind,
                filename=fname,
                declared_class=cls,
                blob_sha=sha,
                position=pos,
            )

        # Inserted in queue order so image IDs rise with queue position: claims follow the ID.
        images = [image(kind, cls, img, fname, pos) for pos, (kind, cls, img, fname) in enumerate(queue)]
        strips = refs.strips.items() if refs else []
        refs_added = [
            image(REFERENCE, cls, img, str(img.path.relative_to(refs.root)), pos)  # type: ignore[union-attr]
            for cls, imgs in strips
            for pos, img in enumerate(imgs)
        ]
        s.add_all(images + refs_added)
        s.flush()
        slots = [{"image_id": im.id, "slot_no": k} for im in images for k in range(batch.per_image)]
        if slots:
            s.execute(insert(Slot), slots)
    store.static.forget_counts()  # new free slots
    if store.dialect == "postgresql":
        # Fresh statistics now, not whenever autovacuum gets round to it: with the planner's guess
        # for an empty table, the progress query took 18 ms instead of 0.6 ms on 40,000 slots.
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE review_images, review_slots, review_verdicts"))
    return len(refs_added)


def add_batch(
    store: Store,
    samples: str | Path,
    *,
    reference: str | Path | None = None,
    per_image: int = 1,
    name: str | None = None,
    qc_share: float = 0.1,
    strip: int = 6,
    checklist: dict[str, list[str]] | None = None,
    seed: int = 0,
    reference_layout: str = "auto",
) -> BatchSummary:
    """Load a folder of synthetic images (and optional real references) as one review batch.

    Everything is inserted in one transaction: a failure leaves no half-loaded batch behind.
    """
    # Imported here: the clinalign.data package pulls in torch, which the web server never needs.
    from ..data.naming import check_unique_names, list_images

    samples = Path(samples)
    name = name or samples.resolve().name
    _check_batch_args(name, per_image, qc_share)
    rng = random.Random(seed)
    paths = list_images(samples)
    classes = prefix_classes(paths, samples)
    why = "image IDs (file names) must be unique in a batch because the reward CSV refers to images by file name"
    check_unique_names(paths, why)
    loaded = load_images(paths)
    refs = _load_references(Path(reference), reference_layout, strip, rng) if reference is not None else None
    if refs is not None and set(classes) - set(refs.strips):
        log.warning("no reference images for class(es) %s", ", ".join(sorted(set(classes) - set(refs.strips))))
    qc_items = _qc_items(refs, loaded, classes, qc_share, rng)
    queue: list[QueueEntry] = [(SAMPLE, c, img, img.path.name) for c, img in zip(classes, loaded, strict=True)]
    queue += [(QC, c, img, str(img.path.relative_to(refs.root))) for c, img in qc_items]  # type: ignore[union-attr]
    rng.shuffle(queue)
    batch = Batch(
        name=name,
        per_image=per_image,
        qc_share=qc_share,
        checklist=json.dumps(checklist or {"*": list(DEFAULT_REASONS)}),
        created_at=db.utcnow(),
    )
    n_refs = _insert_batch(store, batch, queue, refs)
    summary = BatchSummary(name, len(loaded), len(qc_items), n_refs, per_image, dict(Counter(classes)))
    log.debug("added %s", summary.lines()[0])
    return summary


def get_batch(s, name: str) -> Batch:
    batch = s.scalar(select(Batch).where(Batch.name == name))
    if batch is None:
        known = ", ".join(s.scalars(select(Batch.name).order_by(Batch.id))) or "none yet"
        raise NotFound(f"no batch named {name!r} (batches: {known})")
    return batch


# ---------------------------------------------------------------------------------------------
# People


def add_user(store: Store, name: str, role: str = REVIEWER, *, rotate: bool = False) -> str:
    """Create a reviewer or admin and return their token (shown once; only its hash is kept).

    ``rotate`` issues a new token for an existing person, which revokes the old link.
    """
    if role not in (REVIEWER, ADMIN):
        raise ValueError(role)
    if not NAME_RE.match(name):
        raise Invalid(f"name {name!r}: use 1-100 letters, digits, spaces or . @ + - (start with a letter or digit)")
    token = new_token()
    with store.write() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            s.add(User(name=name, role=role, token_hash=hash_token(token), created_at=db.utcnow()))
        elif not rotate:
            raise Conflict(
                f"{user.role} {name!r} already exists; pass --rotate to issue a new link (revokes the old one)"
            )
        elif user.role != role:
            raise Conflict(f"{name!r} is {_a(user.role)}, not {_a(role)}")
        else:
            user.token_hash = hash_token(token)
    return token


def _a(role: str) -> str:
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


def private_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/r/{token}"


# ---------------------------------------------------------------------------------------------
# Concepts


def add_concept(store: Store, batch_name: str, name: str, parent: str) -> Concept:
    """A finer class (e.g. ``neutrophil-band``) a reviewer may pick on images of ``parent``."""
    if "_" in name or not CONCEPT_RE.match(name):
        raise Invalid(
            f"concept {name!r}: use letters and digits joined by '-' (never '_', which separates "
            "the class prefix in file names), e.g. neutrophil-band"
        )
    with store.write() as s:
        batch = get_batch(s, batch_name)
        classes = set(
            s.scalars(select(Image.declared_class).where(Image.batch_id == batch.id, Image.kind == SAMPLE).distinct())
        )
        if parent not in classes:
            raise Invalid(f"parent {parent!r} is not a class of batch {batch_name!r} ({', '.join(sorted(classes))})")
        if name in classes:
            raise Invalid(f"concept {name!r} is already a class of batch {batch_name!r}")
        exists = s.scalar(
            select(func.count()).select_from(Concept).where(Concept.batch_id == batch.id, Concept.name == name)
        )
        if exists:
            raise Conflict(f"concept {name!r} already exists in batch {batch_name!r}")
        concept = Concept(batch_id=batch.id, name=name, parent=parent, created_at=db.utcnow())
        s.add(concept)
    return concept
