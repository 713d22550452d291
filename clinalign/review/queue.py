"""A reviewer's queue: the next image, recording a verdict, undo, progress.

The queue lives in the database (``review_slots``), so a reviewer resumes exactly where they
stopped after a reload or on another device. Each function taking a ``Session`` runs inside the
caller's transaction; the API composes them so one request is one commit.

This is the server's hot path (bench/review_load.py --mode profile): statements are built once,
run on the session's connection (no ORM unit of work), and what never changes once a batch is
loaded (an image's identity, checklists, reference strips) is read once per Store
(``db.Static``, reached through ``Session.info``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import DataError
from . import db
from .db import REFERENCE, VERDICTS, Batch, Concept, Image, ImageRow, Slot, Static, Verdict
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


# ------------------------------------------------------------------------------- statements

images, slots, verdicts, concepts = Image.__table__, Slot.__table__, Verdict.__table__, Concept.__table__
_IMAGE_COLUMNS = (
    images.c.id,
    images.c.uid,
    images.c.batch_id,
    images.c.kind,
    images.c.declared_class,
    images.c.blob_sha,
)
_IMAGE_BY_UID = select(*_IMAGE_COLUMNS).where(images.c.uid == bindparam("uid"))
_IMAGE_BY_ID = select(*_IMAGE_COLUMNS).where(images.c.id == bindparam("id"))
_JUDGED = exists().where(
    verdicts.c.reviewer_id == bindparam("r"), verdicts.c.image_id == slots.c.image_id, verdicts.c.undone_at.is_(None)
)
_OPEN_CLAIM = (
    select(slots.c.image_id).where(slots.c.reviewer_id == bindparam("r"), ~_JUDGED).order_by(slots.c.image_id).limit(1)
)
_s2 = slots.alias("s2")
# SKIP LOCKED lets concurrent PostgreSQL claimers pass each other instead of queueing on one row;
# SQLite ignores it (its writers are serialised anyway).
_FREE_SLOT = (
    select(slots.c.id, slots.c.image_id)
    .where(
        slots.c.reviewer_id.is_(None),
        ~exists().where(_s2.c.image_id == slots.c.image_id, _s2.c.reviewer_id == bindparam("r")),
        ~_JUDGED,
    )
    .order_by(slots.c.image_id, slots.c.slot_no)
    .limit(1)
    .with_for_update(skip_locked=True, of=slots)
)
_CLAIM = (
    update(slots)
    .where(slots.c.id == bindparam("sid"), slots.c.reviewer_id.is_(None))
    .values(reviewer_id=bindparam("r"), claimed_at=bindparam("t"))
)
_HOLDS_AND_JUDGED = select(
    exists().where(slots.c.image_id == bindparam("img"), slots.c.reviewer_id == bindparam("r")),
    exists().where(
        verdicts.c.image_id == bindparam("img"),
        verdicts.c.reviewer_id == bindparam("r"),
        verdicts.c.undone_at.is_(None),
    ),
)
_VERDICT_BY_REQUEST = select(verdicts).where(verdicts.c.request_id == bindparam("rid"))
_INSERT_VERDICT = insert(verdicts).returning(verdicts.c.id)
_CONCEPTS = (
    select(concepts.c.name, concepts.c.parent)
    .where(concepts.c.batch_id == bindparam("b"), concepts.c.parent == bindparam("cls"))
    .order_by(concepts.c.name)
)
_REFERENCES = (
    select(images.c.uid)
    .where(images.c.batch_id == bindparam("b"), images.c.kind == REFERENCE, images.c.declared_class == bindparam("cls"))
    .order_by(images.c.position)
)
_CHECKLIST = select(Batch.__table__.c.checklist).where(Batch.__table__.c.id == bindparam("b"))

# Two round trips. "Claimable" is (images with a free slot) minus (those among them this
# reviewer already holds or judged): the second term walks the reviewer's own rows only. The
# first is the same for everyone and costs a walk over every free slot (2.7 ms at 52,000 slots),
# so it is counted once and then kept up to date (Static.free_images).
_MY_PROGRESS_SQL = text("""
SELECT
  (SELECT COUNT(*) FROM review_verdicts WHERE reviewer_id = :r AND undone_at IS NULL),
  (SELECT COUNT(*) FROM review_slots s WHERE s.reviewer_id = :r AND NOT EXISTS (
      SELECT 1 FROM review_verdicts v WHERE v.reviewer_id = :r AND v.image_id = s.image_id AND v.undone_at IS NULL)),
  (SELECT COUNT(*) FROM (
      SELECT image_id FROM review_slots WHERE reviewer_id = :r
      UNION
      SELECT image_id FROM review_verdicts WHERE reviewer_id = :r AND undone_at IS NULL) mine
    WHERE EXISTS (SELECT 1 FROM review_slots f WHERE f.image_id = mine.image_id AND f.reviewer_id IS NULL))
