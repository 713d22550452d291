"""Label Studio JSON in and out, so labs that already judge images there can bring their work.

Format: a list of tasks ``{"id", "data": {"image": URL, ...}, "annotations": [{"completed_by",
"created_at", "was_cancelled", "result": [{"from_name", "to_name", "type": "choices",
"value": {"choices": ["Plausible"]}}, ...]}]}``. Our labeling config names the controls
``verdict`` (Plausible / Implausible / Unsure), ``reasons``, ``concept`` and ``comment``; on import
any ``choices`` result holding one of the three verdict words counts, whatever its name.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import quoteattr

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import DataError
from ..utils.fileio import atomic_directory
from .db import (
    IMPLAUSIBLE,
    PLAUSIBLE,
    REVIEWER,
    SAMPLE,
    UNSURE,
    Batch,
    Blob,
    Concept,
    Image,
    Slot,
    Store,
    User,
    Verdict,
    utcnow,
)
from .export import check_out_folder
from .ingest import NAME_RE, checklist_for, get_batch
from .problems import Conflict, Invalid
from .queue import record_verdict
from .tokens import hash_token, new_token

log = logging.getLogger(__name__)

LS_CHOICES = {PLAUSIBLE: "Plausible", IMPLAUSIBLE: "Implausible", UNSURE: "Unsure"}
FROM_LS = {v.lower(): k for k, v in LS_CHOICES.items()}
# Label Studio prefixes uploaded files with 8 hex digits and a dash.
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def _result(from_name: str, kind: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(5),
        "from_name": from_name,
        "to_name": "image",
        "type": kind,
        "origin": "manual",
        "value": value,
    }


def labeling_config(checklist_tags: list[str], concepts: list[str]) -> str:
    lines = [
        "<View>",
        '  <Header value="Declared class: $class"/>',
        '  <Image name="image" value="$image" zoom="true" zoomControl="true"/>',
        '  <Choices name="verdict" toName="image" choice="single-radio" required="true" showInline="true">',
        *(f'    <Choice value="{v}" hotkey="{i}"/>' for i, v in enumerate(LS_CHOICES.values(), 1)),
        "  </Choices>",
        '  <Choices name="reasons" toName="image" choice="multiple">',
        *(f"    <Choice value={quoteattr(t)}/>" for t in checklist_tags),
        "  </Choices>",
    ]
    if concepts:
        lines += [
            '  <Choices name="concept" toName="image" choice="single">',
            *(f"    <Choice value={quoteattr(c)}/>" for c in concepts),
            "  </Choices>",
        ]
    lines += ['  <TextArea name="comment" toName="image" rows="2"/>', "</View>", ""]
    return "\n".join(lines)


def _annotation(v: Verdict, u: User) -> dict[str, Any]:
    result = [_result("verdict", "choices", {"choices": [LS_CHOICES[v.verdict]]})]
    reasons = json.loads(v.reasons or "[]")
    if reasons:
        result.append(_result("reasons", "choices", {"choices": reasons}))
    if v.concept:
        result.append(_result("concept", "choices", {"choices": [v.concept]}))
    if v.comment:
        result.append(_result("comment", "textarea", {"text": [v.comment]}))
    return {
        "id": v.id,
        "completed_by": u.id,
        "clinalign_reviewer": u.name,
        "created_at": v.created_at.isoformat(),
        "updated_at": v.created_at.isoformat(),
        "was_cancelled": False,
        "ground_truth": False,
        "result": result,
    }


def _sample_images(s: Session, ids: list[int]) -> list[Image]:
    images = list(
        s.scalars(
            select(Image).where(Image.batch_id.in_(ids), Image.kind == SAMPLE).order_by(Image.batch_id, Image.position)
        )
    )
    dup = [n for n, k in Counter(im.filename for im in images).items() if k > 1]
    if dup:
        raise DataError(f"{dup[0]}: appears in more than one batch; export one batch at a time with --batch NAME")
    return images


def _current_votes(s: Session, ids: list[int]) -> dict[int, list[tuple[Verdict, User]]]:
    votes: dict[int, list[tuple[Verdict, User]]] = defaultdict(list)
    for v, u in s.execute(
        select(Verdict, User)
        .join(User, User.id == Verdict.reviewer_id)
        .join(Image, Image.id == Verdict.image_id)
        .where(Verdict.undone_at.is_(None), Image.batch_id.in_(ids), Image.kind == SAMPLE)
        .order_by(Verdict.id)
    ):
        votes[v.image_id].append((v, u))
    return votes


def _config_tags(s: Session, batches: list[Batch], images: list[Image]) -> tuple[list[str], list[str]]:
    """Every reason tag of the exported classes (in checklist order) and every concept name."""
    tags: list[str] = []
    for b in batches:
        for cls in {im.declared_class for im in images if im.batch_id == b.id}:
            tags += [t for t in checklist_for(b, cls) if t not in tags]
    ids = [b.id for b in batches]
    concepts = sorted(set(s.scalars(select(Concept.name).where(Concept.batch_id.in_(ids)))))
    return tags, concepts


def export_labelstudio(
    store: Store,
    out: str | Path,
    *,
    batch: str | None = None,
    image_prefix: str = "images/",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``tasks.json``, ``labeling_config.xml`` and ``images/`` (synthetic samples only)."""
    out = Path(out).expanduser().resolve()
    check_out_folder(out, overwrite)
    with store.read() as s:
        batches = [get_batch(s, batch)] if batch else list(s.scalars(select(Batch).order_by(Batch.id)))
        ids = [b.id for b in batches]
        images = _sample_images(s, ids)
        votes = _current_votes(s, ids)
        batch_names = {b.id: b.name for b in batches}
        tasks = []
        with atomic_directory(out) as tmp:
            (tmp / "images").mkdir()
            for im in images:
                data = s.scalar(select(Blob.data).where(Blob.sha256 == im.blob_sha)) or b""
                (tmp / "images" / im.filename).write_bytes(data)
                task_data = {
                    "image": image_prefix + im.filename,
                    "class": im.declared_class,
                    "clinalign_id": im.filename,
                    "batch": batch_names[im.batch_id],
                }
                annotations = [_annotation(v, u) for v, u in votes.get(im.id, [])]
                tasks.append({"id": im.id, "data": task_data, "annotations": annotations})
            (tmp / "tasks.json").write_text(json.dumps(tasks, indent=1))
            (tmp / "labeling_config.xml").write_text(labeling_config(*_config_tags(s, batches, images)))
    n_ann = sum(len(t["annotations"]) for t in tasks)
    log.info("wrote %d Label Studio tasks (%d annotations) to %s", len(tasks), n_ann, out)
    return {"out": str(out), "tasks": len(tasks), "annotations": n_ann}


