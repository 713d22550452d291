"""The real server (``clinalign review serve`` under uvicorn): what it writes to its log, and
how it answers an oversized request on the wire."""

from __future__ import annotations

import socket
import time

import httpx
from review_helpers import make_study

from clinalign.review.db import Store
from clinalign.review.serverproc import ServerProcess


def test_access_log_never_shows_a_token_and_big_bodies_are_refused_on_the_wire(tmp_path):
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(db)
    study = make_study(store, tmp_path, reviewers=("alice",))
    store.dispose()
    log = tmp_path / "server.log"
    tokens = [study.tokens["alice"], study.admin_token, "Z" * 43]
    with ServerProcess(db, log_path=log, quiet=False) as server:
        with httpx.Client(base_url=server.base_url) as client:
            for token in tokens:
                client.get(f"/r/{token}")
                client.get(f"/r/{token}?from=mail")
                client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
        # A declared 300 MB body without a token: the answer comes before any body is sent.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/verdicts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 314572800\r\n\r\n"
            )
            t0 = time.monotonic()
            head = sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 413"), head[:100]
            assert time.monotonic() - t0 < 5
    text = log.read_text()
    assert text.count("/r/") >= 6, text  # the visits are logged ...
    for token in tokens:
        assert token not in text  # ... without the credential
