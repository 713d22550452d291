"""The FastAPI app: reviewer page, admin dashboard, and the JSON API they (and scripts) use."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import select

from .. import __version__
from ..errors import ClinalignError
from . import ingest, queue, stats
from .auth import COOKIE, COOKIE_MAX_AGE, Principal, admin, csrf_refusal, current_principal, lookup, reviewer
from .db import Blob, Image, Store
from .problems import Conflict, Forbidden, Invalid, NotFound
from .schemas import (
    ConceptIn,
    ConceptOut,
    ImageUid,
    ItemOut,
    MeOut,
    NextOut,
    PersonIn,
    PersonLinkOut,
    ProgressOut,
    StatsOut,
    UndoIn,
    UndoOut,
    VerdictIn,
    VerdictOut,
    VerdictResult,
)

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
STATUS = {NotFound: 404, Forbidden: 403, Conflict: 409, Invalid: 422}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}

DESCRIPTION = """
Expert feedback on synthetic medical images. A reviewer asks for the next image
(`GET /api/next`), posts a verdict (`POST /api/verdicts`, idempotent by `request_id`),
may undo (`POST /api/undo`). Admins read `GET /api/admin/stats` and add concepts and people.

**Auth**: `Authorization: Bearer <token>` or `X-Clinalign-Token: <token>`; browsers use the
cookie set by opening a private link `/r/<token>` and must then send
`X-Requested-With: clinalign` on POST.
"""


def _item_out(item: queue.ItemView | None) -> ItemOut | None:
    if item is None:
        return None
    return ItemOut(
        uid=item.uid,
        declared_class=item.declared_class,
        image_url=f"/api/images/{item.uid}",
        references=[f"/api/images/{u}" for u in item.references],
        checklist=item.checklist,
        concepts=[ConceptOut(**c) for c in item.concepts],
    )


def _progress_out(p: queue.ProgressView) -> ProgressOut:
    return ProgressOut(done=p.done, total=p.total, remaining=p.remaining)


def _verdict_out(v: queue.VerdictView) -> VerdictOut:
    return VerdictOut(**v.__dict__)


def _login_page(target: str, name: str) -> str:
    # Not a 303 redirect: browsers withhold SameSite=Strict cookies on a redirect chain that
    # began on another site (the mail client), so the landing page would look logged out.
    # A same-site navigation started by this page carries the cookie.
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="0;url={target}"><title>Signing in…</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body class="centered"><main><p>Signed in as <strong>{html.escape(name)}</strong>.
<a href="{target}">Continue</a></p></main></body></html>"""