# ---------------------------------------------------------------------------------------------
# Import


@dataclass
class ImportSummary:
    tasks: int = 0
    matched: int = 0
    imported: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    reviewers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _file_name(task: dict[str, Any]) -> str | None:
    data = task.get("data") or {}
    if isinstance(data.get("clinalign_id"), str):
        return data["clinalign_id"]
    ref = data.get("image")
    if not isinstance(ref, str):
        ref = next((v for v in data.values() if isinstance(v, str) and "." in v), None)
    if ref is None:
        return None
    parts = urlsplit(ref)
    # Local-files storage: /data/local-files/?d=folder/image.png
    path = parse_qs(parts.query).get("d", [parts.path])[0]
    return unquote(path).rsplit("/", 1)[-1] or None


def _reviewer_name(ann: dict[str, Any]) -> str:
    raw = ann.get("clinalign_reviewer")
    if not raw:
        who = ann.get("completed_by")
        if isinstance(who, dict):
            raw = who.get("email") or (f"labelstudio-{who['id']}" if "id" in who else None)
        elif who is not None:
            raw = f"labelstudio-{who}"
    name = re.sub(r"[^A-Za-z0-9 .@+-]", "-", str(raw or "labelstudio"))[:100].strip(" -") or "labelstudio"
    return name if NAME_RE.match(name) else f"ls-{name}"[:100]


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _read_annotation(ann: dict[str, Any]) -> tuple[str | None, list[str], str, str | None]:
    verdict, reasons, comments, concept = None, [], [], None
    for r in ann.get("result") or []:
        value = r.get("value") or {}
        if r.get("type") == "choices":
            choices = [str(c) for c in value.get("choices") or []]
            hits = [FROM_LS[c.lower()] for c in choices if c.lower() in FROM_LS]
            if hits:
                verdict = hits[0]
            elif r.get("from_name") == "reasons":
                reasons += choices
            elif r.get("from_name") == "concept" and choices:
                concept = choices[0]
        elif r.get("type") == "textarea":
            comments += [str(t) for t in value.get("text") or []]
    return verdict, reasons, "\n".join(comments), concept


