"""HTML pages: the reviewer's page, the admin dashboard, the offline API docs, private links."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse

from .auth import COOKIE, COOKIE_MAX_AGE, lookup
from .db import Store
from .web import get_store

STATIC = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


def _login_page(target: str, name: str) -> str:
    # Not a 303 redirect: browsers withhold SameSite=Strict cookies on a redirect chain that
    # began on another site (the mail client), so the landing page would look logged out.
    # A same-site navigation started by this page carries the cookie.
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="0;url={target}"><title>Signing in…</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body class="centered"><main><p>Signed in as <strong>{html.escape(name)}</strong>.
<a href="{target}">Continue</a></p></main></body></html>"""


@router.get("/")
def review_page() -> FileResponse:
    return FileResponse(STATIC / "review.html", headers={"Cache-Control": "no-cache"})


@router.get("/admin")
def admin_page() -> FileResponse:
    return FileResponse(STATIC / "admin.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs")
def docs_page() -> FileResponse:
    return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})


@router.get("/r/{token}")
def open_link(token: str, request: Request, store: Annotated[Store, Depends(get_store)]) -> HTMLResponse:
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


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}