""")
_FREE_IMAGES_SQL = text("SELECT COUNT(DISTINCT image_id) FROM review_slots WHERE reviewer_id IS NULL")
_STILL_FREE = select(exists().where(slots.c.image_id == bindparam("img"), slots.c.reviewer_id.is_(None)))


def _conn(s: Session) -> Connection:
    """The transaction's connection, after writing out anything the caller left pending in the ORM."""
    if s.new or s.dirty or s.deleted:
        s.flush()
    return s.connection()


def _static(s: Session) -> Static:
    static = s.info.get("static")
    if static is None:  # a session not made by a Store: remember for this session only
        static = s.info["static"] = Static()
    return static


def image_row(s: Session, *, uid: str | None = None, image_id: int | None = None) -> ImageRow | None:
    static = _static(s)
    row = static.image(uid=uid, image_id=image_id)
    if row is None:
        stmt, params = (_IMAGE_BY_UID, {"uid": uid}) if uid is not None else (_IMAGE_BY_ID, {"id": image_id})
        found = _conn(s).execute(stmt, params).first()
        row = static.add_image(ImageRow(*found)) if found else None
    return row


def checklist(s: Session, batch_id: int, cls: str) -> list[str]:
    static = _static(s)
    lists = static.checklists.get(batch_id)
    if lists is None:
        lists = static.checklists[batch_id] = json.loads(_conn(s).execute(_CHECKLIST, {"b": batch_id}).scalar_one())
    return lists.get(cls, lists.get("*", []))


def _references(s: Session, batch_id: int, cls: str) -> list[str]:
    static = _static(s)
    key = (batch_id, cls)
    if key not in static.references:
        static.references[key] = list(_conn(s).execute(_REFERENCES, {"b": batch_id, "cls": cls}).scalars())
    return static.references[key]


# ------------------------------------------------------------------------------- the next image


def item_view(s: Session, image: Image | ImageRow) -> ItemView:
    # Concepts are read every time: an admin may add one while reviewers work.
    found = _conn(s).execute(_CONCEPTS, {"b": image.batch_id, "cls": image.declared_class}).all()
    return ItemView(
        uid=image.uid,
        declared_class=image.declared_class,
        references=list(_references(s, image.batch_id, image.declared_class)),
        checklist=checklist(s, image.batch_id, image.declared_class),
        concepts=[{"name": name, "parent": parent} for name, parent in found],
    )


def _claim(s: Session, reviewer_id: int) -> int | None:
    """Claim the first free slot on an image this reviewer has neither claimed nor judged."""
    conn = _conn(s)
    concurrent = conn.dialect.name != "sqlite"
    for _ in range(MAX_CLAIM_TRIES):
        row = conn.execute(_FREE_SLOT, {"r": reviewer_id}).first()
        if row is None:
            return None
        params = {"sid": row.id, "r": reviewer_id, "t": db.utcnow()}
        if not concurrent:  # SQLite's writers are serialised: no other claim can come between
            claimed = conn.execute(_CLAIM, params).rowcount
        else:
            try:
                with s.begin_nested():
                    claimed = conn.execute(_CLAIM, params).rowcount
            except IntegrityError:
                continue  # the same reviewer claimed this image from another tab a moment ago
        if claimed == 1:
            static = _static(s)
            if static.free_images is not None and not conn.execute(_STILL_FREE, {"img": row.image_id}).scalar():
                static.free_images -= 1  # that was the image's last free slot
            return row.image_id
    log.warning("reviewer %d: gave up claiming after %d contended tries", reviewer_id, MAX_CLAIM_TRIES)
    return None


