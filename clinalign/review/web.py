"""What the three routers share: the app's settings and store, and the JSON views of queue items."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fastapi import Request

from . import queue
from .db import Store
from .problems import Conflict
from .schemas import ConceptOut, ItemOut, ProgressOut, VerdictOut


@dataclass(frozen=True)
class Settings:
    """How one app instance was configured (``clinalign review serve`` flags)."""

    trusted_origins: frozenset[str] = field(default_factory=frozenset)
    # Where reviewers reach the app; invite links are built on it, never on the Host header.
    base_url: str | None = None


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def link_base(request: Request, settings: Settings) -> str:
    """The address to put in front of ``/r/<token>``: the configured base URL; without one, the
    request's own address only when it is loopback or a trusted origin (a Host header is
    whatever the client says, so an unknown one must not end up in a credential's link)."""
    if settings.base_url:
        return settings.base_url
    host = request.headers.get("host", "")
    if urlsplit(f"//{host}").hostname in LOOPBACK:
        return f"{request.url.scheme}://{host}"
    origin = f"{request.url.scheme}://{host}"
    if origin in settings.trusted_origins:
        return origin
    raise Conflict(
        f"this server does not know its public address (Host {host!r} is not trusted), so it cannot make "
        "a link; restart `clinalign review serve` with --base_url set to the address reviewers open"
    )


# async: FastAPI would run a plain function in a worker thread, a hop that costs more than this.
async def get_store(request: Request) -> Store:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def item_out(item: queue.ItemView | None) -> ItemOut | None:
    if item is None:
        return None
    return ItemOut(
        uid=item.uid,
        declared_class=item.declared_class,
        image_url=f"/api/images/{item.uid}",
        references=[f"/api/images/{u}" for u in item.references],
        checklist=item.checklist,
        concepts=[ConceptOut(**c) for c in item.concepts],
    )


def progress_out(p: queue.ProgressView) -> ProgressOut:
    return ProgressOut(done=p.done, total=p.total, remaining=p.remaining)


def verdict_out(v: queue.VerdictView) -> VerdictOut:
    return VerdictOut(**v.__dict__)
