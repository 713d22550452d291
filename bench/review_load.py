"""Load, latency and durability bench for the web reviewer.

Starts ``clinalign review serve`` (uvicorn) on 127.0.0.1 against a fresh study (SQLite file by
default, or a throwaway schema on PostgreSQL with --db), drives simulated reviewers over HTTP,
then reads the database back and checks that every acknowledged verdict is stored exactly once.

Modes (one JSON object on stdout; latencies in ms, rates in verdicts/s):

    load    closed loop: N reviewers post verdicts back to back, no pause (a stress test,
            not a workload); --kill SIGKILLs and restarts the server mid-load
    think   human pace: each reviewer looks at the image for an exponential pause
            (mean --think s) before judging it
    sweep   open loop: verdicts arrive as a Poisson stream at each of --rates per second, each
            taken by an idle reviewer; latency runs from the arrival, so queueing counts.
            Reports the highest rate whose p95 stays under --slo_ms
    report  think + sweep on SQLite, and on PostgreSQL when --pg URL is given
    profile where one verdict's time goes, stage by stage, in-process (no HTTP)

A simulated reviewer does what the page does: it loads each image (GET /api/images/<uid>, off
with --no_images) and posts its verdict, whose answer carries the next image. The load
generator is a small asyncio HTTP/1.1 client so that it costs far less CPU than the server.

    python bench/review_load.py --mode report --pg postgresql+psycopg://postgres@127.0.0.1:54329/postgres
    python bench/review_load.py                      # closed loop, 20 reviewers, 5000 verdicts
    python bench/review_load.py --kill               # same, with a SIGKILL + restart mid-load

Exits 1 when anything was lost, duplicated or unexpected. Bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from clinalign.review.db import Image, Store, User, Verdict, redact_url
from clinalign.review.ingest import add_batch, add_user
from clinalign.review.serverproc import ServerProcess

log = logging.getLogger("review_load")
VERDICT_CYCLE = ("plausible", "implausible", "unsure", "plausible")
CLASSES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil")
DEFAULT_RATES = (25, 50, 100, 150, 200, 250, 300, 350, 400, 500, 600)
SLO_MS = 50.0


# ------------------------------------------------------------------------------------- study


def make_samples(folder: Path, n: int, size: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        colour = ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256, (i // 65536) % 256)
        im = PILImage.new("RGB", (size, size), colour[:3])
        im.putpixel((0, 0), (colour[3], i % 256, (i // 256) % 256))  # every image distinct
        im.save(folder / f"{CLASSES[i % len(CLASSES)]}_{i:07d}.png")


@contextlib.contextmanager
def database(db_url: str | None, root: Path) -> Iterator[str]:
    """A fresh database: a SQLite file under ``root``, or a schema of its own on the
    PostgreSQL server ``db_url`` names (dropped afterwards)."""
    if not db_url or db_url.startswith("sqlite"):
        yield db_url or f"sqlite:///{root / 'bench.db'}"
        return
    schema = f"review_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(db_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_study(db_url: str, root: Path, n_images: int, per_image: int, reviewers: int) -> dict[str, str]:
    make_samples(root / "samples", n_images)
    store = Store(db_url)
    try:
        add_batch(store, root / "samples", per_image=per_image, name="bench", qc_share=0.0)
        return {f"r{i:03d}": add_user(store, f"r{i:03d}") for i in range(reviewers)}
    finally:
        store.dispose()


# ------------------------------------------------------------------------------------- client


class Http:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (Content-Length bodies only).

    httpx spends about as much CPU per request as the server does; on a shared 2-core machine
    that would measure the client, not the server."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = b"" if body is None else json.dumps(body).encode()
        extra = "Content-Type: application/json\r\n" if body is not None else ""
        request = f"{method} {path} HTTP/1.1\r\n{self.head}{extra}Content-Length: {len(data)}\r\n\r\n"
        self.writer.write(request.encode() + data)
        assert self.reader is not None
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# ------------------------------------------------------------------------------------- reviewers


@dataclass
class Shared:
    target: int  # verdicts to post in all (sweep and think: a large number, the clock stops them)
    deadline: float
    acked: list[tuple[str, str, str, str]] = field(default_factory=list)  # reviewer, request_id, item, verdict
    samples: list[tuple[float, float]] = field(default_factory=list)  # (answered at, latency ms), first tries
    reserved: int = 0
    retried: int = 0
    replayed: int = 0
    errors: Counter = field(default_factory=Counter)
    stop: bool = False

    def reserve(self) -> bool:
        if self.stop or self.reserved >= self.target or time.monotonic() >= self.deadline:
            return False
        self.reserved += 1
        return True


async def call(http: Http, shared: Shared, method: str, path: str, body: dict | None = None) -> tuple[bytes, int]:
    """Send until the server answers 200; connection errors and 5xx mean "retry the same body"."""
    tries, wait = 0, 0.05
    while time.monotonic() < shared.deadline + 30:
        tries += 1
        try:
            status, payload = await http.request(method, path, body)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            shared.errors[type(exc).__name__] += 1
            http.close()
        else:
            if status == 200:
                return payload, tries
            if status < 500:
                raise RuntimeError(f"{method} {path}: HTTP {status} {payload[:200]!r}")
            shared.errors[f"HTTP {status}"] += 1
        await asyncio.sleep(wait)
        wait = min(wait * 2, 1.0)
    raise TimeoutError(f"{method} {path}: no answer before the deadline")


Pace = Callable[[], Awaitable[float]]  # waits until the reviewer should judge; returns the start time


async def reviewer(name: str, token: str, port: int, shared: Shared, pace: Pace, images: bool) -> None:
    http = Http(port, token)
    try:
        item = json.loads((await call(http, shared, "GET", "/api/next"))[0])["item"]
        i = 0
        while item is not None and shared.reserve():
            if images:
                await call(http, shared, "GET", item["image_url"])
            started = await pace()
            verdict = VERDICT_CYCLE[i % len(VERDICT_CYCLE)]
            i += 1
            body = {"request_id": str(uuid.uuid4()), "item": item["uid"], "verdict": verdict}
            if verdict == "implausible":
                body["reasons"] = ["cell size"]
            payload, tries = await call(http, shared, "POST", "/api/verdicts", body)
            done = time.perf_counter()
            data = json.loads(payload)
            shared.acked.append((name, body["request_id"], item["uid"], verdict))
            if tries == 1:
                shared.samples.append((done, (done - started) * 1000))
            else:
                shared.retried += 1
            shared.replayed += bool(data["verdict"]["replayed"])
            item = data["next"]
    except Exception as exc:  # reported in the JSON, never hangs the bench
        log.error("%s: %s", name, exc)
        shared.errors[f"client gave up: {type(exc).__name__}"] += 1
    finally:
        http.close()


def no_pause() -> Pace:
    async def pace() -> float:
        return time.perf_counter()

    return pace


def think_time(mean_s: float, rng: random.Random) -> Pace:
    """A person looking at the image: an exponential pause, then the verdict."""

    async def pace() -> float:
        await asyncio.sleep(rng.expovariate(1.0 / mean_s))
        return time.perf_counter()

    return pace


def arrivals(tickets: asyncio.Queue) -> Pace:
    """Open loop: wait for the next arrival; latency counts from the arrival, not from now."""

    async def pace() -> float:
        return await tickets.get()

    return pace


async def poisson(tickets: asyncio.Queue, rate: float, until: float, rng: random.Random) -> None:
    t = time.perf_counter()
    while t < until:
        t += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, t - time.perf_counter()))
        tickets.put_nowait(t)


# ------------------------------------------------------------------------------------- server


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Meter:
    """CPU seconds spent by the server and by this load generator over a stretch of time."""

    server: ServerProcess
    t0: float = 0.0
    server0: float = 0.0
    client0: float = 0.0

    def start(self) -> Meter:
        self.t0, self.client0 = time.perf_counter(), time.process_time()
        self.server0 = cpu_seconds(self.server.proc.pid)  # type: ignore[union-attr]
        return self

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        server = cpu_seconds(self.server.proc.pid) - self.server0  # type: ignore[union-attr]
        return {"wall_s": wall, "server_cpu_s": server, "client_cpu_s": time.process_time() - self.client0}


async def killer(server: ServerProcess, shared: Shared, marks: list[int], kills: list[dict[str, Any]]) -> None:
    """SIGKILL the server each time the acknowledged count passes the next mark, then restart it."""
    pending = sorted(marks)
    while pending and not shared.stop and time.monotonic() < shared.deadline:
        n = len(shared.acked)
        if n >= pending[0]:
            pending.pop(0)
            t0 = time.monotonic()
            await asyncio.to_thread(server.kill)
            log.info("SIGKILLed the server after %d acknowledged verdicts", n)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.start)
            kills.append({"after_acked": n, "downtime_s": round(time.monotonic() - t0, 3)})
        await asyncio.sleep(0.005)


# ------------------------------------------------------------------------------------- figures


def verify(db_url: str, shared: Shared) -> dict[str, int]:
    store = Store(db_url, create=False)
    try:
        with store.read() as s:
            rows = s.execute(
                select(Verdict.request_id, User.name, Image.uid, Verdict.verdict, Verdict.undone_at)
                .join(User, User.id == Verdict.reviewer_id)
                .join(Image, Image.id == Verdict.image_id)
            ).all()
    finally:
        store.dispose()
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
    return xs[max(0, min(len(xs) - 1, math.ceil(q / 100 * len(xs)) - 1))]


def latency(ms: list[float]) -> dict[str, Any]:
    return {
        "n": len(ms),
        "p50_ms": _r(percentile(ms, 50)),
        "p95_ms": _r(percentile(ms, 95)),
        "p99_ms": _r(percentile(ms, 99)),
        "max_ms": _r(max(ms) if ms else None),
    }


def cpu_per_verdict(meter: dict[str, float], n: int) -> dict[str, Any]:
    return {
        "server_cpu_ms_per_verdict": _r(1000 * meter["server_cpu_s"] / n) if n else None,
        "client_cpu_ms_per_verdict": _r(1000 * meter["client_cpu_s"] / n) if n else None,
        "server_cpu_share": _r(meter["server_cpu_s"] / meter["wall_s"]),
    }


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg_1m_before": round(os.getloadavg()[0], 2), "python": sys.version.split()[0]}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# ------------------------------------------------------------------------------------- modes


@dataclass
class Setup:
    db: str | None = None
    workdir: str | Path | None = None
    per_image: int = 2
    images: bool = True
    timeout: float = 600.0


@contextlib.contextmanager
def serving(setup: Setup, n_images: int, reviewers: int) -> Iterator[tuple[str, dict[str, str], ServerProcess]]:
    tmp = tempfile.TemporaryDirectory(prefix="review-load-") if setup.workdir is None else None
    root = Path(tmp.name if tmp else setup.workdir)  # type: ignore[arg-type]
    try:
        with database(setup.db, root) as db_url:
            tokens = make_study(db_url, root, n_images, setup.per_image, reviewers)
            server = ServerProcess(db_url, log_path=root / "server.log").start()
            try:
                yield db_url, tokens, server
            finally:
                server.stop()
    finally:
        if tmp:
            tmp.cleanup()


def run(
    reviewers: int = 20,
    verdicts: int = 5000,
    per_image: int = 2,
    kill: bool = False,
    n_kills: int = 1,
    db_url: str | None = None,
    workdir: str | Path | None = None,
    timeout: float = 600.0,
    images: bool = False,
) -> dict[str, Any]:
    """Closed loop: ``reviewers`` post ``verdicts`` in all, back to back (optionally killed)."""
    started = time.monotonic()
    setup = Setup(db_url, workdir, per_image, images, timeout)
    with serving(setup, math.ceil(verdicts / per_image), reviewers) as (url, tokens, server):
        shared = Shared(target=verdicts, deadline=time.monotonic() + timeout)
        kills: list[dict[str, Any]] = []
        marks = [int(verdicts * (i + 1) / (n_kills + 1)) for i in range(n_kills)] if kill else []

        async def drive() -> dict[str, float]:
            meter = Meter(server).start()
            tasks = [reviewer(n, t, server.port, shared, no_pause(), images) for n, t in tokens.items()]
            await asyncio.gather(killer(server, shared, marks, kills), *tasks)
            return meter.read()

        used = asyncio.run(drive())
        shared.stop = True
        checks = verify(url, shared)
    result = {
        "mode": "kill" if kill else "load",
        "db": redact_url(url).split("://", 1)[0],
        "reviewers": reviewers,
        "target_verdicts": verdicts,
        "acknowledged": len(shared.acked),
        **checks,
        **latency([ms for _, ms in shared.samples]),
        "throughput_per_s": _r(len(shared.acked) / used["wall_s"]),
        # A restarted server is a new process: its CPU time says nothing about the whole run.
        **(cpu_per_verdict(used, len(shared.acked)) if not kills else {}),
        "load_wall_s": _r(used["wall_s"]),
        "retried_requests": shared.retried,
        "replayed_acks": shared.replayed,
        "transport_errors": dict(shared.errors),
        "kills": kills,
        "total_s": _r(time.monotonic() - started),
    }
    result["ok"] = _ok(checks, shared) and len(shared.acked) == verdicts and len(kills) == len(marks)
    return result


def _ok(checks: dict[str, int], shared: Shared) -> bool:
    gave_up = sum(n for k, n in shared.errors.items() if k.startswith("client gave up"))
    return checks["lost"] == 0 and checks["duplicated"] == 0 and checks["unexpected"] == 0 and gave_up == 0


def run_think(setup: Setup, reviewers: int = 20, think_s: float = 2.0, duration_s: float = 120.0) -> dict[str, Any]:
    """Human pace: ``reviewers`` people, each judging an image every ``think_s`` seconds on average."""
    expected = reviewers * duration_s / think_s
    n_images = math.ceil(2 * expected / setup.per_image) + reviewers
    with serving(setup, n_images, reviewers) as (url, tokens, server):
        shared = Shared(target=10**9, deadline=time.monotonic() + duration_s)
        rng = random.Random(0)

        async def drive() -> dict[str, float]:
            meter = Meter(server).start()
            paces = [think_time(think_s, random.Random(rng.random())) for _ in tokens]
            tasks = [reviewer(n, t, server.port, shared, p, setup.images) for (n, t), p in zip(tokens.items(), paces)]
            await asyncio.gather(*tasks)
            return meter.read()

        used = asyncio.run(drive())
        checks = verify(url, shared)
    n = len(shared.acked)
    return {
        "mode": "think",
        "db": redact_url(url).split("://", 1)[0],
        "reviewers": reviewers,
        "think_mean_s": think_s,
        "duration_s": duration_s,
        "images_fetched": setup.images,
        "acknowledged": n,
        "rate_per_s": _r(n / used["wall_s"]),
        **latency([ms for _, ms in shared.samples]),
        **cpu_per_verdict(used, n),
        **checks,
        "transport_errors": dict(shared.errors),
        "ok": _ok(checks, shared),
    }


async def _sweep_steps(
    server: ServerProcess, shared: Shared, tickets: asyncio.Queue, rates: list[float], step_s: float, slo_ms: float
) -> list[dict[str, Any]]:
    rng, steps = random.Random(1), []
    for rate in rates:
        meter, n0 = Meter(server).start(), len(shared.samples)
        t0 = time.perf_counter()
        await poisson(tickets, rate, t0 + step_s, rng)
        backlog = tickets.qsize()
        # The first second of a step lets the previous step's queue drain; it is not counted.
        window = [ms for t, ms in shared.samples[n0:] if t0 + 1.0 <= t <= t0 + step_s]
        used = meter.read()
        step = {"rate_per_s": rate, "achieved_per_s": _r(len(window) / (step_s - 1.0)), **latency(window)}
        steps.append({**step, **cpu_per_verdict(used, len(window)), "backlog_at_end": backlog})
        log.info("rate %s/s: %s", rate, step)
        if backlog > rate or (step["p95_ms"] or 0) > 20 * slo_ms:
            break  # saturated: higher rates only queue longer
        while tickets.qsize() and time.perf_counter() < t0 + step_s + 10:
            await asyncio.sleep(0.05)
    return steps


def run_sweep(
    setup: Setup,
    rates: tuple[float, ...] = DEFAULT_RATES,
    step_s: float = 15.0,
    reviewers: int = 64,
    slo_ms: float = SLO_MS,
) -> dict[str, Any]:
    """Open loop at each rate in turn (Poisson arrivals); the highest rate whose p95 < ``slo_ms``."""
    n_images = math.ceil(1.2 * sum(rates) * step_s / setup.per_image) + 4 * reviewers
    with serving(setup, n_images, reviewers) as (url, tokens, server):
        shared = Shared(target=10**9, deadline=time.monotonic() + setup.timeout)

        async def drive() -> list[dict[str, Any]]:
            tickets: asyncio.Queue = asyncio.Queue()
            tasks = [
                asyncio.create_task(reviewer(n, t, server.port, shared, arrivals(tickets), setup.images))
                for n, t in tokens.items()
            ]
            steps = await _sweep_steps(server, shared, tickets, rates, step_s, slo_ms)
            shared.stop = True
            for _ in tasks:  # each waiting reviewer posts one last verdict, then stops
                tickets.put_nowait(time.perf_counter())
            await asyncio.gather(*tasks)
            return steps

        steps = asyncio.run(drive())
        checks = verify(url, shared)
    good = [
        s["rate_per_s"]
        for s in steps
        if s["p95_ms"] is not None and s["p95_ms"] < slo_ms and s["achieved_per_s"] >= 0.9 * s["rate_per_s"]
    ]
    return {
        "mode": "sweep",
        "db": redact_url(url).split("://", 1)[0],
        "reviewers": reviewers,
        "step_s": step_s,
        "images_fetched": setup.images,
        "slo_p95_ms": slo_ms,
        "max_rate_p95_under_slo": max(good) if good else None,
        "steps": steps,
        **checks,
        "transport_errors": dict(shared.errors),
        "ok": _ok(checks, shared),
    }


def run_report(setup: Setup, pg: str | None, args: argparse.Namespace) -> dict[str, Any]:
    """Human pace and the rate sweep, on SQLite and (with ``pg``) on PostgreSQL."""
    report: dict[str, Any] = {"machine": machine()}
    for name, db in (("sqlite", None), ("postgresql", pg)):
        if name == "postgresql" and not pg:
            continue
        one = Setup(db, None, setup.per_image, setup.images, setup.timeout)
        report[name] = {
            "human_pace": run_think(one, args.reviewers, args.think, args.duration),
            "sweep": run_sweep(one, args.rates, args.step_s, args.sweep_reviewers, args.slo_ms),
        }
    report["ok"] = all(r[k]["ok"] for r in report.values() if isinstance(r, dict) and "sweep" in r for k in r)
    return report


# ------------------------------------------------------------------------------------- profile


@contextlib.contextmanager
def stage_timers(stages: dict[str, list[float]]) -> Iterator[None]:
    """Time the steps of a verdict by wrapping the functions the API calls (and the commit)."""
    from sqlalchemy.orm import Session

    from clinalign.review import api_reviewer, queue

    targets = [(queue, n) for n in ("record_verdict", "next_row", "item_view", "progress")]
    targets += [(Session, "commit"), (api_reviewer, "verdict_transaction")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in targets]

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stages.setdefault(name, []).append((time.perf_counter() - t0) * 1000)

        return wrapper

    try:
        for obj, name, fn in saved:
            setattr(obj, name, timed(name, fn))
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def run_profile(setup: Setup, verdicts: int = 400) -> dict[str, Any]:
    """Median milliseconds per step of one verdict, in-process, one reviewer, nothing else running;
    then the same verdicts over HTTP, one at a time, for the share of HTTP and the framework."""
    from clinalign.review import api_reviewer
    from clinalign.review.auth import lookup
    from clinalign.review.schemas import VerdictIn

    with serving(setup, 4 * verdicts, 2) as (url, tokens, server):
        store, token = Store(url, create=False), tokens["r000"]
        stages: dict[str, list[float]] = {}
        with store.write() as s:
            uid = api_reviewer.queue.next_row(s, lookup(store, token).id).uid  # type: ignore[union-attr]
        with stage_timers(stages):
            for i in range(verdicts):
                t0 = time.perf_counter()
                who = lookup(store, token)
                stages.setdefault("auth lookup", []).append((time.perf_counter() - t0) * 1000)
                body = VerdictIn(request_id=uuid.uuid4(), item=uid, verdict=VERDICT_CYCLE[i % 4], reasons=[])
                with store.write() as s:
                    result = api_reviewer.verdict_transaction(s, who.id, body)  # type: ignore[union-attr]
                t0 = time.perf_counter()
                result.model_dump_json()
                stages.setdefault("response JSON", []).append((time.perf_counter() - t0) * 1000)
                uid = result.next.uid  # type: ignore[union-attr]
        store.dispose()
        shared = Shared(target=verdicts, deadline=time.monotonic() + setup.timeout)
        asyncio.run(reviewer("r001", tokens["r001"], server.port, shared, no_pause(), False))
    med = {k: _r(percentile(v, 50)) for k, v in stages.items()}
    e2e = percentile([ms for _, ms in shared.samples], 50)
    in_process = sum(med[k] or 0 for k in ("auth lookup", "verdict_transaction", "commit", "response JSON"))
    return {
        "mode": "profile",
        "db": redact_url(url).split("://", 1)[0],
        "verdicts": verdicts,
        "median_ms": med,
        "http_one_at_a_time_p50_ms": _r(e2e),
        "http_and_framework_ms": _r(e2e - in_process) if e2e is not None else None,
    }


# ------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="load", choices=["load", "think", "sweep", "report", "profile"])
    p.add_argument("--reviewers", type=int, default=20)
    p.add_argument("--verdicts", type=int, default=5000, help="load: total verdicts across all reviewers")
    p.add_argument("--per_image", type=int, default=2)
    p.add_argument("--kill", action="store_true", help="load: SIGKILL the server mid-load and restart it")
    p.add_argument("--kills", type=int, default=1, help="with --kill: how many times (evenly spread)")
    p.add_argument("--think", type=float, default=2.0, help="think: mean pause per image, seconds")
    p.add_argument("--duration", type=float, default=120.0, help="think: seconds of load")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=list(DEFAULT_RATES))
    p.add_argument("--step_s", type=float, default=15.0, help="sweep: seconds per rate")
    p.add_argument("--sweep_reviewers", type=int, default=64)
    p.add_argument("--slo_ms", type=float, default=SLO_MS)
    p.add_argument("--no_images", action="store_true", help="do not load each image before judging it")
    p.add_argument("--db", help="database URL (default: a SQLite file in a temp folder); PostgreSQL gets a schema")
    p.add_argument("--pg", help="report: also run on this PostgreSQL server")
    p.add_argument("--workdir", help="keep images, database and server.log here (load, think, sweep)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    setup = Setup(args.db, args.workdir, args.per_image, not args.no_images, args.timeout)
    if args.mode == "load":
        result = run(
            args.reviewers,
            args.verdicts,
            args.per_image,
            args.kill,
            args.kills,
            args.db,
            args.workdir,
            args.timeout,
            not args.no_images,
        )
    elif args.mode == "think":
        result = run_think(setup, args.reviewers, args.think, args.duration)
    elif args.mode == "sweep":
        result = run_sweep(setup, args.rates, args.step_s, args.sweep_reviewers, args.slo_ms)
    elif args.mode == "profile":
        result = run_profile(setup)
    else:
        result = run_report(setup, args.pg, args)
    result = {"machine": machine(), **result} if "machine" not in result else result
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.out:
        args.out.write_text(text_out + "\n")
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