def next_row(s: Session, reviewer_id: int) -> ImageRow | None:
    """The reviewer's earliest claimed image still waiting for their verdict, else a new claim."""
    image_id = _conn(s).execute(_OPEN_CLAIM, {"r": reviewer_id}).scalar() or _claim(s, reviewer_id)
    return image_row(s, image_id=image_id) if image_id else None


def next_image(s: Session, reviewer_id: int) -> Image | None:
    """``next_row`` as an ORM object (for callers that want one, e.g. the simulated expert)."""
    row = next_row(s, reviewer_id)
    return s.get(Image, row.id) if row else None


def free_images(s: Session) -> int:
    """How many images still have a free slot: counted at most every Static.FREE_RECOUNT_S
    seconds, and kept exact in between for the claims this process makes (``_claim``). Claims
    by another process (a second server, a CLI import) show within the recount interval."""
    static = _static(s)
    if static.free_images is None or time.monotonic() > static.free_recount_at:
        static.free_images = _conn(s).execute(_FREE_IMAGES_SQL).scalar_one()
        static.free_recount_at = time.monotonic() + static.FREE_RECOUNT_S
    return static.free_images


def progress(s: Session, reviewer_id: int) -> ProgressView:
    """Done and total for this reviewer. Total counts what is still open to them; when fewer
    reviewers per image are needed than there are reviewers, it shrinks as colleagues take
    the remaining slots."""
    done, open_, free_but_mine = _conn(s).execute(_MY_PROGRESS_SQL, {"r": reviewer_id}).one()
    return ProgressView(done=done, total=done + open_ + free_images(s) - free_but_mine)


def holds_slot(s: Session, reviewer_id: int, image_uid: str) -> ImageRow | None:
    """The image, when the reviewer holds a slot on it and has no current verdict there."""
    image = image_row(s, uid=image_uid)
    if image is None:
        return None
    holds, judged = _conn(s).execute(_HOLDS_AND_JUDGED, {"img": image.id, "r": reviewer_id}).one()
    return image if holds and not judged else None


# ------------------------------------------------------------------------------- verdicts


def _view(v: Any, uid: str, *, replayed: bool = False) -> VerdictView:
    """From a Verdict object or a review_verdicts row."""
    return VerdictView(
        id=v.id,
        request_id=v.request_id,
        item=uid,
        verdict=v.verdict,
        reasons=json.loads(v.reasons or "[]"),
        comment=v.comment or "",
        concept=v.concept,
        created_at=db.as_utc(v.created_at),
        undone=v.undone_at is not None,
        replayed=replayed,
    )


def _uid(s: Session, image_id: int) -> str:
    row = image_row(s, image_id=image_id)
    return row.uid if row else ""


def _replay(s: Session, reviewer_id: int, request_id: str, item: str, verdict: str) -> VerdictView | None:
    stored = _conn(s).execute(_VERDICT_BY_REQUEST, {"rid": request_id}).first()
    if stored is None:
        return None
    uid = _uid(s, stored.image_id)
    if stored.reviewer_id != reviewer_id or uid != item or stored.verdict != verdict:
        raise Conflict(f"request_id {request_id} was already used for a different verdict; send a new one")
    return _view(stored, uid, replayed=True)


def _check_verdict(
    s: Session, reviewer_id: int, image: ImageRow, reasons: list[str], concept: str | None, require_slot: bool
) -> None:
    holds, judged = _conn(s).execute(_HOLDS_AND_JUDGED, {"img": image.id, "r": reviewer_id}).one()
    if require_slot and not holds:
        raise Forbidden(f"image {image.uid!r} is not in your queue; ask GET /api/next for your next image")
    if judged:
        raise Conflict(f"you already judged image {image.uid!r}; undo it first to change your verdict")
    allowed = checklist(s, image.batch_id, image.declared_class)
    unknown = [r for r in reasons if r not in allowed]
    if unknown:
        raise Invalid(f"reason(s) {unknown} are not on the checklist for {image.declared_class!r}: {sorted(allowed)}")
    if concept:
        offered = {name for name, _ in _conn(s).execute(_CONCEPTS, {"b": image.batch_id, "cls": image.declared_class})}
        if concept not in offered:
            raise Invalid(f"concept {concept!r} is not a sub-type of {image.declared_class!r} in this batch")