def create_app(db_url: str, *, trusted_origins: list[str] | None = None, store: Store | None = None) -> FastAPI:
    """Build the app for one feedback database (created if missing)."""
    store = store or Store(db_url)
    trusted = frozenset(o.rstrip("/") for o in trusted_origins or [])
    app = FastAPI(
        title="clinalign expert review",
        version=__version__,
        description=DESCRIPTION,
        # FastAPI's Swagger page loads its scripts from a CDN; /docs is our own offline page.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refusal = csrf_refusal(request, trusted)
        if refusal:
            response: Response = JSONResponse({"detail": refusal}, status_code=status.HTTP_403_FORBIDDEN)
        else:
            response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith("/api/") and "cache-control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(ClinalignError)
    async def problem(request: Request, exc: ClinalignError):
        code = next((c for t, c in STATUS.items() if isinstance(exc, t)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=code)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ---------------------------------------------------------------- pages
    @app.get("/", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC / "review.html", headers={"Cache-Control": "no-cache"})

    @app.get("/admin", include_in_schema=False)
    def admin_page() -> FileResponse:
        return FileResponse(STATIC / "admin.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    @app.get("/r/{token}", include_in_schema=False)
    def open_link(token: str, request: Request) -> HTMLResponse:
        principal = lookup(store, token)
        headers = {"Cache-Control": "no-store"}
        if principal is None:
            return HTMLResponse(
                "<!doctype html><title>Link not valid</title><link rel=stylesheet href=/static/style.css>"
                "<body class=centered><main><h1>This link is not valid</h1><p>Ask your study "
                "coordinator for a new private link.</p></main>",
                status_code=401,
                headers=headers,
            )
        target = "/admin" if principal.role == "admin" else "/"
        response = HTMLResponse(_login_page(target, principal.name), headers=headers)
        response.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_MAX_AGE,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    # ---------------------------------------------------------------- reviewer API
    @app.get("/api/me", response_model=MeOut, tags=["session"])
    def me(p: Annotated[Principal, Depends(current_principal)]) -> MeOut:
        """Who the token belongs to."""
        return MeOut(name=p.name, role=p.role)  # type: ignore[arg-type]

    @app.post("/api/logout", status_code=204, tags=["session"])
    def logout() -> Response:
        """Forget the browser's session cookie."""
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.get("/api/next", response_model=NextOut, tags=["review"])
    def next_item(p: Annotated[Principal, Depends(reviewer)]) -> NextOut:
        """The image to judge now: the reviewer's open one, else a newly claimed one."""
        with store.write() as s:
            image = queue.next_image(s, p.id)
            item = queue.item_view(s, image) if image else None
            prog = queue.progress(s, p.id)
        return NextOut(item=_item_out(item), progress=_progress_out(prog))

    @app.get("/api/progress", response_model=ProgressOut, tags=["review"])
    def progress(p: Annotated[Principal, Depends(reviewer)]) -> ProgressOut:
        with store.read() as s:
            return _progress_out(queue.progress(s, p.id))

    @app.post("/api/verdicts", response_model=VerdictResult, tags=["review"])
    def post_verdict(body: VerdictIn, p: Annotated[Principal, Depends(reviewer)]) -> VerdictResult:
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
        return VerdictResult(verdict=_verdict_out(v), next=_item_out(item), progress=_progress_out(prog))

    @app.post("/api/undo", response_model=UndoOut, tags=["review"])
    def undo(p: Annotated[Principal, Depends(reviewer)], body: UndoIn | None = None) -> UndoOut:
        """Undo your most recent verdict; its image becomes your next image again."""
        rid = str(body.request_id) if body and body.request_id else None
        with store.write() as s:
            v = queue.undo_last(s, p.id, rid)
            image = queue.holds_slot(s, p.id, v.item) if v else None
            image = image or queue.next_image(s, p.id)
            item = queue.item_view(s, image) if image else None
            prog = queue.progress(s, p.id)
        return UndoOut(undone=_verdict_out(v) if v else None, next=_item_out(item), progress=_progress_out(prog))

    @app.get(
        "/api/images/{uid}",
        tags=["review"],
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "The image bytes"}},
        response_class=Response,
    )
    def get_image(
        uid: Annotated[ImageUid, PathParam(description="Opaque image ID from an item")],
        p: Annotated[Principal, Depends(current_principal)],
    ) -> Response:
        """Image bytes by opaque ID (from the database; never a file path)."""
        with store.read() as s:
            row = s.execute(
                select(Blob.data, Blob.media_type).join(Image, Image.blob_sha == Blob.sha256).where(Image.uid == uid)
            ).first()
        if row is None:
            raise HTTPException(404, "no such image")
        return Response(
            content=row.data,
            media_type=row.media_type,
            headers={"Cache-Control": "private, max-age=86400, immutable"},
        )

    # ---------------------------------------------------------------- admin API
    @app.get("/api/admin/stats", response_model=StatsOut, tags=["admin"])
    def admin_stats(
        p: Annotated[Principal, Depends(admin)],
        batch: Annotated[str | None, Query(max_length=100, description="Limit to one batch")] = None,
    ) -> dict:
        """Progress per reviewer and class, plausibility per class, Cohen's and Fleiss' kappa,
        and each reviewer's accuracy on QC items (real images that should be judged plausible)."""
        with store.read() as s:
            return stats.dashboard(s, batch)

    @app.post("/api/admin/concepts", response_model=ConceptOut, status_code=201, tags=["admin"])
    def add_concept(body: ConceptIn, p: Annotated[Principal, Depends(admin)]) -> ConceptOut:
        """Add a finer class (e.g. ``neutrophil-band``) under a parent class of a batch."""
        c = ingest.add_concept(store, body.batch, body.name, body.parent)
        return ConceptOut(name=c.name, parent=c.parent)

    @app.post("/api/admin/people", response_model=PersonLinkOut, status_code=201, tags=["admin"])
    def add_person(body: PersonIn, request: Request, p: Annotated[Principal, Depends(admin)]) -> PersonLinkOut:
        """Create a reviewer (or admin) and return their private link (shown only now)."""
        token = ingest.add_user(store, body.name, body.role, rotate=body.rotate)
        base = str(request.base_url).rstrip("/")
        return PersonLinkOut(name=body.name, role=body.role, link=ingest.private_link(base, token))

    return app
