"""The reviewer's JSON API: who am I, the next image, verdicts, undo, progress, image bytes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from sqlalchemy import select

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


@router.get("/me", response_model=MeOut, tags=["session"])
def me(p: AnyPrincipal) -> MeOut:
    """Who the token belongs to."""
    return MeOut(name=p.name, role=p.role)  # type: ignore[arg-type]


@router.post("/logout", status_code=204, tags=["session"])
def logout() -> Response:
    """Forget the browser's session cookie."""
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/next", response_model=NextOut, tags=["review"])
def next_item(p: Reviewer, store: StoreDep) -> NextOut:
    """The image to judge now: the reviewer's open one, else a newly claimed one."""
    with store.write() as s:
        image = queue.next_image(s, p.id)
        item = queue.item_view(s, image) if image else None
        prog = queue.progress(s, p.id)
    return NextOut(item=item_out(item), progress=progress_out(prog))


@router.get("/progress", response_model=ProgressOut, tags=["review"])
def progress(p: Reviewer, store: StoreDep) -> ProgressOut:
    with store.read() as s:
        return progress_out(queue.progress(s, p.id))


@router.post("/verdicts", response_model=VerdictResult, tags=["review"])
def post_verdict(body: VerdictIn, p: Reviewer, store: StoreDep) -> VerdictResult:
    """Record a verdict on an image in your queue. Idempotent by ``request_id``: a retry
    returns the stored verdict (``replayed: true``) and never adds a second one. The
    response already carries the next image, saving a round trip."""
    with store.write() as s:
        v = queue.record_verdict(
            s,
            p.id,
            request_id=str(body.request_id),
            item=body.item,
            verdict=body.verdict,
            reasons=body.reasons,
            comment=body.comment,
            concept=body.concept,
        )
        image = queue.next_image(s, p.id)
        item = queue.item_view(s, image) if image else None
        prog = queue.progress(s, p.id)
    return VerdictResult(verdict=verdict_out(v), next=item_out(item), progress=progress_out(prog))


@router.post("/undo", response_model=UndoOut, tags=["review"])
def undo(p: Reviewer, store: StoreDep, body: UndoIn | None = None) -> UndoOut:
    """Undo your most recent verdict; its image becomes your next image again."""
    rid = str(body.request_id) if body and body.request_id else None
    with store.write() as s:
        v = queue.undo_last(s, p.id, rid)
        image = queue.holds_slot(s, p.id, v.item) if v else None
        image = image or queue.next_image(s, p.id)
        item = queue.item_view(s, image) if image else None
        prog = queue.progress(s, p.id)
    return UndoOut(undone=verdict_out(v) if v else None, next=item_out(item), progress=progress_out(prog))


@router.get(
    "/images/{uid}",
    tags=["review"],
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "The image, re-encoded (see below)"}},
    response_class=Response,
)
def get_image(
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
        with store.read() as s:
            raw = s.scalar(select(Blob.data).join(Image, Image.blob_sha == Blob.sha256).where(Image.uid == uid))
        if raw is None:
            raise HTTPException(404, "no such image")
        data = blind_png(raw)
        cache.put(uid, data)
    return Response(content=data, media_type=MEDIA_TYPE, headers={"Cache-Control": "private, max-age=86400, immutable"})
