"""Hardening against hostile requests: bounded bodies, authentication before reading them,
the CSRF header rule for every credential combination, invite links, login CSRF."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from review_helpers import FROM_MAIL, bearer

from clinalign.review.app import create_app

MAX_BODY_BYTES = 128 * 1024  # the limit docs/review.md states

CHUNK = 64 * 1024


@pytest.fixture
def db_url(sqlite_url):
    """What is checked here happens before or around the database; SQLite is enough."""
    return sqlite_url


@pytest.fixture
def app(study):
    return create_app(study.store.url, store=study.store)


def asgi_post(app, path: str, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, int]:
    """POST straight into the ASGI app with a lazily produced body; returns (status, bytes the
    app pulled from the client). Nothing is buffered on the way, unlike a test client."""
    pulled = 0

    async def receive():
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), pulled


def body(megabytes: int) -> Iterator[bytes]:
    return (b"x" * CHUNK for _ in range(megabytes * 1024 * 1024 // CHUNK))


JSON = {"Content-Type": "application/json"}


def test_bodies_are_refused_early_and_read_only_after_authentication(app, study):
    alice = bearer(study.tokens["alice"])
    # No token, no Content-Length (chunked): refused before a single byte is read.
    assert asgi_post(app, "/api/verdicts", JSON, body(64)) == (401, 0)
    assert asgi_post(app, "/api/admin/people", JSON, body(64)) == (401, 0)
    # No token, a declared 300 MB: refused on the header alone.
    assert asgi_post(app, "/api/verdicts", {**JSON, "Content-Length": str(300 << 20)}, body(64)) == (413, 0)
    # A valid token, a declared 50 MB: refused on the header alone.
    assert asgi_post(app, "/api/verdicts", {**JSON, **alice, "Content-Length": str(50 << 20)}, body(50)) == (413, 0)
    # A valid token, 50 MB streamed without Content-Length: cut off at the limit.
    status, pulled = asgi_post(app, "/api/verdicts", {**JSON, **alice}, body(50))
    assert status == 413 and pulled <= MAX_BODY_BYTES + CHUNK
    # A lying Content-Length is no way round the streamed cap.
    status, pulled = asgi_post(app, "/api/verdicts", {**JSON, **alice, "Content-Length": "100"}, body(50))
    assert status == 413 and pulled <= MAX_BODY_BYTES + CHUNK


def test_a_largest_legitimate_verdict_fits_the_limit(app, study):
    with TestClient(app) as client:
        item = client.get("/api/next", headers=bearer(study.tokens["alice"])).json()["item"]
        verdict = {
            "request_id": str(uuid.uuid4()),
            "item": item["uid"],
            "verdict": "implausible",
            "reasons": item["checklist"],
            # 4,000 characters outside the BMP, which ASCII-only JSON escapes to 12 bytes each.
            "comment": "\U0001f52c" * 4000,
        }
        content = json.dumps(verdict).encode()
        assert 48_000 < len(content) < MAX_BODY_BYTES
        r = client.post("/api/verdicts", content=content, headers={**JSON, **bearer(study.tokens["alice"])})
        assert r.status_code == 200, r.text


AUTH_VARIANTS = {
    "none": {},
    "basic": {"Authorization": "Basic x"},
    "bearer-empty": {"Authorization": "Bearer "},
    "bearer-bad": {"Authorization": "Bearer " + "x" * 43},
    "bearer-ok": {"Authorization": "Bearer {alice}"},
    "token-empty": {"X-Clinalign-Token": ""},
    "token-bad": {"X-Clinalign-Token": "x" * 43},
    "token-ok": {"X-Clinalign-Token": "{alice}"},
}
XRW_VARIANTS = {"absent": {}, "wrong": {"X-Requested-With": "XMLHttpRequest"}, "ok": {"X-Requested-With": "clinalign"}}


def expected(auth: str, xrw: str) -> int:
    """The documented rule: a request that presents a token header (Bearer or X-Clinalign-Token)
    is judged by that token alone; otherwise the cookie authenticates it, and then a
    state-changing request must also send X-Requested-With: clinalign."""
    if auth.startswith(("bearer", "token")):
        return 200 if auth.endswith("-ok") else 401
    return 200 if xrw == "ok" else 403


def test_the_csrf_header_rule_holds_for_every_credential_combination(app, study):
    alice = study.tokens["alice"]
    with TestClient(app) as client:
        assert client.get(f"/r/{alice}", headers=FROM_MAIL).status_code == 200  # the browser holds her cookie
        assert client.cookies.get("clinalign_session") == alice
        for auth, credentials in AUTH_VARIANTS.items():
            for xrw, extra in XRW_VARIANTS.items():
                headers = {k: v.format(alice=alice) for k, v in credentials.items()} | extra
                r = client.post("/api/undo", headers=headers)
                assert r.status_code == expected(auth, xrw), (auth, xrw, r.status_code, r.text)


def invite(client, study, host: str):
    return client.post(
        "/api/admin/people",
        json={"name": f"carol-{uuid.uuid4().hex[:6]}"},
        headers={**bearer(study.admin_token), "Host": host},
    )


def test_invite_links_use_the_configured_base_url_not_the_host_header(study):
    app = create_app(study.store.url, store=study.store, base_url="https://review.lab.example/")
    with TestClient(app) as client:
        for host in ("evil.example", "review.lab.example", "127.0.0.1:8000"):
            r = invite(client, study, host)
            assert r.status_code == 201, r.text
            assert r.json()["link"].startswith("https://review.lab.example/r/"), r.json()


def test_without_a_base_url_unknown_hosts_get_no_link(app, study):
    from sqlalchemy import func, select

    from clinalign.review.db import User

    with TestClient(app) as client:
        with study.store.read() as s:
            before = s.scalar(select(func.count()).select_from(User))
        r = invite(client, study, "evil.example")
        assert r.status_code == 409 and "--base_url" in r.json()["detail"]
        with study.store.read() as s:
            assert s.scalar(select(func.count()).select_from(User)) == before  # nobody half-invited
        r = invite(client, study, "127.0.0.1:8000")
        assert r.status_code == 201 and r.json()["link"].startswith("http://127.0.0.1:8000/r/")


def test_a_private_link_opened_from_another_site_asks_before_signing_in(app, study):
    """Login CSRF: a page elsewhere must not sign a visitor in as someone else (e.g. the
    attacker's own reviewer account, to collect the victim's judgements) without a click."""
    token = study.tokens["alice"]
    for fetch_site in ("cross-site", "same-site", None):
        with TestClient(app) as client:
            headers = {"Sec-Fetch-Site": fetch_site} if fetch_site else {}
            r = client.get(f"/r/{token}", headers=headers)
            assert r.status_code == 200 and "set-cookie" not in r.headers, fetch_site
            assert 'method="post"' in r.text and "alice" in r.text
            assert client.get("/api/me").status_code == 401
    # The confirm step is a same-origin form post; one from elsewhere is refused.
    with TestClient(app) as client:
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
            r = client.post(f"/r/{token}", headers=headers)
            assert r.status_code == 403 and "set-cookie" not in r.headers, headers
        r = client.post(f"/r/{token}", headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200 and r.headers["set-cookie"].startswith("clinalign_session=")
        assert client.get("/api/me").json()["name"] == "alice"
        # Switching to another link from this page works too (a cookie is already there).
        r = client.post(
            f"/r/{study.tokens['bob']}", headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        )
        assert r.status_code == 200 and client.get("/api/me").json()["name"] == "bob"
        assert client.post("/r/" + "x" * 43, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 401
    # Opened from the mail client or the address bar (Sec-Fetch-Site: none): signed in at once.
    with TestClient(app) as client:
        r = client.get(f"/r/{token}", headers={"Sec-Fetch-Site": "none"})
        assert r.headers["set-cookie"].startswith("clinalign_session=")
        assert client.get("/api/me").json()["name"] == "alice"
