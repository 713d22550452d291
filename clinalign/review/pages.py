"""HTML pages: the reviewer's page, the admin dashboard, the offline API docs, private links."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from .auth import COOKIE, COOKIE_MAX_AGE, Principal, lookup, request_credentials
from .db import ADMIN, REVIEWER, Store
from .web import get_store

STATIC = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


# A navigation the user started here (address bar, bookmark, mail client) or on this origin.
DIRECT = frozenset({"none", "same-origin"})
PAGE_HEADERS = {"Cache-Control": "no-store"}


def _page(title: str, body: str, status_code: int = 200, head: str = "") -> HTMLResponse:
    return HTMLResponse(
        f"""<!doctype html><html lang="en"><head><meta charset="utf-8">{head}
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<link rel="stylesheet" href="/static/style.css"></head>
<body class="centered"><main>{body}</main></body></html>""",
        status_code=status_code,
        headers=PAGE_HEADERS,
    )


def _invalid_link() -> HTMLResponse:
    body = "<h1>This link is not valid</h1><p>Ask your study coordinator for a new private link.</p>"
    return _page("Link not valid", body, 401)


def _confirm_page(token: str, name: str) -> HTMLResponse:
    # A private link opened from another site (a webmail page, or an attacker's page that wants
    # this browser signed in as the attacker: login CSRF) signs in only after this same-origin post.
    who = html.escape(name)
    response = _page(
        "Sign in?",
        f"""<h1>Sign in as {who}?</h1>
<p>This private link belongs to <strong>{who}</strong>. Continue only if it is yours.</p>
<form method="post" action="/r/{html.escape(token)}">
<button class="primary" type="submit">Continue as {who}</button></form>""",
    )
    # With no-referrer (our default) a browser sends "Origin: null" on a form post, which the
    # gate must refuse; same-origin lets the true origin through and still sends nothing away.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _signed_in(request: Request, token: str, principal: Principal) -> HTMLResponse:
    # Not a 303 redirect: browsers withhold SameSite=Strict cookies on a redirect chain that
    # began on another site (the mail client), so the landing page would look logged out.
    # A same-site navigation started by this page carries the cookie.
    target = "/admin" if principal.role == ADMIN else "/"
    response = _page(
        "Signing in…",
        f"""<p>Signed in as <strong>{html.escape(principal.name)}</strong>. <a href="{target}">Continue</a></p>""",
        head=f'<meta http-equiv="refresh" content="0;url={target}">',
    )
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


def _page_for(request: Request, store: Store, role: str, page: str) -> Response:
    """The page, or a redirect to the other one when the signed-in person has the other role."""
    principal = lookup(store, request_credentials(request).token)
    if principal is not None and principal.role != role:
        return RedirectResponse("/admin" if principal.role == ADMIN else "/", status_code=303, headers=PAGE_HEADERS)
    return FileResponse(STATIC / page, headers={"Cache-Control": "no-cache"})


@router.get("/")
def review_page(request: Request, store: Annotated[Store, Depends(get_store)]) -> Response:
    return _page_for(request, store, REVIEWER, "review.html")


@router.get("/admin")
def admin_page(request: Request, store: Annotated[Store, Depends(get_store)]) -> Response:
    return _page_for(request, store, ADMIN, "admin.html")


@router.get("/docs")
def docs_page() -> FileResponse:
    return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})


@router.get("/r/{token}")
def open_link(token: str, request: Request, store: Annotated[Store, Depends(get_store)]) -> HTMLResponse:
    """Sign in at once when the link was opened directly; ask first when another site led here."""
    principal = lookup(store, token)
    if principal is None:
        return _invalid_link()
    if request.headers.get("sec-fetch-site") in DIRECT:
        return _signed_in(request, token, principal)
    return _confirm_page(token, principal.name)


@router.post("/r/{token}")
def confirm_link(token: str, request: Request, store: Annotated[Store, Depends(get_store)]) -> HTMLResponse:
    """The confirm step; the gate has already refused it from a foreign Origin or another site."""
    principal = lookup(store, token)
    return _invalid_link() if principal is None else _signed_in(request, token, principal)


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


@router.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}
