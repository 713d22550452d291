"""Export judgements as the seed's feedback folders (``CLASS/align``, ``CLASS/notalign``) + votes.csv.

File names are the original sample file names, so the reward CSV IDs match. The folder appears
all at once (``clinalign.utils.fileio.atomic_directory``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import ClinalignError, DataError
from ..utils.fileio import atomic_directory
from .db import IMPLAUSIBLE, PLAUSIBLE, REVIEWER, SAMPLE, Blob, Concept, Image, Store, User, Verdict
from .ingest import get_batch
from .problems import NotFound

log = logging.getLogger(__name__)

ALIGN, NOTALIGN = "align", "notalign"
VOTE_COLUMNS = ["ID", "class", "reviewer", "verdict", "reasons", "comment", "concept", "time"]
# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP
# "CSV injection"); such cells are written with a leading apostrophe, which shows it as text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: str) -> str:
    # NUL was accepted in comments before the API refused it; a NUL makes tools call the file binary.
    value = value.replace("\x00", "")
    return "'" + value if value.startswith(FORMULA_START) else value


@dataclass(frozen=True)
class Ballot:
    reviewer: str
    verdict: str
    concept: str | None = None


@dataclass
class Decision:
    folder: str | None  # ALIGN, NOTALIGN, or None when the rule cannot decide
    concept: str | None = None
    why_excluded: str | None = None


def parse_rule(rule: str) -> tuple[str, str | None]:
    if rule in ("majority", "unanimous"):
        return rule, None
    if rule.startswith("reviewer:") and rule[len("reviewer:") :]:
        return "reviewer", rule[len("reviewer:") :]
    raise ClinalignError(f"--rule {rule!r}: use majority, unanimous or reviewer:NAME")


def _concept_of(agreeing: list[Ballot]) -> str | None:
    """A concept is assigned only when a strict majority of the deciding votes name it."""
    if not agreeing:
        return None
    concept, n = Counter(b.concept for b in agreeing).most_common(1)[0]
    return concept if concept and n * 2 > len(agreeing) else None


def decide(rule: str, ballots: list[Ballot]) -> Decision:
    kind, who = parse_rule(rule)
    if not ballots:
        return Decision(None, why_excluded="no votes")
    if kind == "reviewer":
        mine = [b for b in ballots if b.reviewer == who]
        if not mine:
            return Decision(None, why_excluded=f"not judged by {who}")
        ballots = mine
    plausible = [b for b in ballots if b.verdict == PLAUSIBLE]
    implausible = [b for b in ballots if b.verdict == IMPLAUSIBLE]
    if not plausible and not implausible:
        return Decision(None, why_excluded="unsure")
    if kind == "unanimous" and len({b.verdict for b in ballots}) > 1:
        # An "unsure" breaks unanimity too: unanimous means every judge said the same thing.
        return Decision(None, why_excluded="not unanimous")
    if len(plausible) == len(implausible):
        return Decision(None, why_excluded="tie")
    agreeing = plausible if len(plausible) > len(implausible) else implausible
    folder = ALIGN if agreeing is plausible else NOTALIGN
    return Decision(folder, concept=_concept_of(agreeing))


@dataclass
class ExportSummary:
    out: str
    rule: str
    images: int = 0
    exported: int = 0
    folders: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    votes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty folder without ``--overwrite``, before any work is done."""
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise ClinalignError(f"{out}: already exists and is not empty; pass --overwrite or choose another --out")
    if not out.parent.is_dir():
        raise ClinalignError(f"{out.parent}: folder does not exist; create it first")


def unique_file_names(images: list[Image]) -> None:
    seen: dict[str, int] = {}
    for im in images:
        if seen.setdefault(im.filename, im.batch_id) != im.batch_id:
            raise DataError(
                f"{im.filename}: appears in more than one batch; export one batch at a time with --batch NAME"
            )


@dataclass
class _Judged:
    """What an export reads from the database: sample images, their current votes, concept parents."""

    images: list[Image]
    votes: dict[int, list[tuple[Verdict, str]]]
    concept_parent: dict[str, str]


