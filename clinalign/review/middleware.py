"""The gate in front of every route (a plain ASGI middleware, so it sees a request before
anything reads its body): size limit, CSRF refusal, authentication of state-changing API calls,
and the security headers on every response."""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import SAFE_METHODS, csrf_refusal, resolve

log = logging.getLogger(__name__)

# The largest valid verdict is about 72 KB (a 4,000-character comment of characters that
# ASCII-only JSON escapes to 12 bytes, 30 reason tags); nothing the API accepts comes near 128 KiB.
MAX_BODY_BYTES = 128 * 1024

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
}
UNAUTHORIZED = "missing or invalid token: open your private link, or send Authorization: Bearer <token>"
# State-changing routes that need no token.
OPEN_POSTS = frozenset({"/api/logout"})


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise HTTPException(400, f"Content-Length {raw!r} is not a number")
    return int(raw)


class Gate:
    """Refuses what can be refused from the headers alone, before the body is read."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        send = _with_security_headers(scope, send)
        try:
            await self._check(request)
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, self._capped(receive), send)

    async def _check(self, request: Request) -> None:
        length = _declared_length(request)
        if length is not None and length > self.max_body:
            raise HTTPException(413, f"request body of {length} bytes; the limit is {self.max_body}")
        if request.method in SAFE_METHODS:
            return
        refusal = csrf_refusal(request, request.app.state.settings.trusted_origins)
        if refusal:
            raise HTTPException(403, refusal)
        path = request.url.path
        if path.startswith("/api/") and path not in OPEN_POSTS:
            # Authenticate before the body is read: an anonymous client cannot make us read one.
            principal = await resolve(request)
            if principal is None:
                raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
            request.state.principal = principal

    def _capped(self, receive: Receive) -> Receive:
        """``receive`` that stops a body at the limit, whatever Content-Length claimed."""
        seen = 0
        limit = self.max_body

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"request body over the {limit} byte limit")
            return message

        return capped


def _with_security_headers(scope: Scope, send: Send) -> Send:
    api = scope["path"].startswith("/api/")

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            for k, v in SECURITY_HEADERS.items():
                headers.setdefault(k, v)
            if api and "cache-control" not in headers:
                headers["Cache-Control"] = "no-store"
        await send(message)

    return wrapped
