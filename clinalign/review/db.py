"""The feedback store: SQLAlchemy models and the engine/session setup.

One database holds everything the reviewer needs (batches, image bytes, reviewers, queue slots,
verdicts), so copying the SQLite file (or dumping the PostgreSQL schema) moves a whole study.
Image bytes live in the database, keyed by content hash: the app serves images by opaque ID and
never touches the file system on behalf of a client.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, TypeVar

from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, deferred, mapped_column, sessionmaker

from ..errors import ClinalignError
from .commits import GroupCommitter

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
T = TypeVar("T")

# Image kinds. A QC item is a real image queued exactly like a synthetic sample; only the
# database knows the difference, so reviewers cannot tell them apart.
SAMPLE, QC, REFERENCE = "sample", "qc", "reference"
# Roles.
REVIEWER, ADMIN = "reviewer", "admin"
# Verdicts.
PLAUSIBLE, IMPLAUSIBLE, UNSURE = "plausible", "implausible", "unsure"
VERDICTS = (PLAUSIBLE, IMPLAUSIBLE, UNSURE)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamps stored as naive UTC and always returned timezone-aware.

    SQLite has no time zones; normalising here keeps ISO-8601 exports identical on both backends.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use clinalign.review.db.utcnow()")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "review_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Batch(Base):
    __tablename__ = "review_batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    per_image: Mapped[int] = mapped_column(Integer)
    qc_share: Mapped[float] = mapped_column(Float)
    checklist: Mapped[str] = mapped_column(Text)  # JSON: {"*": [...], "CLASS": [...]}
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Blob(Base):
    __tablename__ = "review_blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # Deferred so listing images never drags their bytes along.
    data: Mapped[bytes] = deferred(mapped_column(LargeBinary))


class Image(Base):
    __tablename__ = "review_images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("review_batches.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(500))  # the reward CSV ID for samples
    declared_class: Mapped[str] = mapped_column(String(200))
    blob_sha: Mapped[str] = mapped_column(ForeignKey("review_blobs.sha256"))
    position: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_review_images_batch_kind_class", "batch_id", "kind", "declared_class"),)


class Concept(Base):
    __tablename__ = "review_concepts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("review_batches.id"))
    name: Mapped[str] = mapped_column(String(200))
    parent: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("batch_id", "name", name="uq_review_concepts_batch_name"),)


class User(Base):
    __tablename__ = "review_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Slot(Base):
    """One of the ``per_image`` judgements an image needs; claimed by at most one reviewer.

    Claiming is a conditional UPDATE (``WHERE reviewer_id IS NULL``), so two reviewers never get
    the same slot, and the (image, reviewer) constraint keeps the K judges of an image distinct.
    """

    __tablename__ = "review_slots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("review_images.id"))
    slot_no: Mapped[int] = mapped_column(Integer)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("review_users.id"), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("image_id", "slot_no", name="uq_review_slots_image_slot"),
        UniqueConstraint("image_id", "reviewer_id", name="uq_review_slots_image_reviewer"),
        Index("ix_review_slots_reviewer_image", "reviewer_id", "image_id"),
    )


class Verdict(Base):
    """A judgement. Undo marks it (``undone_at``) instead of deleting it, so a late retry of the
    same ``request_id`` finds the row and cannot resurrect an undone verdict."""

    __tablename__ = "review_verdicts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("review_users.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("review_images.id"))
    verdict: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[str] = mapped_column(Text, default="[]")  # JSON list
    comment: Mapped[str] = mapped_column(Text, default="")
    concept: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[str] = mapped_column(String(32), default="web")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    undo_request_id: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)

    __table_args__ = (
        # One current verdict per (reviewer, image); undone rows are history.
        Index(
            "uq_review_verdicts_current",
            "reviewer_id",
            "image_id",
            unique=True,
            sqlite_where=text("undone_at IS NULL"),
            postgresql_where=text("undone_at IS NULL"),
        ),
        Index("ix_review_verdicts_image", "image_id"),
    )


PASSWORD_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword"})


def redact_url(url: str) -> str:
    """A database URL safe to print or log: its password (also one passed as a query
    parameter) masked. A bare file path carries no secret and comes back unchanged."""
    if "://" not in url:
        return url
    try:
        parsed = make_url(url)
    except Exception:  # unparseable: say nothing about it rather than echo a possible secret
        return "<database URL>"
    hidden = {k: "xxx" for k in parsed.query if k.lower() in PASSWORD_QUERY_KEYS}
    if hidden:
        parsed = parsed.update_query_dict(hidden)
    return parsed.render_as_string(hide_password=True)


class ImageRow(NamedTuple):
    """An image's identity, which never changes once its batch is loaded."""

    id: int
    uid: str
    batch_id: int
    kind: str
    declared_class: str
    blob_sha: str


