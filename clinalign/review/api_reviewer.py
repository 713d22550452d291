"""The reviewer's JSON API: who am I, the next image, verdicts, undo, progress, image bytes.

The routes that write (next, verdicts, undo) are coroutines that hand their one transaction to
``Store.run``: on SQLite the writer thread commits concurrent verdicts together (one fsync for
the batch); the answer comes back only once the commit is durable.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from . import queue
from .auth import COOKIE, Principal, current_principal, reviewer
from .db import Blob, Image, Store
from .images import MEDIA_TYPE, ServedImages, blind_png
from .schemas import ImageUid, MeOut, NextOut, ProgressOut, UndoIn, UndoOut, VerdictIn, VerdictResult
from .web import get_store, item_out, progress_out, verdict_out

router = APIRouter(prefix="/api")

Reviewer = Annotated[Principal, Depends(reviewer)]
AnyPrincipal = Annotated[Principal, Depends(current_principal)]
StoreDep = Annotated[Store, Depends(get_store)]


def json_response(model: BaseModel) -> Response:
    # Serialised once, by pydantic; returning the model would make FastAPI validate it again.
    return Response(model.model_dump_json(), media_type="application/json")


@router.get("/me", response_model=MeOut, tags=["session"])
async def me(p: AnyPrincipal) -> MeOut:
    """Who the token belongs to."""
    return MeOut(name=p.name, role=p.role)  # type: ignore[arg-type]


@router.post("/logout", status_code=204, tags=["session"])
async def logout() -> Response:
    """Forget the browser's session cookie."""
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


def next_transaction(s: Session, reviewer_id: int) -> NextOut:
    image = queue.next_row(s, reviewer_id)
    item = queue.item_view(s, image) if image else None
    return NextOut(item=item_out(item), progress=progress_out(queue.progress(s, reviewer_id)))


@router.get("/next", response_model=NextOut, tags=["review"])
async def next_item(p: Reviewer, store: StoreDep) -> Response:
    """The image to judge now: the reviewer's open one, else a newly claimed one."""
    return json_response(await store.run(lambda s: next_transaction(s, p.id)))


@router.get("/progress", response_model=ProgressOut, tags=["review"])
def progress(p: Reviewer, store: StoreDep) -> ProgressOut:
    with store.read() as s:
        return progress_out(queue.progress(s, p.id))


def verdict_transaction(s: Session, reviewer_id: int, body: VerdictIn) -> VerdictResult:
    """Everything POST /api/verdicts does inside its one transaction (bench/review_load.py
    --mode profile times these steps)."""
    v = queue.record_verdict(
        s,
        reviewer_id,
        request_id=str(body.request_id),
        item=body.item,
        verdict=body.verdict,
        reasons=body.reasons,
        comment=body.comment,
        concept=body.concept,
    )
    image = queue.next_row(s, reviewer_id)
    item = queue.item_view(s, image) if image else None
    prog = queue.progress(s, reviewer_id)
    return VerdictResult(verdict=verdict_out(v), next=item_out(item), progress=progress_out(prog))


@router.post("/verdicts", response_model=VerdictResult, tags=["review"])
async def post_verdict(body: VerdictIn, p: Reviewer, store: StoreDep) -> Response:
    """Record a verdict on an image in your queue. Idempotent by ``request_id``: a retry
    returns the stored verdict (``replayed: true``) and never adds a second one. The
    response already carries the next image, saving a round trip."""
    return json_response(await store.run(lambda s: verdict_transaction(s, p.id, body)))


def undo_transaction(s: Session, reviewer_id: int, request_id: str | None) -> UndoOut:
    v = queue.undo_last(s, reviewer_id, request_id)
    image = queue.holds_slot(s, reviewer_id, v.item) if v else None
    image = image or queue.next_row(s, reviewer_id)
    item = queue.item_view(s, image) if image else None
    prog = queue.progress(s, reviewer_id)
    return UndoOut(undone=verdict_out(v) if v else None, next=item_out(item), progress=progress_out(prog))


@router.post("/undo", response_model=UndoOut, tags=["review"])
async def undo(p: Reviewer, store: StoreDep, body: UndoIn | None = None) -> Response:
    """Undo your most recent verdict; its image becomes your next image again."""
    rid = str(body.request_id) if body and body.request_id else None
    return json_response(await store.run(lambda s: undo_transaction(s, p.id, rid)))


_BLOB_BY_UID = (
    select(Blob.__table__.c.data)
    .join_from(Image.__table__, Blob.__table__, Image.__table__.c.blob_sha == Blob.__table__.c.sha256)
    .where(Image.__table__.c.uid == bindparam("uid"))
)


def _blind_image(store: Store, uid: str) -> bytes | None:
    # A plain connection, not a Session: each image is read once, so this runs once per image.
    with store.engine.connect() as conn:
        raw = conn.execute(_BLOB_BY_UID, {"uid": uid}).scalar()
    return None if raw is None else blind_png(raw)


@router.get(
    "/images/{uid}",
    tags=["review"],
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "The image, re-encoded (see below)"}},
    response_class=Response,
)
async def get_image(
    uid: Annotated[ImageUid, PathParam(description="Opaque image ID from an item")],
    p: AnyPrincipal,
    request: Request,
    store: StoreDep,
) -> Response:
    """Image by opaque ID (from the database; never a file path). Every image is served as an
    uncompressed RGB PNG without metadata, so its size depends only on its width and height and
    real (QC) images cannot be told from synthetic ones by their bytes."""
    cache: ServedImages = request.app.state.images
    data = cache.get(uid)
    if data is None:
        data = await run_in_threadpool(_blind_image, store, uid)
        if data is None:
            raise HTTPException(404, "no such image")
        cache.put(uid, data)
    return Response(content=data, media_type=MEDIA_TYPE, headers={"Cache-Control": "private, max-age=86400, immutable"})
