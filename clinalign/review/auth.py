"""Who is calling, and may they? Tokens by header or cookie; CSRF defences for cookie users.

A token travels as ``Authorization: Bearer <token>``, ``X-Clinalign-Token: <token>`` (scripts),
or the ``clinalign_session`` cookie that opening a private link sets (browsers). The cookie is
HttpOnly + SameSite=Strict; state-changing requests that rely on it must also carry
``X-Requested-With: clinalign`` (a header a cross-site form cannot send, and a cross-site
script cannot send without a CORS preflight we never grant) and must not come from a foreign
Origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from .db import ADMIN, REVIEWER, Store, User
from .tokens import hash_token, looks_like_token

COOKIE = "clinalign_session"
TOKEN_HEADER = "X-Clinalign-Token"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "clinalign"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE_MAX_AGE = 30 * 24 * 3600

bearer_scheme = HTTPBearer(auto_error=False, description="Reviewer or admin token")
header_scheme = APIKeyHeader(name=TOKEN_HEADER, auto_error=False, description="Reviewer or admin token")
cookie_scheme = APIKeyCookie(name=COOKIE, auto_error=False, description="Set by opening a private link /r/<token>")


@dataclass(frozen=True)
class Principal:
    id: int
    name: str
    role: str


def lookup(store: Store, token: str | None) -> Principal | None:
    if not token or not looks_like_token(token):
        return None
    with store.read() as s:
        user = s.scalar(select(User).where(User.token_hash == hash_token(token)))
        return Principal(user.id, user.name, user.role) if user else None


@dataclass(frozen=True)
class Credentials:
    token: str | None
    source: str  # "header", "cookie" or "none"


def request_credentials(request: Request) -> Credentials:
    """The one token a request is judged by, and where it came from.

    A token header (``Authorization: Bearer``, or ``X-Clinalign-Token`` even when empty) decides
    alone: a bad one is refused, never made good by the cookie. Other ``Authorization`` schemes
    (e.g. Basic, from a reverse proxy) are not ours and are ignored, so the cookie then decides.
    """
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return Credentials(value.strip(), "header")
    if TOKEN_HEADER in request.headers:
        return Credentials(request.headers[TOKEN_HEADER].strip(), "header")
    if COOKIE in request.cookies:
        return Credentials(request.cookies[COOKIE], "cookie")
    return Credentials(None, "none")


def request_token(request: Request) -> str | None:
    return request_credentials(request).token


def current_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    header_token: Annotated[str | None, Security(header_scheme)],
    cookie_token: Annotated[str | None, Security(cookie_scheme)],
) -> Principal:
    # The security schemes are parameters so that /openapi.json documents them; the token is
    # read once, by request_token, which the gate middleware uses too.
    principal = getattr(request.state, "principal", None) or lookup(request.app.state.store, request_token(request))
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid token: open your private link, or send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def reviewer(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.role != REVIEWER:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route is for reviewers; admins have no queue")
    return principal


def admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.role != ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin token required")
    return principal


def _origin_allowed(origin: str, host: str | None, trusted: frozenset[str]) -> bool:
    if origin in trusted:
        return True
    parts = urlsplit(origin)
    return bool(host) and parts.scheme in ("http", "https") and parts.netloc.lower() == (host or "").lower()


def csrf_refusal(request: Request, trusted_origins: frozenset[str] = frozenset()) -> str | None:
    """Why a state-changing request must be refused, or None when it may proceed."""
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("origin")
    if origin is not None and not _origin_allowed(origin, request.headers.get("host"), trusted_origins):
        return f"cross-origin request from {origin!r} refused"
    if request.headers.get("sec-fetch-site") in ("cross-site", "same-site") and origin not in trusted_origins:
        return "cross-site request refused"
    # A private link's confirm step (POST /r/<token>) is a plain form post authenticated by its
    # path; Origin and Sec-Fetch-Site above are what protect it.
    cookie_based = request_credentials(request).source == "cookie" and not request.url.path.startswith("/r/")
    if cookie_based and request.headers.get(CSRF_HEADER) != CSRF_VALUE:
        return f"cookie-authenticated requests must send the header {CSRF_HEADER}: {CSRF_VALUE}"
    return None
