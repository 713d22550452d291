"""What the three routers share: the app's settings and store, and the JSON views of queue items."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from . import queue
from .db import Store
from .schemas import ConceptOut, ItemOut, ProgressOut, VerdictOut


@dataclass(frozen=True)
class Settings:
    """How one app instance was configured (``clinalign review serve`` flags)."""

    trusted_origins: frozenset[str] = field(default_factory=frozenset)


def get_store(request: Request) -> Store:
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
