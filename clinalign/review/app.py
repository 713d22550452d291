"""The FastAPI app: reviewer page, admin dashboard, and the JSON API they (and scripts) use.

``create_app`` only assembles: the routers live in ``pages`` (HTML), ``api_reviewer`` and
``api_admin`` (JSON), the request guard in ``middleware``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import ClinalignError
from . import api_admin, api_reviewer, pages
from .auth import SECURITY_SCHEMES, KnownTokens
from .db import Store
from .images import ServedImages
from .middleware import MAX_BODY_BYTES, OPEN_POSTS, SECURITY_HEADERS, Gate
from .pages import STATIC
from .problems import Conflict, Forbidden, Invalid, NotFound
from .web import Settings

log = logging.getLogger(__name__)

__all__ = ["MAX_BODY_BYTES", "SECURITY_HEADERS", "STATIC", "create_app"]

STATUS = {NotFound: 404, Forbidden: 403, Conflict: 409, Invalid: 422}

DESCRIPTION = """
Expert feedback on synthetic medical images. A reviewer asks for the next image
(`GET /api/next`), posts a verdict (`POST /api/verdicts`, idempotent by `request_id`),
may undo (`POST /api/undo`). Admins read `GET /api/admin/stats` and add concepts and people.

**Auth**: `Authorization: Bearer <token>` or `X-Clinalign-Token: <token>`; browsers use the
cookie set by opening a private link `/r/<token>` and must then send
`X-Requested-With: clinalign` on POST.
"""


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    code = next((c for t, c in STATUS.items() if isinstance(exc, t)), 400)
    return JSONResponse({"detail": str(exc)}, status_code=code)


def openapi_with_security(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the token schemes on every route that needs a token."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path, operations in schema["paths"].items():
            if path.startswith("/api/") and path not in OPEN_POSTS:
                for op in operations.values():
                    op["security"] = [{name: []} for name in SECURITY_SCHEMES]
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(
    db_url: str,
    *,
    trusted_origins: list[str] | None = None,
    store: Store | None = None,
    base_url: str | None = None,
) -> FastAPI:
    """Build the app for one feedback database (created if missing). ``base_url`` is the address
    reviewers open (invite links are built on it); without it the admin API makes links only
    for loopback and trusted-origin requests."""
    app = FastAPI(
        title="clinalign expert review",
        version=__version__,
        description=DESCRIPTION,
        # FastAPI's Swagger page loads its scripts from a CDN; /docs is our own offline page.
        docs_url=None,
        redoc_url=None,
    )
    app.state.store = store or Store(db_url)
    app.state.images = ServedImages()
    app.state.tokens = KnownTokens()
    app.state.settings = Settings(
        trusted_origins=frozenset(o.rstrip("/") for o in trusted_origins or []),
        base_url=base_url.rstrip("/") if base_url else None,
    )
    app.add_middleware(Gate, max_body=MAX_BODY_BYTES)
    app.add_exception_handler(ClinalignError, _problem)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.router)
    app.include_router(api_reviewer.router)
    app.include_router(api_admin.router)
    app.openapi = lambda: openapi_with_security(app)  # type: ignore[method-assign]
    return app
