"""The admin JSON API: dashboard numbers, concepts, inviting people."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from . import ingest, stats
from .auth import Principal, admin
from .db import Store
from .schemas import ConceptIn, ConceptOut, PersonIn, PersonLinkOut, StatsOut
from .web import get_settings, get_store, link_base

router = APIRouter(prefix="/api/admin", tags=["admin"])

Admin = Annotated[Principal, Depends(admin)]
StoreDep = Annotated[Store, Depends(get_store)]


@router.get("/stats", response_model=StatsOut)
def admin_stats(
    p: Admin,
    store: StoreDep,
    batch: Annotated[str | None, Query(max_length=100, description="Limit to one batch")] = None,
) -> dict:
    """Progress per reviewer and class, plausibility per class, Cohen's and Fleiss' kappa,
    and each reviewer's accuracy on QC items (real images that should be judged plausible)."""
    with store.read() as s:
        return stats.dashboard(s, batch)


@router.post("/concepts", response_model=ConceptOut, status_code=201)
def add_concept(body: ConceptIn, p: Admin, store: StoreDep) -> ConceptOut:
    """Add a finer class (e.g. ``neutrophil-band``) under a parent class of a batch."""
    c = ingest.add_concept(store, body.batch, body.name, body.parent)
    return ConceptOut(name=c.name, parent=c.parent)


@router.post("/people", response_model=PersonLinkOut, status_code=201)
def add_person(body: PersonIn, request: Request, p: Admin, store: StoreDep) -> PersonLinkOut:
    """Create a reviewer (or admin) and return their private link (shown only now)."""
    base = link_base(request, get_settings(request))  # before the person exists: refusing adds nobody
    token = ingest.add_user(store, body.name, body.role, rotate=body.rotate)
    request.app.state.tokens.forget()  # a re-issued link revokes the old one at once
    return PersonLinkOut(name=body.name, role=body.role, link=ingest.private_link(base, token))
