"""A reviewer's queue: the next image, recording a verdict, undo, progress.

The queue lives in the database (``review_slots``), so a reviewer resumes exactly where they
stopped after a reload or on another device. Each function taking a ``Session`` runs inside the
caller's transaction; the API composes them so one request is one commit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, exists, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import db
from .db import REFERENCE, VERDICTS, Batch, Concept, Image, Slot, Verdict
from .ingest import checklist_for
from .problems import Conflict, Forbidden, Invalid, NotFound
from .schemas import no_control_characters

log = logging.getLogger(__name__)

MAX_CLAIM_TRIES = 20


@dataclass
class ItemView:
    uid: str
    declared_class: str
    references: list[str]
    checklist: list[str]
    concepts: list[dict[str, str]]


@dataclass
class ProgressView:
    done: int
    total: int

    @property
    def remaining(self) -> int:
        return self.total - self.done


@dataclass
class VerdictView:
    id: int
    request_id: str
    item: str
    verdict: str
    reasons: list[str]
    comment: str
    concept: str | None
    created_at: datetime
    undone: bool = False
    replayed: bool = field(default=False)


def _current(reviewer_id: int, image_id) -> object:
    """SQL condition: the reviewer has a current (not undone) verdict on the image."""
    return exists().where(Verdict.reviewer_id == reviewer_id, Verdict.image_id == image_id, Verdict.undone_at.is_(None))


def _holds(reviewer_id: int, image_id) -> object:
    s2 = Slot.__table__.alias("s2")
    return exists().where(s2.c.image_id == image_id, s2.c.reviewer_id == reviewer_id)


def item_view(s: Session, image: Image) -> ItemView:
    batch = s.get(Batch, image.batch_id)
    assert batch is not None
    refs = s.scalars(
        select(Image.uid)
        .where(
            Image.batch_id == image.batch_id,
            Image.kind == REFERENCE,
            Image.declared_class == image.declared_class,
        )
        .order_by(Image.position)
    ).all()
    concepts = s.scalars(
        select(Concept)
        .where(Concept.batch_id == image.batch_id, Concept.parent == image.declared_class)
        .order_by(Concept.name)
    ).all()
    return ItemView(
        uid=image.uid,
        declared_class=image.declared_class,
        references=list(refs),
        checklist=checklist_for(batch, image.declared_class),
        concepts=[{"name": c.name, "parent": c.parent} for c in concepts],
    )


def _open_claim(s: Session, reviewer_id: int) -> Image | None:
    """The reviewer's earliest claimed image still waiting for their verdict."""
    return s.scalar(
        select(Image)
        .join(Slot, Slot.image_id == Image.id)
        .where(Slot.reviewer_id == reviewer_id, ~_current(reviewer_id, Slot.image_id))
        .order_by(Slot.image_id)
        .limit(1)
    )


def _claim(s: Session, reviewer_id: int) -> Image | None:
    """Claim the first free slot on an image this reviewer has neither claimed nor judged."""
    for _ in range(MAX_CLAIM_TRIES):
        # SKIP LOCKED lets concurrent PostgreSQL claimers pass each other instead of queueing on
        # one row; SQLite ignores it (its writers are already serialised by BEGIN IMMEDIATE).
        row = s.execute(
            select(Slot.id, Slot.image_id)
            .where(
                Slot.reviewer_id.is_(None),
                ~_holds(reviewer_id, Slot.image_id),
                ~_current(reviewer_id, Slot.image_id),
            )
            .order_by(Slot.image_id, Slot.slot_no)
            .limit(1)
            .with_for_update(skip_locked=True, of=Slot)
        ).first()
        if row is None:
            return None
        try:
            with s.begin_nested():
                claimed = s.execute(
                    update(Slot)
                    .where(Slot.id == row.id, Slot.reviewer_id.is_(None))
                    .values(reviewer_id=reviewer_id, claimed_at=db.utcnow())
                    .execution_options(synchronize_session=False)
                ).rowcount
        except IntegrityError:
            # The same reviewer claimed this image from another tab a moment ago.
            continue
        if claimed == 1:
            return s.get(Image, row.image_id)
    log.warning("reviewer %d: gave up claiming after %d contended tries", reviewer_id, MAX_CLAIM_TRIES)
    return None


def next_image(s: Session, reviewer_id: int) -> Image | None:
    return _open_claim(s, reviewer_id) or _claim(s, reviewer_id)


# One round trip. "Claimable" is computed as (images with a free slot) minus (those among them
# this reviewer already holds or judged): that walks the reviewer's own rows instead of testing
# every free slot, which keeps the query cheap as a study grows.
_PROGRESS_SQL = text("""
SELECT
  (SELECT COUNT(*) FROM review_verdicts WHERE reviewer_id = :r AND undone_at IS NULL),
  (SELECT COUNT(*) FROM review_slots s WHERE s.reviewer_id = :r AND NOT EXISTS (
      SELECT 1 FROM review_verdicts v WHERE v.reviewer_id = :r AND v.image_id = s.image_id AND v.undone_at IS NULL)),
  (SELECT COUNT(DISTINCT image_id) FROM review_slots WHERE reviewer_id IS NULL),
  (SELECT COUNT(*) FROM (
      SELECT image_id FROM review_slots WHERE reviewer_id = :r
      UNION
      SELECT image_id FROM review_verdicts WHERE reviewer_id = :r AND undone_at IS NULL) mine
    WHERE EXISTS (SELECT 1 FROM review_slots f WHERE f.image_id = mine.image_id AND f.reviewer_id IS NULL))
""")


