"""Request and response bodies of the JSON API (these models also document it in /openapi.json)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints


def no_control_characters(text: str) -> str:
    bad = CONTROL.search(text)
    if bad:
        raise ValueError(
            f"contains the control character {bad.group()!r} at position {bad.start()}; "
            "only printable text, tabs and line breaks are accepted"
        )
    return text


# C0 controls and DEL, except tab, line feed and carriage return. A NUL makes `grep` call
# votes.csv binary, and PostgreSQL refuses NUL in text columns outright.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CommentText = Annotated[str, AfterValidator(no_control_characters)]

ImageUid = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{1,64}$")]
VerdictWord = Literal["plausible", "implausible", "unsure"]
ReasonTag = Annotated[str, StringConstraints(min_length=1, max_length=60)]
ConceptName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*$", max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConceptOut(BaseModel):
    name: str
    parent: str


class ItemOut(BaseModel):
    """An image to judge. Synthetic images and QC items (real images) look exactly alike."""

    uid: str = Field(description="Opaque image ID; send it back as `item` in POST /api/verdicts")
    declared_class: str
    image_url: str
    references: list[str] = Field(description="URLs of real reference images of the declared class")
    checklist: list[str] = Field(description="Reason tags the reviewer may attach")
    concepts: list[ConceptOut] = Field(description="Optional finer classes of the declared class")


class ProgressOut(BaseModel):
    done: int
    total: int = Field(description="done + what is still open to this reviewer")
    remaining: int


class MeOut(BaseModel):
    name: str
    role: Literal["reviewer", "admin"]


class NextOut(BaseModel):
    item: ItemOut | None = Field(description="null when the queue is empty")
    progress: ProgressOut


class VerdictIn(Strict):
    request_id: UUID = Field(description="Client-generated UUID; retrying with the same id never creates a duplicate")
    item: ImageUid
    verdict: VerdictWord
    reasons: list[ReasonTag] = Field(default_factory=list, max_length=30)
    comment: CommentText = Field(default="", max_length=4000)
    concept: ConceptName | None = None


class VerdictOut(BaseModel):
    id: int
    request_id: str
    item: str
    verdict: VerdictWord
    reasons: list[str]
    comment: str
    concept: str | None
    created_at: datetime
    undone: bool
    replayed: bool = Field(description="true when this answers a retry of an already stored request")


class VerdictResult(BaseModel):
    verdict: VerdictOut
    next: ItemOut | None
    progress: ProgressOut


class UndoIn(Strict):
    request_id: UUID | None = Field(default=None, description="Makes the undo idempotent when retried")


class UndoOut(BaseModel):
    undone: VerdictOut | None = Field(description="The verdict that was undone; null when there was none")
    next: ItemOut | None
    progress: ProgressOut


class ConceptIn(Strict):
    batch: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    name: ConceptName
    parent: Annotated[str, StringConstraints(min_length=1, max_length=200)]


class PersonIn(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    role: Literal["reviewer", "admin"] = "reviewer"
    rotate: bool = Field(default=False, description="Issue a new link for an existing person (revokes the old one)")


class PersonLinkOut(BaseModel):
    name: str
    role: str
    link: str = Field(description="Private link; shown once, only a hash of its token is stored")


class BatchStats(BaseModel):
    name: str
    per_image: int
    qc_share: float
    samples: int
    qc: int
    references: int
    concepts: list[ConceptOut]
    created_at: datetime


class Totals(BaseModel):
    images: int
    required: int
    done: int
    qc_done: int
    plausibility_rate: float | None


class QCStats(BaseModel):
    n: int
    plausible: int
    implausible: int
    unsure: int
    accuracy: float | None = Field(description="plausible / (plausible + implausible) on real images")


class ReviewerStats(BaseModel):
    name: str
    done: int
    samples_done: int
    claimed: int
    last_verdict_at: datetime | None
    qc: QCStats


class ClassStats(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class")
    images: int
    required: int
    done: int
    plausible: int
    implausible: int
    unsure: int
    plausibility_rate: float | None


class PairKappa(BaseModel):
    a: str
    b: str
    n: int
    agreement: float
    kappa: float | None


class FleissOut(BaseModel):
    kappa: float | None
    images: int
    ratings_per_image: int | None


class AgreementOut(BaseModel):
    cohen: list[PairKappa]
    fleiss: FleissOut
    categories: list[str]


class CommentOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    reviewer: str
    class_: str = Field(alias="class")
    kind: Literal["sample", "qc"] = Field(description="qc: a real image shown as if synthetic")
    verdict: VerdictWord
    comment: str
    image_url: str
    created_at: datetime


class StatsOut(BaseModel):
    batches: list[BatchStats]
    totals: Totals
    reviewers: list[ReviewerStats]
    classes: list[ClassStats]
    agreement: AgreementOut
    comments: list[CommentOut] = Field(description="The newest comments (up to 200), newest first")
