"""Helpers shared by the review tests (imported by name; fixtures live in conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageDraw

from clinalign.review.db import Store
from clinalign.review.ingest import add_batch, add_user


def make_png(path: Path, colour: tuple[int, int, int], size: int = 32) -> Path:
    """A cartoon blood cell: tinted cytoplasm and a dark nucleus on a pale background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = PILImage.new("RGB", (size, size), (236, 226, 232))
    draw = ImageDraw.Draw(im)
    m = size // 8
    draw.ellipse((m, m, size - m, size - m), fill=colour)
    c = size // 2
    r = size // 5
    draw.ellipse((c - r, c - r - 1, c + r - 2, c + r), fill=(88, 38, 128))
    im.save(path)
    return path


def make_samples(folder: Path, classes: tuple[str, ...] = ("neutrophil", "lymphocyte"), n: int = 3) -> Path:
    """``CLASS_00000i.png`` files, each with its own colour (so none share a content hash)."""
    k = 0
    for cls in classes:
        for i in range(n):
            k += 1
            make_png(folder / f"{cls}_{i:06d}.png", (214, 150 + (k * 37) % 80, 170 + (k * 53) % 70))
    return folder


def make_reference(folder: Path, classes: tuple[str, ...] = ("neutrophil", "lymphocyte"), n: int = 8) -> Path:
    """ImageNet layout ``CLASS/img.png`` of real images."""
    k = 0
    for cls in classes:
        for i in range(n):
            k += 1
            make_png(folder / cls / f"real{i:03d}.png", (222, 168 + k % 40, 190), size=28)
    return folder


@dataclass
class Study:
    store: Store
    samples: Path
    reference: Path | None
    batch: str = "b1"
    tokens: dict[str, str] = field(default_factory=dict)
    admin_token: str = ""


def make_study(
    store: Store,
    root: Path,
    *,
    classes: tuple[str, ...] = ("neutrophil", "lymphocyte"),
    n: int = 3,
    per_image: int = 2,
    qc_share: float = 0.0,
    reviewers: tuple[str, ...] = ("alice", "bob"),
    with_reference: bool = True,
) -> Study:
    samples = make_samples(root / "samples", classes, n)
    reference = make_reference(root / "reference", classes) if with_reference else None
    add_batch(store, samples, reference=reference, per_image=per_image, name="b1", qc_share=qc_share, seed=1)
    study = Study(store, samples, reference)
    for r in reviewers:
        study.tokens[r] = add_user(store, r)
    study.admin_token = add_user(store, "boss", "admin")
    return study


# What a browser sends when a link is opened from a mail client or the address bar.
FROM_MAIL = {"Sec-Fetch-Site": "none"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