def _read_tasks(path: Path) -> list[dict[str, Any]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read Label Studio JSON ({exc}); export the project as JSON") from exc
    tasks = raw if isinstance(raw, list) else raw.get("tasks") if isinstance(raw, dict) and "tasks" in raw else [raw]
    if not all(isinstance(t, dict) for t in tasks):
        raise DataError(f"{path}: expected a list of Label Studio tasks (objects with 'data' and 'annotations')")
    return tasks


class _Importer:
    """One import into one batch, inside the caller's transaction."""

    def __init__(self, s: Session, path: Path, batch: Batch, summary: ImportSummary) -> None:
        self.s, self.path, self.batch, self.summary = s, path, batch, summary
        q = select(Image).where(Image.batch_id == batch.id, Image.kind == SAMPLE)
        self.by_name = {im.filename: im for im in s.scalars(q)}
        self.concepts = {(c.name, c.parent) for c in s.scalars(select(Concept).where(Concept.batch_id == batch.id))}
        self.users: dict[str, User] = {}
        self.skipped: Counter = Counter()

    def task(self, task: dict[str, Any]) -> None:
        fname = _file_name(task) or ""
        image = self.by_name.get(fname) or self.by_name.get(UPLOAD_PREFIX.sub("", fname, count=1))
        if image is None:
            self.summary.unmatched.append(str(fname or None))
            return
        self.summary.matched += 1
        for ai, ann in enumerate(task.get("annotations") or []):
            if ann.get("was_cancelled"):
                self.skipped["cancelled"] += 1
            else:
                self.annotation(image, ann, ai)

    def user(self, name: str) -> User:
        user = self.users.get(name) or self.s.scalar(select(User).where(User.name == name))
        if user is None:
            # Imported judges get a token nobody knows; add-reviewer --rotate gives them a link.
            user = User(name=name, role=REVIEWER, token_hash=hash_token(new_token()), created_at=utcnow())
            self.s.add(user)
            self.s.flush()
            self.summary.reviewers.append(name)
        elif user.role != REVIEWER:
            raise DataError(f"{self.path}: annotator {name!r} is an admin here, not a reviewer; rename one of them")
        self.users[name] = user
        return user

    def annotation(self, image: Image, ann: dict[str, Any], index: int) -> None:
        verdict, reasons, comment, concept = _read_annotation(ann)
        if verdict is None:
            self.skipped["no verdict choice"] += 1
            return
        name = _reviewer_name(ann)
        user = self.user(name)
        allowed = set(checklist_for(self.batch, image.declared_class))
        if any(r not in allowed for r in reasons):
            self.skipped["reason tags not on the checklist (dropped)"] += 1
        if concept and (concept, image.declared_class) not in self.concepts:
            self.skipped["unknown concept (dropped)"] += 1
            concept = None
        key = f"labelstudio:{self.batch.name}:{image.filename}:{ann.get('id', index)}:{name}"
        try:
            view = record_verdict(
                self.s,
                user.id,
                request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, key)),
                item=image.uid,
                verdict=verdict,
                reasons=[r for r in reasons if r in allowed],
                comment=comment[:4000],
                concept=concept,
                source="labelstudio",
                require_slot=False,
                created_at=_parse_time(ann.get("created_at")),
            )
        except Conflict:
            self.skipped["already judged here"] += 1
            return
        except Invalid as exc:
            raise DataError(
                f"{self.path}: annotation {ann.get('id', index)} of {image.filename}: {exc}; fix it in "
                "Label Studio (or the JSON) and import again"
            ) from None
        if view.replayed:
            self.skipped["already imported"] += 1
            return
        _take_slot(self.s, image.id, user.id)
        self.summary.imported += 1


def import_labelstudio(store: Store, path: str | Path, *, batch: str) -> ImportSummary:
    """Bring Label Studio judgements into ``batch`` (matched by file name); all or nothing.

    Re-importing the same file is harmless: each annotation maps to a fixed request_id.
    """
    path = Path(path)
    tasks = _read_tasks(path)
    summary = ImportSummary(tasks=len(tasks))
    with store.write() as s:
        importer = _Importer(s, path, get_batch(s, batch), summary)
        for task in tasks:
            importer.task(task)
        if tasks and not summary.matched:
            raise DataError(
                f"{path}: none of the {len(tasks)} tasks names an image of batch {batch!r} "
                f"(first: {summary.unmatched[0]!r}); add-batch the same sample folder first"
            )
    store.static.forget_counts()  # imported judgements took free slots
    summary.skipped = dict(importer.skipped)
    log.info("imported %d Label Studio judgements into batch %r", summary.imported, batch)
    return summary


def _take_slot(s, image_id: int, reviewer_id: int) -> None:
    """Count an imported judgement toward the image's per_image quota when a slot is free."""
    if s.scalar(select(Slot.id).where(Slot.image_id == image_id, Slot.reviewer_id == reviewer_id)):
        return
    slot = s.scalar(
        select(Slot).where(Slot.image_id == image_id, Slot.reviewer_id.is_(None)).order_by(Slot.slot_no).limit(1)
    )
    if slot is not None:
        slot.reviewer_id = reviewer_id
        slot.claimed_at = utcnow()
        s.flush()
