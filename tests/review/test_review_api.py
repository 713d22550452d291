"""The JSON API on a real database (SQLite file; PostgreSQL too when configured)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from review_helpers import FROM_MAIL, bearer, make_study
from sqlalchemy import func, select

from clinalign.review.agreement import cohen_kappa
from clinalign.review.app import STATIC, create_app
from clinalign.review.db import QC, SAMPLE, Blob, Image, Verdict
from clinalign.review.ingest import add_concept


@pytest.fixture
def client(study):
    with TestClient(create_app(study.store.url, store=study.store)) as c:
        yield c


def post_verdict(client, token, item, verdict="plausible", **extra):
    body = {"request_id": str(uuid.uuid4()), "item": item, "verdict": verdict, **extra}
    return client.post("/api/verdicts", json=body, headers=bearer(token))


def next_item(client, token):
    r = client.get("/api/next", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


def judge_all(client, token, choose=lambda item: "plausible"):
    seen = []
    data = next_item(client, token)
    while data["item"]:
        r = post_verdict(client, token, data["item"]["uid"], choose(data["item"]))
        assert r.status_code == 200, r.text
        seen.append(data["item"]["uid"])
        data = {"item": r.json()["next"], "progress": r.json()["progress"]}
    return seen


# ------------------------------------------------------------------------------ auth


def test_tokens_are_required_and_roles_are_separate(client, study):
    assert client.get("/api/next").status_code == 401
    assert client.get("/api/next", headers=bearer("x" * 43)).status_code == 401
    assert client.get("/api/next", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.get("/api/next", headers=bearer(study.admin_token)).status_code == 403
    assert client.get("/api/admin/stats", headers=bearer(study.tokens["alice"])).status_code == 403
    assert client.get("/api/admin/stats").status_code == 401
    assert client.get("/api/admin/stats", headers=bearer(study.admin_token)).status_code == 200
    r = client.get("/api/me", headers={"X-Clinalign-Token": study.tokens["bob"]})
    assert r.json() == {"name": "bob", "role": "reviewer"}


def test_tokens_are_stored_hashed(study):
    from clinalign.review.db import User

    with study.store.read() as s:
        hashes = set(s.scalars(select(User.token_hash)))
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
    assert not hashes & set(study.tokens.values())
    # >= 128 bits of randomness: 32 random bytes, URL-safe base64.
    assert all(len(t) >= 43 for t in study.tokens.values())


# ------------------------------------------------------------------------------ reviewing


def test_verdict_roundtrip_is_idempotent(client, study):
    alice = study.tokens["alice"]
    first = next_item(client, alice)
    assert first["progress"] == {"done": 0, "total": 6, "remaining": 6}
    item = first["item"]
    assert item["checklist"][:3] == ["cell size", "nucleus shape", "chromatin pattern"]
    assert len(item["references"]) == 6 and all(u.startswith("/api/images/") for u in item["references"])
    body = {
        "request_id": str(uuid.uuid4()),
        "item": item["uid"],
        "verdict": "implausible",
        "reasons": ["granules", "cell size"],
        "comment": "too many granules",
    }
    r1 = client.post("/api/verdicts", json=body, headers=bearer(alice))
    assert r1.status_code == 200, r1.text
    out = r1.json()
    assert out["verdict"]["replayed"] is False
    assert out["verdict"]["reasons"] == ["granules", "cell size"]
    assert out["progress"]["done"] == 1
    assert out["next"]["uid"] != item["uid"]
    # A retry (lost response) with the same request_id: same verdict back, nothing new stored.
    r2 = client.post("/api/verdicts", json=body, headers=bearer(alice))
    assert r2.status_code == 200
    assert r2.json()["verdict"]["id"] == out["verdict"]["id"]
    assert r2.json()["verdict"]["replayed"] is True
    with study.store.read() as s:
        assert s.scalar(select(func.count()).select_from(Verdict)) == 1
    # Reusing a request_id for a different verdict is refused.
    r3 = client.post("/api/verdicts", json={**body, "verdict": "plausible"}, headers=bearer(alice))
    assert r3.status_code == 409


def test_undo_and_resume(client, study):
    alice = study.tokens["alice"]
    a = next_item(client, alice)["item"]
    b = post_verdict(client, alice, a["uid"], "plausible", reasons=["granules"]).json()["next"]
    c = post_verdict(client, alice, b["uid"], "implausible").json()["next"]
    rid = str(uuid.uuid4())
    r = client.post("/api/undo", json={"request_id": rid}, headers=bearer(alice))
    assert r.status_code == 200
    assert r.json()["undone"]["item"] == b["uid"]
    assert r.json()["next"]["uid"] == b["uid"]
    assert r.json()["progress"]["done"] == 1
    # Replaying the same undo does not undo a second verdict.
    again = client.post("/api/undo", json={"request_id": rid}, headers=bearer(alice)).json()
    assert again["undone"]["replayed"] is True and again["progress"]["done"] == 1
    # "Reload" / another device: the server-side queue resumes on the undone image.
    with TestClient(client.app) as other:
        assert next_item(other, alice)["item"]["uid"] == b["uid"]
    # Judge it again, then undo twice walks back further; undo on nothing says so.
    post_verdict(client, alice, b["uid"], "unsure")
    client.post("/api/undo", headers=bearer(alice))
    r = client.post("/api/undo", headers=bearer(alice)).json()
    assert r["undone"]["item"] == a["uid"] and r["undone"]["reasons"] == ["granules"]
    assert r["progress"]["done"] == 0
    assert client.post("/api/undo", headers=bearer(alice)).json()["undone"] is None
    assert c["uid"] != a["uid"]


def test_each_image_gets_k_distinct_reviewers(db_url, tmp_path):
    from clinalign.review.db import Store

    store = Store(db_url)
    try:
        study = make_study(store, tmp_path, per_image=2, reviewers=("r1", "r2", "r3"), n=4)
        with TestClient(create_app(store.url, store=store)) as c:
            seen = {r: judge_all(c, t) for r, t in study.tokens.items()}
            for r, t in study.tokens.items():
                assert next_item(c, t)["item"] is None
                assert len(set(seen[r])) == len(seen[r])  # never the same image twice
            counts: dict[str, int] = {}
            for uids in seen.values():
                for u in uids:
                    counts[u] = counts.get(u, 0) + 1
            assert len(counts) == 8 and set(counts.values()) == {2}
    finally:
        store.dispose()


def test_request_validation(client, study):
    alice, bob = study.tokens["alice"], study.tokens["bob"]
    item = next_item(client, alice)["item"]["uid"]
    bad = [
        {"request_id": str(uuid.uuid4()), "item": item, "verdict": "maybe"},
        {"request_id": "not-a-uuid", "item": item, "verdict": "plausible"},
        {"request_id": str(uuid.uuid4()), "item": item, "verdict": "plausible", "extra": 1},
        {"request_id": str(uuid.uuid4()), "item": "../etc/passwd", "verdict": "plausible"},
        {"request_id": str(uuid.uuid4()), "item": item, "verdict": "plausible", "comment": "x" * 5000},
        {"request_id": str(uuid.uuid4()), "item": item, "verdict": "plausible", "concept": "bad_name"},
        {"item": item, "verdict": "plausible"},
    ]
    for body in bad:
        assert client.post("/api/verdicts", json=body, headers=bearer(alice)).status_code == 422, body
    assert (
        client.post(
            "/api/verdicts",
            content=b"{not json",
            headers={**bearer(alice), "Content-Type": "application/json"},
        ).status_code
        == 422
    )
    assert post_verdict(client, alice, item, reasons=["tastes odd"]).status_code == 422
    assert post_verdict(client, alice, item, concept="neutrophil-band").status_code == 422
    assert post_verdict(client, alice, "0" * 24).status_code == 404
    # An image that exists but is not in bob's queue (bob has not claimed it yet).
    assert post_verdict(client, bob, item).status_code == 403
    with study.store.read() as s:
        ref = s.scalar(select(Image.uid).where(Image.kind == "reference"))
    assert post_verdict(client, alice, ref).status_code == 404
    assert post_verdict(client, alice, item).status_code == 200
    # A second verdict on the same image (e.g. from another tab) must go through undo.
    assert post_verdict(client, alice, item, "implausible").status_code == 409


def test_images_are_served_by_id_only(client, study):
    alice = study.tokens["alice"]
    item = next_item(client, alice)["item"]
    r = client.get(item["image_url"], headers=bearer(alice))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get(item["image_url"]).status_code == 401
    for path in [
        "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/images/../../etc/passwd",
        "/api/images/%2Fetc%2Fpasswd",
        "/api/images//etc/passwd",
        "/api/images/a/b",
        "/api/images/..",
        "/api/images/%2e%2e",
        "/api/images/" + str(Path(study.samples).resolve() / "neutrophil_000000.png"),
        "/api/images/neutrophil_000000.png",
        "/api/images/" + "a" * 65,
    ]:
        r = client.get(path, headers=bearer(alice))
        assert r.status_code in (404, 422), (path, r.status_code)
        assert b"root:" not in r.content and b"PNG" not in r.content
    assert client.get("/static/../db.py").status_code == 404


def test_blind_and_qc_items_look_like_samples(db_url, tmp_path):
    from clinalign.review.db import Store

    store = Store(db_url)
    try:
        study = make_study(store, tmp_path, n=5, qc_share=0.25, per_image=2)
        with store.read() as s:
            kinds = dict(s.execute(select(Image.uid, Image.kind).where(Image.kind.in_([SAMPLE, QC]))).all())
            sizes = {k: set() for k in (SAMPLE, QC)}
            for kind, w, h in s.execute(
                select(Image.kind, Blob.width, Blob.height)
                .join(Blob, Blob.sha256 == Image.blob_sha)
                .where(Image.kind.in_([SAMPLE, QC]))
            ):
                sizes[kind].add((w, h))
        assert sum(k == QC for k in kinds.values()) == 3  # 10 samples, 25 % of the queue
        assert sizes[QC] == sizes[SAMPLE] == {(32, 32)}  # real 28 px images conformed
        with TestClient(create_app(store.url, store=store)) as c:
            alice, bob = study.tokens["alice"], study.tokens["bob"]
            judge_all(c, alice, lambda it: "implausible")
            data = next_item(c, bob)
            keysets = set()
            while data["item"]:
                item = data["item"]
                keysets.add((tuple(sorted(item)), len(item["uid"]), kinds[item["uid"]] == QC))
                # Nothing about alice's verdicts leaks into bob's view.
                assert "implausible" not in str(item) and "alice" not in str(item)
                r = post_verdict(c, bob, item["uid"], "plausible")
                data = {"item": r.json()["next"]}
            assert {k[:2] for k in keysets} == {
                (
                    tuple(sorted(["uid", "declared_class", "image_url", "references", "checklist", "concepts"])),
                    24,
                )
            }
            stats = c.get("/api/admin/stats", headers=bearer(study.admin_token)).json()
        qc = {r["name"]: r["qc"] for r in stats["reviewers"]}
        assert qc["alice"]["accuracy"] == 0.0 and qc["alice"]["n"] == 3
        assert qc["bob"]["accuracy"] == 1.0 and qc["bob"]["n"] == 3
        # QC items never count as synthetic feedback.
        assert stats["totals"]["done"] == 20 and stats["totals"]["qc_done"] == 6
        assert {c["class"]: c["plausibility_rate"] for c in stats["classes"]} == {
            "lymphocyte": 0.5,
            "neutrophil": 0.5,
        }
        pair = stats["agreement"]["cohen"][0]
        assert (pair["a"], pair["b"], pair["n"]) == ("alice", "bob", 10)
        assert pair["agreement"] == 0.0 and pair["kappa"] == pytest.approx(0.0)
    finally:
        store.dispose()


def test_stats_kappa_matches_the_ratings(client, study):
    alice, bob = study.tokens["alice"], study.tokens["bob"]
    pattern = {}

    def alice_says(item):
        v = ["plausible", "implausible", "plausible", "unsure", "implausible", "plausible"][len(pattern) % 6]
        pattern[item["uid"]] = v
        return v

    judge_all(client, alice, alice_says)
    bob_votes = {}

    def bob_says(item):
        v = "plausible" if len(bob_votes) % 2 == 0 else "implausible"
        bob_votes[item["uid"]] = v
        return v

    judge_all(client, bob, bob_says)
    uids = sorted(pattern)
    expected = cohen_kappa([pattern[u] for u in uids], [bob_votes[u] for u in uids])
    s = client.get("/api/admin/stats", headers=bearer(study.admin_token)).json()
    assert s["agreement"]["cohen"][0]["kappa"] == pytest.approx(expected)
    assert s["agreement"]["fleiss"]["images"] == 6 and s["agreement"]["fleiss"]["ratings_per_image"] == 2
    assert s["agreement"]["fleiss"]["kappa"] is not None
    assert {r["name"]: r["done"] for r in s["reviewers"]} == {"alice": 6, "bob": 6}
    assert sum(c["done"] for c in s["classes"]) == 12
    assert client.get("/api/admin/stats?batch=nope", headers=bearer(study.admin_token)).status_code == 404


def test_concepts(client, study):
    admin = bearer(study.admin_token)
    r = client.post(
        "/api/admin/concepts",
        json={"batch": "b1", "name": "neutrophil-band", "parent": "neutrophil"},
        headers=admin,
    )
    assert r.status_code == 201 and r.json() == {"name": "neutrophil-band", "parent": "neutrophil"}
    assert (
        client.post(
            "/api/admin/concepts",
            json={"batch": "b1", "name": "neutrophil-band", "parent": "neutrophil"},
            headers=admin,
        ).status_code
        == 409
    )
    assert (
        client.post(
            "/api/admin/concepts",
            json={"batch": "b1", "name": "neutrophil_band", "parent": "neutrophil"},
            headers=admin,
        ).status_code
        == 422
    )
    assert (
        client.post(
            "/api/admin/concepts",
            json={"batch": "b1", "name": "blast-cell", "parent": "blast"},
            headers=admin,
        ).status_code
        == 422
    )
    assert (
        client.post(
            "/api/admin/concepts", json={"batch": "zz", "name": "a-b", "parent": "neutrophil"}, headers=admin
        ).status_code
        == 404
    )
    assert (
        client.post(
            "/api/admin/concepts",
            json={"batch": "b1", "name": "a-b", "parent": "neutrophil"},
            headers=bearer(study.tokens["alice"]),
        ).status_code
        == 403
    )
    add_concept(study.store, "b1", "neutrophil-seg", "neutrophil")
    alice = study.tokens["alice"]
    data = next_item(client, alice)
    picked = False
    while data["item"]:
        item = data["item"]
        if item["declared_class"] == "neutrophil":
            assert [c["name"] for c in item["concepts"]] == ["neutrophil-band", "neutrophil-seg"]
            r = post_verdict(client, alice, item["uid"], concept="neutrophil-band")
            assert r.json()["verdict"]["concept"] == "neutrophil-band"
            picked = True
        else:
            assert item["concepts"] == []
            r = post_verdict(client, alice, item["uid"])
        data = {"item": r.json()["next"]}
    assert picked


def test_admin_can_invite_people(study):
    client = TestClient(create_app(study.store.url, store=study.store, base_url="http://review.lab.example"))
    r = client.post("/api/admin/people", json={"name": "carol"}, headers=bearer(study.admin_token))
    assert r.status_code == 201
    link = r.json()["link"]
    assert link.startswith("http://review.lab.example/r/")
    token = link.rsplit("/", 1)[1]
    assert client.get("/api/me", headers=bearer(token)).json()["name"] == "carol"
    assert (
        client.post("/api/admin/people", json={"name": "carol"}, headers=bearer(study.admin_token)).status_code == 409
    )
    r = client.post("/api/admin/people", json={"name": "carol", "rotate": True}, headers=bearer(study.admin_token))
    assert r.status_code == 201
    assert client.get("/api/me", headers=bearer(token)).status_code == 401  # old link revoked


# ------------------------------------------------------------------------------ browser security


def test_private_link_sets_a_strict_cookie(client, study):
    token = study.tokens["alice"]
    r = client.get(f"/r/{token}", headers=FROM_MAIL)
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("clinalign_session=")
    low = cookie.lower()
    assert "httponly" in low and "samesite=strict" in low and "path=/" in low and "secure" not in low
    assert token not in r.text  # the landing page does not repeat the token ...
    assert 'url=/"' in r.text  # ... and moves on to a token-free address
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    assert client.get("/api/me").json()["name"] == "alice"
    assert client.get(f"/r/{'x' * 43}").status_code == 401
    with TestClient(client.app, base_url="https://review.example") as tls:
        assert "secure" in tls.get(f"/r/{token}", headers=FROM_MAIL).headers["set-cookie"].lower()


def test_cookie_posts_need_the_custom_header_and_same_origin(client, study):
    client.get(f"/r/{study.tokens['alice']}", headers=FROM_MAIL)
    item = client.get("/api/next").json()["item"]["uid"]

    def body():
        return {"request_id": str(uuid.uuid4()), "item": item, "verdict": "plausible"}

    # A cross-site form post carries the cookie but cannot add custom headers.
    assert client.post("/api/verdicts", json=body()).status_code == 403
    assert client.post("/api/undo").status_code == 403
    xrw = {"X-Requested-With": "clinalign"}
    assert (
        client.post("/api/verdicts", json=body(), headers={**xrw, "Origin": "http://evil.example"}).status_code == 403
    )
    assert client.post("/api/verdicts", json=body(), headers={**xrw, "Origin": "null"}).status_code == 403
    assert client.post("/api/verdicts", json=body(), headers={**xrw, "Sec-Fetch-Site": "cross-site"}).status_code == 403
    with study.store.read() as s:
        assert s.scalar(select(func.count()).select_from(Verdict)) == 0
    r = client.post(
        "/api/verdicts",
        json=body(),
        headers={**xrw, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 200, r.text
    # Token-in-header clients (scripts) are not CSRF-able and need no extra header.
    fresh = TestClient(client.app)
    nxt = r.json()["next"]["uid"]
    assert (
        fresh.post(
            "/api/verdicts",
            json={"request_id": str(uuid.uuid4()), "item": nxt, "verdict": "unsure"},
            headers=bearer(study.tokens["alice"]),
        ).status_code
        == 200
    )
    assert client.post("/api/logout", headers=xrw).status_code == 204


def test_security_headers_and_offline_docs(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    docs = client.get("/docs")
    assert docs.status_code == 200
    spec = client.get("/openapi.json").json()
    for path in [
        "/api/next",
        "/api/verdicts",
        "/api/undo",
        "/api/progress",
        "/api/images/{uid}",
        "/api/admin/stats",
        "/api/admin/concepts",
        "/api/admin/people",
        "/api/me",
    ]:
        assert path in spec["paths"], path
    assert {"HTTPBearer", "APIKeyHeader", "APIKeyCookie"} <= set(spec["components"]["securitySchemes"])
    assert "VerdictIn" in spec["components"]["schemas"]
    # Everything the pages load is served locally: no CDN, no external URL.
    for f in STATIC.iterdir():
        text = f.read_text()
        assert not re.search(r"(src|href)=\"https?://", text), f
        assert not re.search(r"url\(\s*['\"]?https?:|fetch\(\s*['\"`]https?:|//cdn", text), f
    for page in ["/", "/admin", "/docs", "/static/review.js", "/static/style.css", "/favicon.ico"]:
        assert client.get(page).status_code == 200, page


def test_comments_refuse_control_characters(client, study):
    alice = study.tokens["alice"]
    item = next_item(client, alice)["item"]["uid"]
    for bad in ("nul\x00byte", "bell\x07", "escape\x1b[31m", "del\x7f"):
        r = post_verdict(client, alice, item, comment=bad)
        assert r.status_code == 422, (bad, r.text)
        assert "control character" in r.text
    r = post_verdict(client, alice, item, comment="two lines\nand a\ttab")
    assert r.status_code == 200 and r.json()["verdict"]["comment"] == "two lines\nand a\ttab"


def test_export_drops_nul_bytes_stored_before_they_were_refused(sqlite_url, tmp_path):
    # SQLite only: PostgreSQL never stored a NUL (its text type refuses them).
    from clinalign.review.db import Store
    from clinalign.review.export import export_feedback

    store = Store(sqlite_url)
    study = make_study(store, tmp_path)
    client = TestClient(create_app(store.url, store=store))
    alice = study.tokens["alice"]
    item = next_item(client, alice)["item"]["uid"]
    assert post_verdict(client, alice, item, comment="fine").status_code == 200
    with study.store.write() as s:
        s.execute(Verdict.__table__.update().values(comment="old\x00data"))
    export_feedback(study.store, tmp_path / "out")
    raw = (tmp_path / "out" / "votes.csv").read_bytes()
    assert b"\x00" not in raw and b"olddata" in raw
    store.dispose()


def test_dashboard_shows_comments(client, study):
    alice, bob = study.tokens["alice"], study.tokens["bob"]
    a = next_item(client, alice)["item"]
    post_verdict(client, alice, a["uid"], "implausible", comment="<b>two</b> nuclei")
    b = next_item(client, bob)["item"]
    post_verdict(client, bob, b["uid"], "plausible")  # no comment: not listed
    c = post_verdict(client, bob, b["uid"], "plausible")  # 409, nothing stored
    assert c.status_code == 409
    comments = client.get("/api/admin/stats", headers=bearer(study.admin_token)).json()["comments"]
    assert comments == [
        {
            "reviewer": "alice",
            "class": a["declared_class"],
            "kind": "sample",
            "verdict": "implausible",
            "comment": "<b>two</b> nuclei",
            "image_url": a["image_url"],
            "created_at": comments[0]["created_at"],
        }
    ]


def test_each_role_lands_on_its_own_page(client, study):
    client.get(f"/r/{study.tokens['alice']}", headers=FROM_MAIL)
    r = client.get("/admin", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert client.get("/", follow_redirects=False).status_code == 200
    client.get(f"/r/{study.admin_token}", headers=FROM_MAIL)
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    assert client.get("/admin", follow_redirects=False).status_code == 200
    client.cookies.clear()
    assert client.get("/admin", follow_redirects=False).status_code == 200  # says it needs an admin link


def test_progress_stays_exact_while_the_free_count_is_kept_in_memory(db_url, tmp_path):
    """progress() keeps the number of images with a free slot in memory between recounts; after
    every claim and verdict it must equal what a fresh count says."""
    from clinalign.review import queue
    from clinalign.review.db import Store, User

    store = Store(db_url)
    try:
        study = make_study(store, tmp_path, per_image=2, reviewers=("r1", "r2", "r3"), n=3)
        with store.read() as s:
            ids = dict(s.execute(select(User.name, User.id)).all())

        def fresh(name):
            other = Store(db_url, create=False)  # its own, empty memory
            try:
                with other.read() as s:
                    return queue.progress(s, ids[name])
            finally:
                other.dispose()

        with TestClient(create_app(store.url, store=store)) as c:
            order = ["r1", "r2", "r1", "r3", "r3", "r2", "r1", "r2", "r3"] * 2
            for name in order:
                data = next_item(c, study.tokens[name])
                assert data["progress"]["total"] == fresh(name).total, name
                if data["item"]:
                    r = post_verdict(c, study.tokens[name], data["item"]["uid"])
                    assert r.json()["progress"]["total"] == fresh(name).total, name
    finally:
        store.dispose()