def progress(s: Session, reviewer_id: int) -> ProgressView:
    """Done and total for this reviewer. Total counts what is still open to them; when fewer
    reviewers per image are needed than there are reviewers, it shrinks as colleagues take
    the remaining slots."""
    done, open_, free_images, free_but_mine = s.execute(_PROGRESS_SQL, {"r": reviewer_id}).one()
    return ProgressView(done=done, total=done + open_ + free_images - free_but_mine)


def _view(v: Verdict, uid: str, *, replayed: bool = False) -> VerdictView:
    return VerdictView(
        id=v.id,
        request_id=v.request_id,
        item=uid,
        verdict=v.verdict,
        reasons=json.loads(v.reasons or "[]"),
        comment=v.comment or "",
        concept=v.concept,
        created_at=v.created_at,
        undone=v.undone_at is not None,
        replayed=replayed,
    )


def _uid(s: Session, image_id: int) -> str:
    return s.scalar(select(Image.uid).where(Image.id == image_id)) or ""


def _replay(s: Session, reviewer_id: int, request_id: str, item: str, verdict: str) -> VerdictView | None:
    stored = s.scalar(select(Verdict).where(Verdict.request_id == request_id))
    if stored is None:
        return None
    uid = _uid(s, stored.image_id)
    if stored.reviewer_id != reviewer_id or uid != item or stored.verdict != verdict:
        raise Conflict(f"request_id {request_id} was already used for a different verdict; send a new one")
    return _view(stored, uid, replayed=True)


def record_verdict(
    s: Session,
    reviewer_id: int,
    *,
    request_id: str,
    item: str,
    verdict: str,
    reasons: list[str] | None = None,
    comment: str = "",
    concept: str | None = None,
    source: str = "web",
    require_slot: bool = True,
    created_at: datetime | None = None,
) -> VerdictView:
    """Store one verdict, idempotently: replaying a ``request_id`` returns the stored verdict."""
    reasons = list(dict.fromkeys(reasons or []))
    if verdict not in VERDICTS:
        raise Invalid(f"verdict {verdict!r}: must be one of {', '.join(VERDICTS)}")
    try:
        no_control_characters(comment)
    except ValueError as exc:
        raise Invalid(f"comment {exc}") from None
    replay = _replay(s, reviewer_id, request_id, item, verdict)
    if replay is not None:
        return replay
    image = s.scalar(select(Image).where(Image.uid == item))
    if image is None or image.kind == REFERENCE:
        raise NotFound(f"no image {item!r} to judge")
    if require_slot:
        held = s.scalar(select(Slot.id).where(Slot.image_id == image.id, Slot.reviewer_id == reviewer_id))
        if held is None:
            raise Forbidden(f"image {item!r} is not in your queue; ask GET /api/next for your next image")
    if s.scalar(select(_current(reviewer_id, image.id))):
        raise Conflict(f"you already judged image {item!r}; undo it first to change your verdict")
    batch = s.get(Batch, image.batch_id)
    assert batch is not None
    allowed = set(checklist_for(batch, image.declared_class))
    unknown = [r for r in reasons if r not in allowed]
    if unknown:
        raise Invalid(f"reason(s) {unknown} are not on the checklist for {image.declared_class!r}: {sorted(allowed)}")
    if concept:
        ok = s.scalar(
            select(Concept.id).where(
                Concept.batch_id == image.batch_id,
                Concept.name == concept,
                Concept.parent == image.declared_class,
            )
        )
        if ok is None:
            raise Invalid(f"concept {concept!r} is not a sub-type of {image.declared_class!r} in this batch")
    row = Verdict(
        request_id=request_id,
        reviewer_id=reviewer_id,
        image_id=image.id,
        verdict=verdict,
        reasons=json.dumps(reasons),
        comment=comment,
        concept=concept or None,
        source=source,
        created_at=created_at or db.utcnow(),
    )
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:
        # A concurrent retry of the same request won the race (PostgreSQL), or a second tab
        # judged the same image: tell them apart by looking again.
        replay = _replay(s, reviewer_id, request_id, item, verdict)
        if replay is not None:
            return replay
        raise Conflict(f"you already judged image {item!r}; undo it first to change your verdict") from None
    return _view(row, image.uid)


def undo_last(s: Session, reviewer_id: int, request_id: str | None = None) -> VerdictView | None:
    """Mark the reviewer's most recent current verdict undone. Replaying an undo's
    ``request_id`` returns the same verdict instead of undoing one more."""
    if request_id:
        done = s.scalar(select(Verdict).where(Verdict.undo_request_id == request_id))
        if done is not None:
            if done.reviewer_id != reviewer_id:
                raise Conflict(f"request_id {request_id} was already used; send a new one")
            return _view(done, _uid(s, done.image_id), replayed=True)
    last = s.scalar(
        select(Verdict)
        .where(Verdict.reviewer_id == reviewer_id, Verdict.undone_at.is_(None))
        .order_by(Verdict.id.desc())
        .limit(1)
        .with_for_update()
    )
    if last is None:
        return None
    last.undone_at = db.utcnow()
    last.undo_request_id = request_id
    try:
        with s.begin_nested():
            s.flush()
    except IntegrityError:
        raise Conflict(f"request_id {request_id} was already used; send a new one") from None
    return _view(last, _uid(s, last.image_id))


def holds_slot(s: Session, reviewer_id: int, image_uid: str) -> Image | None:
    """The image, when the reviewer holds a slot on it and has no current verdict there."""
    return s.scalar(
        select(Image)
        .join(Slot, and_(Slot.image_id == Image.id, Slot.reviewer_id == reviewer_id))
        .where(Image.uid == image_uid, ~_current(reviewer_id, Image.id))
    )
