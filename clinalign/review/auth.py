"""Who is calling, and may they? Tokens by header or cookie; CSRF defences for cookie users.

A token travels as ``Authorization: Bearer <token>``, ``X-Clinalign-Token: <token>`` (scripts),
or the ``clinalign_session`` cookie that opening a private link sets (browsers). The cookie is
HttpOnly + SameSite=Strict; state-changing requests that rely on it must also carry
``X-Requested-With: clinalign`` (a header a cross-site form cannot send, and a cross-site
script cannot send without a CORS preflight we never grant) and must not come from a foreign
Origin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import bindparam, select
from starlette.concurrency import run_in_threadpool

from .db import ADMIN, REVIEWER, Store, User
from .tokens import hash_token, looks_like_token

COOKIE = "clinalign_session"
TOKEN_HEADER = "X-Clinalign-Token"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "clinalign"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE_MAX_AGE = 30 * 24 * 3600
# How long a token's owner is remembered (see KnownTokens).
TOKEN_CACHE_S = 5.0

# How /openapi.json describes the three ways to send a token (see app.openapi_with_security).
SECURITY_SCHEMES = {
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "Reviewer or admin token"},
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": TOKEN_HEADER, "description": "Reviewer or admin token"},
    "APIKeyCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": "Set by opening a private link /r/<token>",
    },
}


@dataclass(frozen=True)
class Principal:
    id: int
    name: str
    role: str


_BY_HASH = select(User.id, User.name, User.role).where(User.token_hash == bindparam("h"))


def lookup(store: Store, token: str | None) -> Principal | None:
    if not token or not looks_like_token(token):
        return None
    with store.read() as s:
        row = s.execute(_BY_HASH, {"h": hash_token(token)}).first()
        return Principal(row.id, row.name, row.role) if row else None


class KnownTokens:
    """Who a token belongs to, remembered for ``ttl`` seconds, so a reviewer's requests do not
    each pay a database read. Only hits are kept (a flood of bad tokens cannot fill it). A link
    re-issued through this app's API is forgotten at once (``forget``); one re-issued from the
    command line (another process) stops working within ``ttl``."""

    def __init__(self, ttl: float = TOKEN_CACHE_S, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._known: dict[str, tuple[Principal, float]] = {}

    def get(self, token_hash: str) -> Principal | None:
        hit = self._known.get(token_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, token_hash: str, principal: Principal) -> None:
        if len(self._known) >= self.max_entries:
            self._known.clear()
        self._known[token_hash] = (principal, time.monotonic() + self.ttl)

    def forget(self) -> None:
        self._known.clear()


async def resolve(request: Request) -> Principal | None:
    """The principal of a request's token: from memory, else from the database off the event loop."""
    token = request_token(request)
    if not token or not looks_like_token(token):
        return None
    known: KnownTokens = request.app.state.tokens
    token_hash = hash_token(token)
    principal = known.get(token_hash)
    if principal is None:
        principal = await run_in_threadpool(lookup, request.app.state.store, token)
        if principal is not None:
            known.put(token_hash, principal)
    return principal


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


async def current_principal(request: Request) -> Principal:
    # The token is read once, by request_credentials, which the gate middleware uses too; the
    # schemes above are declared in /openapi.json by app.openapi_with_security, not as
    # dependencies here (three more dependencies per request cost more than the whole lookup).
    principal = getattr(request.state, "principal", None) or await resolve(request)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid token: open your private link, or send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


async def reviewer(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.role != REVIEWER:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route is for reviewers; admins have no queue")
    return principal


async def admin(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
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