class Static:
    """What one database never changes once a batch is loaded (image identities, checklists,
    reference strips), read once per Store: the hot path then skips those queries. Sessions of
    a Store reach it as ``session.info["static"]``."""

    MAX_IMAGES = 500_000  # about 100 MB; beyond it the map starts afresh
    FREE_RECOUNT_S = 2.0

    def __init__(self) -> None:
        # Images with a free slot (queue.free_images); None = count again.
        self.free_images: int | None = None
        self.free_recount_at = 0.0
        self.checklists: dict[int, dict[str, list[str]]] = {}
        self.references: dict[tuple[int, str], list[str]] = {}
        self._by_uid: dict[str, ImageRow] = {}
        self._by_id: dict[int, ImageRow] = {}

    def image(self, *, uid: str | None = None, image_id: int | None = None) -> ImageRow | None:
        return self._by_uid.get(uid) if uid is not None else self._by_id.get(image_id)  # type: ignore[arg-type]

    def forget_counts(self) -> None:
        """After slots were added or taken outside the queue functions, or a write failed."""
        self.free_images = None

    def add_image(self, row: ImageRow) -> ImageRow:
        if len(self._by_id) >= self.MAX_IMAGES:
            self._by_uid.clear()
            self._by_id.clear()
        self._by_uid[row.uid] = self._by_id[row.id] = row
        return row


def normalise_url(db: str) -> str:
    """Accept a SQLAlchemy URL or a bare file path (taken as SQLite)."""
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser().resolve()}"
    return db


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Take transaction control from the sqlite3 module so we can say BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # WAL lets readers run beside the writer. synchronous=FULL fsyncs the WAL at every
        # commit: NORMAL would already survive a SIGKILL of the server, FULL also survives
        # power loss, and an acknowledged pathologist judgement is worth one fsync.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # Writers take the write lock up front: a deferred transaction that reads and then
        # writes can fail with SQLITE_BUSY_SNAPSHOT, which busy_timeout does not retry.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Store:
    """Engine + sessions for one feedback database; ``read()``/``write()`` are transactions."""

    def __init__(self, url: str, *, create: bool = True, must_exist: bool = False) -> None:
        self.url = normalise_url(url)
        try:
            parsed = make_url(self.url)
        except ArgumentError as exc:
            raise ClinalignError(
                f"--db {url!r}: not a database URL; use sqlite:///feedback.db or "
                "postgresql+psycopg://user@host:port/dbname"
            ) from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                raise ClinalignError(
                    f"--db {url!r}: an in-memory SQLite database would lose every verdict; "
                    "give a file, e.g. sqlite:///feedback.db"
                )
            path = Path(database).expanduser().resolve()
            if must_exist and not path.is_file():
                raise ClinalignError(
                    f"--db {url!r}: {path} does not exist; create it with `clinalign review add-batch`"
                )
            parent = path.parent
            if not parent.is_dir():
                raise ClinalignError(f"--db {url!r}: folder {parent} does not exist; create it first")
            self.engine = create_engine(
                parsed,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_size=8,
                max_overflow=16,
                pool_timeout=60,
            )
            _sqlite_setup(self.engine)
        elif self.dialect == "postgresql":
            self.engine = create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=16)
        else:
            raise ClinalignError(f"--db {url!r}: unsupported database {self.dialect!r}; use sqlite or postgresql")
        self._writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        # SQLite has one writer at a time anyway; queueing writers on a lock in this process
        # replaces SQLite's sleep-and-poll busy handler, which gives long, unfair tail latencies.
        # (busy_timeout still covers writers in other processes, e.g. a CLI import.)
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self.static = Static()
        info = {"static": self.static}
        self._read_sessions = sessionmaker(self.engine, expire_on_commit=False, info=info)
        self._write_sessions = sessionmaker(self._writer, expire_on_commit=False, info=info)
        self._committer: GroupCommitter | None = None
        self._executor: ThreadPoolExecutor | None = None
        if self._write_lock is not None:
            self._committer = GroupCommitter(
                self._write_sessions, self._write_lock, on_failure=self.static.forget_counts
            )
        else:
            # PostgreSQL takes concurrent writers (and groups their WAL flushes itself).
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="clinalign-review-writer")
        if create:
            self.create_schema()

    def create_schema(self) -> None:
        try:
            Base.metadata.create_all(self.engine)
        except Exception as exc:  # connection refused, bad credentials, read-only file ...
            raise ClinalignError(f"--db {self.safe_url}: cannot open the database: {exc}") from exc
        with self.write() as s:
            if s.get(Meta, "schema_version") is None:
                s.add(Meta(key="schema_version", value=SCHEMA_VERSION))

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for messages and logs."""
        return redact_url(self.url)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read_sessions() as session:
            try:
                yield session
            finally:
                session.rollback()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success; the commit returns only once it is durable."""
        lock = self._write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self._write_sessions() as session:
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    self.static.forget_counts()
                    raise
        finally:
            if lock is not None:
                lock.release()

    def submit(self, job: Callable[[Session], T]) -> Future[T]:
        """Run ``job(session)`` in a write transaction off the caller's thread; the future holds
        its result once the transaction committed (durably), or the exception it raised. On
        SQLite concurrent jobs share one commit (review/commits.py)."""
        if self._committer is not None:
            return self._committer.submit(job)
        assert self._executor is not None
        return self._executor.submit(self._transact, job)

    async def run(self, job: Callable[[Session], T]) -> T:
        """``submit`` for async code: await the committed result."""
        return await asyncio.wrap_future(self.submit(job))

    def _transact(self, job: Callable[[Session], T]) -> T:
        with self.write() as s:
            return job(s)

    def dispose(self) -> None:
        if self._committer is not None:
            self._committer.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.engine.dispose()
