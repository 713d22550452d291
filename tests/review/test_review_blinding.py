"""QC items are blind: nothing in what a reviewer downloads (bytes, headers) tells a real image
from a synthetic one. Checked on real PBC cells from ../shared/data when present, on toy cells
otherwise, with a classifier that tries every feature a reviewer's browser can see."""

from __future__ import annotations

import io
import struct
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from PIL import ImageFilter
from review_helpers import bearer, make_reference, make_samples
from sqlalchemy import select

from clinalign.review.app import create_app
from clinalign.review.db import QC, SAMPLE, Image, Store
from clinalign.review.ingest import add_batch, add_user

PBC = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pbc_64"
CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
# Headers that differ per request for every image alike.
VOLATILE = {"date", "server"}


def pbc_batch(root: Path, per_class: int = 16, refs_per_class: int = 8) -> tuple[Path, Path]:
    """Real PBC cells as references; other real cells, smoothed and saved as PNG the way the
    sampler writes its output, stand in for synthetic samples (diffusion samples are smoother
    than JPEG-compressed photographs, so they compress better: the issue's size gap)."""
    samples, reference = root / "samples", root / "reference"
    samples.mkdir()
    reference.mkdir()
    for cls in CLASSES:
        for p in sorted((PBC / "train").glob(f"{cls}_*.jpg"))[:refs_per_class]:
            (reference / p.name).write_bytes(p.read_bytes())
        for i, p in enumerate(sorted((PBC / "val").glob(f"{cls}_*.jpg"))[:per_class]):
            with PILImage.open(p) as im:
                im.convert("RGB").filter(ImageFilter.GaussianBlur(0.8)).save(samples / f"{cls}_{i:06d}.png")
    return samples, reference


def toy_batch(root: Path) -> tuple[Path, Path]:
    return make_samples(root / "samples", n=30), make_reference(root / "reference", n=12)


def png_layout(data: bytes) -> tuple:
    """The container a browser parses around the pixels: chunk types and lengths in order."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return ("not png", data[:4])
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind, length, data[pos + 8 : pos + 8 + length] if kind == b"IHDR" else b""))
        pos += 12 + length
    return tuple(chunks)


def features(content: bytes, headers) -> dict:
    with PILImage.open(io.BytesIO(content)) as im:
        decoded = (im.format, im.mode, im.size, tuple(sorted(im.info)))
    return {
        "bytes": len(content),
        "headers": tuple(sorted((k, v) for k, v in headers.items() if k not in VOLATILE)),
        "layout": png_layout(content),
        "decoded": decoded,
    }


def balanced_accuracy(truth: list[bool], guess: list[bool]) -> float:
    pos = [g for t, g in zip(truth, guess, strict=True) if t]
    neg = [not g for t, g in zip(truth, guess, strict=True) if not t]
    return (sum(pos) / len(pos) + sum(neg) / len(neg)) / 2


def fit_predict(train: list[tuple[object, bool]], test: list[object]) -> list[bool]:
    """A stump on numbers (best threshold and side), a lookup table on anything else."""
    if all(isinstance(x, int) for x, _ in train):
        best = (0.0, 0, True)
        for cut in sorted({x for x, _ in train}):
            for side in (True, False):
                acc = balanced_accuracy([y for _, y in train], [(x >= cut) == side for x, _ in train])
                best = max(best, (acc, cut, side))
        _, cut, side = best
        return [(x >= cut) == side for x in test]  # type: ignore[operator]
    votes: dict[object, Counter] = {}
    n_qc = sum(y for _, y in train)
    for x, y in train:
        # Weight by class size so the table predicts the class that is relatively more frequent.
        votes.setdefault(x, Counter())[y] += 1 / (n_qc if y else len(train) - n_qc)
    return [bool(votes[x][True] > votes[x][False]) if x in votes else False for x in test]


def cross_validated(rows: list[tuple[dict, bool]], name: str, folds: int = 5) -> float:
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1], i))
    fold_of = {i: k % folds for k, i in enumerate(order)}  # stratified by kind
    truth, guess = [], []
    for f in range(folds):
        train = [(rows[i][0][name], rows[i][1]) for i in range(len(rows)) if fold_of[i] != f]
        test = [i for i in range(len(rows)) if fold_of[i] == f]
        guess += fit_predict(train, [rows[i][0][name] for i in test])
        truth += [rows[i][1] for i in test]
    return balanced_accuracy(truth, guess)


def served_queue(store, client) -> list[tuple[dict, bool]]:
    """What a reviewer's browser gets for each queue image (the item JSON is checked in
    test_review_api.py::test_blind_and_qc_items_look_like_samples)."""
    with store.read() as s:
        kinds = s.execute(select(Image.uid, Image.kind).where(Image.kind.in_([SAMPLE, QC])).order_by(Image.id)).all()
    token = add_user(store, "reader")
    rows = []
    for uid, kind in kinds:
        r = client.get(f"/api/images/{uid}", headers=bearer(token))
        assert r.status_code == 200
        rows.append((features(r.content, r.headers), kind == QC))
    return rows


@pytest.mark.parametrize("source", ["pbc", "toy"])
def test_qc_items_cannot_be_told_from_samples_by_bytes_or_headers(sqlite_url, tmp_path, source):
    if source == "pbc" and not PBC.is_dir():
        pytest.skip(f"{PBC} not present (real PBC cells); the toy batch covers the same check")
    samples, reference = pbc_batch(tmp_path) if source == "pbc" else toy_batch(tmp_path)
    store = Store(sqlite_url)  # what is served does not depend on the database
    add_batch(store, samples, reference=reference, name="blind", qc_share=0.2, strip=3, seed=3)
    with TestClient(create_app(store.url, store=store)) as client:
        rows = served_queue(store, client)
    store.dispose()
    n_qc = sum(y for _, y in rows)
    assert n_qc >= 10 and len(rows) - n_qc >= 40, (n_qc, len(rows))
    # Every feature on its own, then all of them together, by 5-fold cross-validation.
    for row, _ in rows:
        row["all"] = tuple(row.values())
    scores = {name: cross_validated(rows, name) for name in rows[0][0]}
    assert max(scores.values()) <= 0.6, scores
    # Stronger than "no better than chance": every feature takes one value for every image.
    for name in ("bytes", "headers", "layout", "decoded"):
        assert len({row[name] for row, _ in rows}) == 1, (name, Counter(row[name] for row, _ in rows).most_common(3))
