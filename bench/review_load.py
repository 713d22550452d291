"""Load and durability bench for the web reviewer.

Starts ``clinalign review serve`` (uvicorn, SQLite file) on 127.0.0.1, drives N concurrent
reviewers (threads + httpx) through M verdicts in total, then reads the database back and checks
that every acknowledged verdict is there exactly once. ``--kill`` SIGKILLs the server part-way,
restarts it, and lets clients retry their unacknowledged requests with the same request_id.

Prints one JSON object on stdout (latency percentiles in ms, throughput in verdicts/s, lost,
duplicated); exits 1 when anything was lost, duplicated or unexpected. Bounded by --timeout.

    python bench/review_load.py                      # 20 reviewers, 5000 verdicts
    python bench/review_load.py --kill               # same, with a SIGKILL + restart mid-load
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image as PILImage
from sqlalchemy import select

from clinalign.review.db import Image, Store, User, Verdict
from clinalign.review.ingest import add_batch, add_user
from clinalign.review.serverproc import ServerProcess

log = logging.getLogger("review_load")
VERDICT_CYCLE = ("plausible", "implausible", "unsure", "plausible")


@dataclass
class Shared:
    target: int
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    reserved: int = 0
    acked: list[tuple[str, str, str, str]] = field(default_factory=list)  # (reviewer, request_id, item, verdict)
    latencies: list[float] = field(default_factory=list)  # first-try successes, seconds
    retried: int = 0
    replayed: int = 0
    errors: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def reserve(self) -> bool:
        with self.lock:
            if self.reserved >= self.target:
                return False
            self.reserved += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.reserved -= 1


def make_samples(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    classes = ("neutrophil", "lymphocyte", "monocyte", "eosinophil")
    for i in range(n):
        colour = ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)
        PILImage.new("RGB", (8, 8), colour).save(folder / f"{classes[i % len(classes)]}_{i:06d}.png")


def _call(
    client: httpx.Client, shared: Shared, method: str, path: str, body: dict | None = None
) -> tuple[dict, float, int]:
    """Send until the server answers 200; connection errors and 5xx mean "retry the same body"."""
    tries = 0
    wait = 0.05
    while not shared.stop.is_set() and time.monotonic() < shared.deadline:
        tries += 1
        t0 = time.perf_counter()
        try:
            r = client.request(method, path, json=body)
        except httpx.TransportError as exc:
            shared.errors[type(exc).__name__] += 1
        else:
            if r.status_code == 200:
                return r.json(), time.perf_counter() - t0, tries
            if r.status_code < 500:
                raise RuntimeError(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}")
            shared.errors[f"HTTP {r.status_code}"] += 1
        time.sleep(wait)
        wait = min(wait * 2, 1.0)
    raise TimeoutError(f"{method} {path}: no answer before the deadline")


def reviewer_loop(name: str, token: str, base_url: str, shared: Shared) -> None:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0) as client:
        try:
            data, _, _ = _call(client, shared, "GET", "/api/next")
            item = data["item"]
            i = 0
            while item is not None and shared.reserve():
                verdict = VERDICT_CYCLE[i % len(VERDICT_CYCLE)]
                i += 1
                body = {
                    "request_id": str(uuid.uuid4()),
                    "item": item["uid"],
                    "verdict": verdict,
                    "reasons": ["cell size"] if verdict == "implausible" else [],
                }
                try:
                    data, latency, tries = _call(client, shared, "POST", "/api/verdicts", body)
                except BaseException:
                    shared.release()
                    raise
                with shared.lock:
                    shared.acked.append((name, body["request_id"], item["uid"], verdict))
                    if tries == 1:
                        shared.latencies.append(latency)
                    else:
                        shared.retried += 1
                    if data["verdict"]["replayed"]:
                        shared.replayed += 1
                item = data["next"]
        except Exception as exc:  # reported in the JSON, never hangs the bench
            log.error("%s: %s", name, exc)
            shared.errors[f"client gave up: {type(exc).__name__}"] += 1


def killer(server: ServerProcess, shared: Shared, at: list[int], kills: list[dict[str, Any]]) -> None:
    """SIGKILL the server each time the acknowledged count passes the next mark, then restart it."""
    pending = sorted(at)
    while pending and not shared.stop.is_set() and time.monotonic() < shared.deadline:
        with shared.lock:
            n = len(shared.acked)
        if n >= pending[0]:
            pending.pop(0)
            t0 = time.monotonic()
            server.kill()
            log.info("SIGKILLed the server after %d acknowledged verdicts", n)
            time.sleep(0.3)
            server.start()
            kills.append({"after_acked": n, "downtime_s": round(time.monotonic() - t0, 3)})
        time.sleep(0.005)


def verify(store: Store, shared: Shared) -> dict[str, int]:
    with store.read() as s:
        rows = s.execute(
            select(Verdict.request_id, User.name, Image.uid, Verdict.verdict, Verdict.undone_at)
            .join(User, User.id == Verdict.reviewer_id)
            .join(Image, Image.id == Verdict.image_id)
        ).all()
    stored = {r.request_id: r for r in rows}
    lost = sum(
        1
        for who, rid, item, verdict in shared.acked
        if rid not in stored or (stored[rid].name, stored[rid].uid, stored[rid].verdict) != (who, item, verdict)
    )
    sent = {rid for _, rid, _, _ in shared.acked}
    pairs = Counter((r.name, r.uid) for r in rows if r.undone_at is None)
    return {
        "stored": len(rows),
        "lost": lost,
        "duplicated": (len(rows) - len(stored)) + sum(n - 1 for n in pairs.values() if n > 1),
        # Rows no acknowledged request accounts for (e.g. a retry that was never acknowledged).
        "unexpected": sum(1 for rid in stored if rid not in sent),
    }


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1))
    return xs[k]


def run(
    reviewers: int = 20,
    verdicts: int = 5000,
    per_image: int = 2,
    kill: bool = False,
    n_kills: int = 1,
    db_url: str | None = None,
    workdir: str | Path | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    started = time.monotonic()
    tmp = tempfile.TemporaryDirectory(prefix="review-load-") if workdir is None else None
    root = Path(tmp.name if tmp else workdir)  # type: ignore[arg-type]
    try:
        db_url = db_url or f"sqlite:///{root / 'bench.db'}"
        n_images = math.ceil(verdicts / per_image)
        make_samples(root / "samples", n_images)
        store = Store(db_url)
        add_batch(store, root / "samples", per_image=per_image, name="bench", qc_share=0.0)
        tokens = {f"r{i:02d}": add_user(store, f"r{i:02d}") for i in range(reviewers)}

        shared = Shared(target=verdicts, deadline=time.monotonic() + timeout)
        server = ServerProcess(db_url, log_path=root / "server.log").start()
        kills: list[dict[str, Any]] = []
        marks = [int(verdicts * (i + 1) / (n_kills + 1)) for i in range(n_kills)]
        try:
            threads = [
                threading.Thread(target=reviewer_loop, args=(n, t, server.base_url, shared), daemon=True)
                for n, t in tokens.items()
            ]
            if kill:
                threads.append(threading.Thread(target=killer, args=(server, shared, marks, kills), daemon=True))
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(max(0.0, shared.deadline - time.monotonic()))
            wall = time.perf_counter() - t0
            shared.stop.set()
        finally:
            server.stop()
        checks = verify(store, shared)
        store.dispose()
        ms = [x * 1000 for x in shared.latencies]
        result = {
            "mode": "kill" if kill else "load",
            "db": store.safe_url.split("://", 1)[0],
            "reviewers": reviewers,
            "target_verdicts": verdicts,
            "acknowledged": len(shared.acked),
            **checks,
            "p50_ms": _r(percentile(ms, 50)),
            "p95_ms": _r(percentile(ms, 95)),
            "p99_ms": _r(percentile(ms, 99)),
            "throughput_per_s": round(len(shared.acked) / wall, 1) if wall else None,
            "load_wall_s": round(wall, 2),
            "retried_requests": shared.retried,
            "replayed_acks": shared.replayed,
            "transport_errors": dict(shared.errors),
            "kills": kills,
            "total_s": round(time.monotonic() - started, 2),
        }
        result["ok"] = (
            checks["lost"] == 0
            and checks["duplicated"] == 0
            and checks["unexpected"] == 0
            and len(shared.acked) == verdicts
            and (not kill or len(kills) == n_kills)
        )
        return result
    finally:
        if tmp:
            tmp.cleanup()


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reviewers", type=int, default=20)
    p.add_argument("--verdicts", type=int, default=5000, help="total verdicts across all reviewers")
    p.add_argument("--per_image", type=int, default=2)
    p.add_argument("--kill", action="store_true", help="SIGKILL the server mid-load (see --kills) and restart it")
    p.add_argument("--kills", type=int, default=1, help="with --kill: how many times (evenly spread)")
    p.add_argument("--db", help="database URL (default: a SQLite file in a temp folder)")
    p.add_argument("--workdir", help="keep images, database and server.log here")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = run(
        args.reviewers,
        args.verdicts,
        args.per_image,
        args.kill,
        args.kills,
        args.db,
        args.workdir,
        args.timeout,
    )
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
