"""The admin dashboard's numbers: progress, plausibility, agreement and QC accuracy."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .agreement import cohen_kappa, fleiss_kappa
from .db import (
    IMPLAUSIBLE,
    PLAUSIBLE,
    QC,
    REFERENCE,
    REVIEWER,
    SAMPLE,
    UNSURE,
    VERDICTS,
    Batch,
    Concept,
    Image,
    Slot,
    User,
    Verdict,
)
from .ingest import get_batch

COMMENTS_SHOWN = 200


@dataclass
class Vote:
    image_id: int
    kind: str
    declared_class: str
    batch_id: int
    reviewer: str
    verdict: str
    created_at: datetime


def current_votes(s: Session, batch_ids: list[int] | None = None) -> list[Vote]:
    q = (
        select(
            Verdict.image_id,
            Image.kind,
            Image.declared_class,
            Image.batch_id,
            User.name,
            Verdict.verdict,
            Verdict.created_at,
        )
        .join(Image, Image.id == Verdict.image_id)
        .join(User, User.id == Verdict.reviewer_id)
        .where(Verdict.undone_at.is_(None))
        .order_by(Verdict.id)
    )
    if batch_ids is not None:
        q = q.where(Image.batch_id.in_(batch_ids))
    return [Vote(*row) for row in s.execute(q)]


def _rate(counts: Counter) -> float | None:
    decided = counts[PLAUSIBLE] + counts[IMPLAUSIBLE]
    return counts[PLAUSIBLE] / decided if decided else None


def agreement(votes: list[Vote]) -> dict[str, Any]:
    """Cohen's kappa per reviewer pair on their shared images; Fleiss' kappa over the images
    that have the most common number (>= 2) of ratings. Synthetic images only: QC items are
    easy by design and would inflate agreement."""
    by_image: dict[int, dict[str, str]] = defaultdict(dict)
    for v in votes:
        if v.kind == SAMPLE:
            by_image[v.image_id][v.reviewer] = v.verdict
    reviewers = sorted({r for ratings in by_image.values() for r in ratings})
    pairs = []
    for a, b in combinations(reviewers, 2):
        shared = [r for r in by_image.values() if a in r and b in r]
        if shared:
            pairs.append(
                {
                    "a": a,
                    "b": b,
                    "n": len(shared),
                    "agreement": sum(r[a] == r[b] for r in shared) / len(shared),
                    "kappa": cohen_kappa([r[a] for r in shared], [r[b] for r in shared]),
                }
            )
    sizes = Counter(len(r) for r in by_image.values() if len(r) >= 2)
    fleiss: dict[str, Any] = {"kappa": None, "images": 0, "ratings_per_image": None}
    if sizes:
        # Most images first, then more raters: Fleiss needs one n for every item.
        m = max(sizes, key=lambda k: (sizes[k], k))
        table = [[Counter(r.values())[c] for c in VERDICTS] for r in by_image.values() if len(r) == m]
        fleiss = {"kappa": fleiss_kappa(table), "images": len(table), "ratings_per_image": m}
    return {"cohen": pairs, "fleiss": fleiss, "categories": list(VERDICTS)}


ImageCounts = Counter  # (batch_id, kind, class) -> number of images


def _batch_rows(s: Session, batches: list[Batch], image_counts: ImageCounts) -> list[dict[str, Any]]:
    rows = []
    for b in batches:
        concepts = s.scalars(select(Concept).where(Concept.batch_id == b.id).order_by(Concept.name)).all()
        count = {
            kind: sum(n for (bid, k, _), n in image_counts.items() if bid == b.id and k == kind)
            for kind in (SAMPLE, QC, REFERENCE)
        }
        rows.append(
            {
                "name": b.name,
                "per_image": b.per_image,
                "qc_share": b.qc_share,
                "samples": count[SAMPLE],
                "qc": count[QC],
                "references": count[REFERENCE],
                "concepts": [{"name": c.name, "parent": c.parent} for c in concepts],
                "created_at": b.created_at,
            }
        )
    return rows


def _class_rows(votes: list[Vote], image_counts: ImageCounts, per_image: dict[int, int]) -> list[dict[str, Any]]:
    class_votes: dict[str, Counter] = defaultdict(Counter)
    for v in votes:
        if v.kind == SAMPLE:
            class_votes[v.declared_class][v.verdict] += 1
    rows = []
    for cls in sorted({c for (_, k, c) in image_counts if k == SAMPLE}):
        mine = [(bid, n) for (bid, k, c), n in image_counts.items() if k == SAMPLE and c == cls]
        counts = class_votes[cls]
        rows.append(
            {
                "class": cls,
                "images": sum(n for _, n in mine),
                "required": sum(n * per_image[bid] for bid, n in mine),
                "done": sum(counts[v] for v in VERDICTS),
                PLAUSIBLE: counts[PLAUSIBLE],
                IMPLAUSIBLE: counts[IMPLAUSIBLE],
                UNSURE: counts[UNSURE],
                "plausibility_rate": _rate(counts),
            }
        )
    return rows


def _reviewer_rows(s: Session, votes: list[Vote], ids: list[int]) -> list[dict[str, Any]]:
    open_claims = dict(
        s.execute(
            select(User.name, func.count(Slot.id))
            .join(Slot, Slot.reviewer_id == User.id)
            .join(Image, Image.id == Slot.image_id)
            .where(Image.batch_id.in_(ids))
            .group_by(User.name)
        ).all()
    )
    rows = []
    for user in s.scalars(select(User).where(User.role == REVIEWER).order_by(User.name)):
        mine = [v for v in votes if v.reviewer == user.name]
        qc = Counter(v.verdict for v in mine if v.kind == QC)
        rows.append(
            {
                "name": user.name,
                "done": len(mine),
                "samples_done": sum(v.kind == SAMPLE for v in mine),
                "claimed": open_claims.get(user.name, 0),
                "last_verdict_at": max((v.created_at for v in mine), default=None),
                # A real image shown with its true class should be judged plausible; "unsure" is
                # reported but counts neither way.
                "qc": {
                    "n": sum(qc.values()),
                    PLAUSIBLE: qc[PLAUSIBLE],
                    IMPLAUSIBLE: qc[IMPLAUSIBLE],
                    UNSURE: qc[UNSURE],
                    "accuracy": _rate(qc),
                },
            }
        )
    return rows


def recent_comments(s: Session, ids: list[int], limit: int = COMMENTS_SHOWN) -> list[dict[str, Any]]:
    """The newest non-empty comments on current verdicts, newest first."""
    q = (
        select(
            Verdict.comment, Verdict.verdict, Verdict.created_at, User.name, Image.uid, Image.kind, Image.declared_class
        )
        .join(User, User.id == Verdict.reviewer_id)
        .join(Image, Image.id == Verdict.image_id)
        .where(Verdict.undone_at.is_(None), Verdict.comment != "", Image.batch_id.in_(ids))
        .order_by(Verdict.id.desc())
        .limit(limit)
    )
    return [
        {
            "reviewer": name,
            "class": cls,
            "kind": kind,
            "verdict": verdict,
            "comment": comment,
            "image_url": f"/api/images/{uid}",
            "created_at": created,
        }
        for comment, verdict, created, name, uid, kind, cls in s.execute(q)
    ]


def dashboard(s: Session, batch: str | None = None) -> dict[str, Any]:
    batches = [get_batch(s, batch)] if batch else list(s.scalars(select(Batch).order_by(Batch.id)))
    ids = [b.id for b in batches]
    votes = current_votes(s, ids)
    image_counts = Counter(
        s.execute(select(Image.batch_id, Image.kind, Image.declared_class).where(Image.batch_id.in_(ids))).all()
    )
    classes = _class_rows(votes, image_counts, {b.id: b.per_image for b in batches})
    sample_votes = [v for v in votes if v.kind == SAMPLE]
    return {
        "batches": _batch_rows(s, batches, image_counts),
        "totals": {
            "images": sum(c["images"] for c in classes),
            "required": sum(c["required"] for c in classes),
            "done": len(sample_votes),
            "qc_done": sum(v.kind == QC for v in votes),
            "plausibility_rate": _rate(Counter(v.verdict for v in sample_votes)),
        },
        "reviewers": _reviewer_rows(s, votes, ids),
        "classes": classes,
        "agreement": agreement(votes),
        "comments": recent_comments(s, ids),
    }