def _read_judged(s: Session, batch_ids: list[int] | None) -> _Judged:
    q = select(Image).where(Image.kind == SAMPLE).order_by(Image.batch_id, Image.filename)
    vq = (
        select(Verdict, User.name)
        .join(User, User.id == Verdict.reviewer_id)
        .join(Image, Image.id == Verdict.image_id)
        .where(Verdict.undone_at.is_(None), Image.kind == SAMPLE)
        .order_by(Verdict.created_at, Verdict.id)
    )
    cq = select(Concept.name, Concept.parent)
    if batch_ids:
        q, vq, cq = (
            q.where(Image.batch_id.in_(batch_ids)),
            vq.where(Image.batch_id.in_(batch_ids)),
            cq.where(Concept.batch_id.in_(batch_ids)),
        )
    images = list(s.scalars(q))
    unique_file_names(images)
    votes: dict[int, list[tuple[Verdict, str]]] = defaultdict(list)
    for v, name in s.execute(vq):
        votes[v.image_id].append((v, name))
    # A concept folder must say whose refinement it is (concepts.json), or later stages cannot
    # tell a concept from a class whose real images are missing.
    concept_parent: dict[str, str] = {}
    for name, parent in s.execute(cq):
        if concept_parent.setdefault(name, parent) != parent:
            raise DataError(
                f"concept {name!r} has parent {concept_parent[name]!r} in one batch and {parent!r} "
                "in another; export one batch at a time with --batch NAME"
            )
    return _Judged(images, votes, concept_parent)


def _write_folders(s: Session, tmp: Path, rule: str, judged: _Judged, summary: ExportSummary) -> dict[str, str]:
    """Copy each decided image into LABEL/align or LABEL/notalign; returns the concepts used."""
    folders: Counter = Counter()
    excluded: Counter = Counter()
    exported_concepts: dict[str, str] = {}
    for im in judged.images:
        d = decide(rule, [Ballot(name, v.verdict, v.concept) for v, name in judged.votes.get(im.id, [])])
        if d.folder is None:
            excluded[d.why_excluded or "undecided"] += 1
            continue
        label = d.concept or im.declared_class
        if d.concept:
            exported_concepts[d.concept] = judged.concept_parent.get(d.concept) or im.declared_class
        target = tmp / label / d.folder
        target.mkdir(parents=True, exist_ok=True)
        data = s.scalar(select(Blob.data).where(Blob.sha256 == im.blob_sha))
        with open(target / im.filename, "xb") as f:
            f.write(data or b"")
        folders[f"{label}/{d.folder}"] += 1
    summary.exported = sum(folders.values())
    summary.folders = dict(sorted(folders.items()))
    summary.excluded = dict(sorted(excluded.items()))
    return exported_concepts


def _write_votes(path: Path, judged: _Judged) -> int:
    rows = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(VOTE_COLUMNS)
        for im in judged.images:
            for v, name in judged.votes.get(im.id, []):
                reasons = ";".join(json.loads(v.reasons or "[]"))
                row = [im.filename, im.declared_class, name, v.verdict, reasons, v.comment, v.concept, v.created_at]
                w.writerow([csv_safe(str(c) if c is not None else "") for c in row[:7]] + [row[7].isoformat()])
                rows += 1
        f.flush()
        os.fsync(f.fileno())
    return rows


def export_feedback(
    store: Store,
    out: str | Path,
    *,
    rule: str = "majority",
    batch: str | None = None,
    overwrite: bool = False,
) -> ExportSummary:
    """Write the feedback folders and votes.csv for ``batch`` (default: all batches) to ``out``."""
    out = Path(out).expanduser().resolve()
    kind, who = parse_rule(rule)
    check_out_folder(out, overwrite)
    with store.read() as s:
        batch_ids = [get_batch(s, batch).id] if batch else None
        if kind == "reviewer" and s.scalar(select(User.id).where(User.name == who, User.role == REVIEWER)) is None:
            raise NotFound(f"--rule {rule}: no reviewer named {who!r}")
        judged = _read_judged(s, batch_ids)
        summary = ExportSummary(out=str(out), rule=rule, images=len(judged.images))
        with atomic_directory(out) as tmp:
            exported_concepts = _write_folders(s, tmp, rule, judged, summary)
            summary.votes = _write_votes(tmp / "votes.csv", judged)
            if exported_concepts:
                from ..data.concepts import write_concepts_file

                write_concepts_file(tmp, exported_concepts)
    excluded = sum(summary.excluded.values())
    log.info("exported %d of %d images to %s (%d excluded)", summary.exported, summary.images, out, excluded)
    return summary