def _insert(s: Session, values: dict[str, Any], reviewer_id: int, item: str) -> int:
    conn = _conn(s)
    if conn.dialect.name == "sqlite":  # serialised writers: the checks above cannot go stale
        return conn.execute(_INSERT_VERDICT, values).scalar_one()
    try:
        with s.begin_nested():
            return conn.execute(_INSERT_VERDICT, values).scalar_one()
    except IntegrityError:
        # A concurrent retry of the same request won the race, or a second tab judged the same
        # image: tell them apart by looking again.
        replay = _replay(s, reviewer_id, values["request_id"], item, values["verdict"])
        if replay is not None:
            raise _Replayed(replay) from None
        raise Conflict(f"you already judged image {item!r}; undo it first to change your verdict") from None


class _Replayed(Exception):
    def __init__(self, view: VerdictView) -> None:
        self.view = view


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
    image = image_row(s, uid=item)
    if image is None or image.kind == REFERENCE:
        raise NotFound(f"no image {item!r} to judge")
    _check_verdict(s, reviewer_id, image, reasons, concept, require_slot)
    values = {
        "request_id": request_id,
        "reviewer_id": reviewer_id,
        "image_id": image.id,
        "verdict": verdict,
        "reasons": json.dumps(reasons),
        "comment": comment,
        "concept": concept or None,
        "source": source,
        "created_at": created_at or db.utcnow(),
        "undone_at": None,
        "undo_request_id": None,
    }
    try:
        values["id"] = _insert(s, values, reviewer_id, item)
    except _Replayed as done:
        return done.view
    return _view(_Row(values), image.uid)


class _Row:
    """Attribute access to the values just inserted (what ``_view`` reads)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


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


# ---------------------------------------------------------------------------------------------
# An automated reviewer (the simulated expert) working through a queue like a person


@dataclass
class QueueItem:
    """What a reviewer is shown: the image's bytes, its declared class and the concepts offered for it."""

    uid: str
    declared_class: str
    image: bytes
    concepts: list[str]


#: Judges one item: (plausible?, the concept it is assigned to or None).
Judge = Callable[[QueueItem], tuple[bool, "str | None"]]


def reviewer_id(store: db.Store, name: str) -> int:
    """The id of reviewer ``name``; a DataError saying how to add one when there is none."""
    with store.read() as s:
        found = s.scalar(select(db.User.id).where(db.User.name == name))
    if found is None:
        raise DataError(
            f"--reviewer {name!r}: no such reviewer in {store.safe_url}; add one with "
            "`clinalign review add-reviewer NAME --db URL`"
        )
    return found


def work_queue(
    store: db.Store, reviewer: str, judge: Judge, *, source: str = "simulated", limit: int | None = None
) -> dict[str, dict[str, int]]:
    """Judge ``reviewer``'s queue item by item until it is empty (or ``limit``); per class counts.

    Each item is claimed, judged and recorded in its own transaction with a request ID derived from
    the reviewer and the item, so an interrupted run loses nothing and a rerun continues where it stopped.
    """
    user = reviewer_id(store, reviewer)
    per_class: dict[str, dict[str, int]] = {}
    n = 0
    while limit is None or n < limit:
        with store.write() as s:
            row = next_row(s, user)
            if row is None:
                break
            blob = s.get(db.Blob, row.blob_sha)
            view = item_view(s, row)
            plausible, concept = judge(
                QueueItem(row.uid, row.declared_class, blob.data, [c["name"] for c in view.concepts])
            )
            request = hashlib.sha256(f"{reviewer}:{row.uid}".encode()).hexdigest()[:32]
            record_verdict(
                s,
                user,
                request_id=f"sim-{request}",
                item=row.uid,
                verdict=db.PLAUSIBLE if plausible else db.IMPLAUSIBLE,
                source=source,
                concept=concept,
            )
        counts = per_class.setdefault(row.declared_class, {"plausible": 0, "implausible": 0})
        counts["plausible" if plausible else "implausible"] += 1
        n += 1
    return per_class
