"""Shared fixtures: tiny image folders, a feedback database on SQLite and (when configured)
PostgreSQL, and a ready-made study (batch + reviewers + admin)."""

from __future__ import annotations

import os
import uuid

import pytest
from review_helpers import Study, make_study
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from clinalign.review.db import Store

PG_URL = os.environ.get("CLINALIGN_TEST_POSTGRES_URL")
REQUIRE_PG = os.environ.get("CLINALIGN_REQUIRE_POSTGRES") == "1"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or a throwaway schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("CLINALIGN_REQUIRE_POSTGRES=1 but CLINALIGN_TEST_POSTGRES_URL is not set")
        pytest.skip("set CLINALIGN_TEST_POSTGRES_URL to also run against PostgreSQL")
    schema = f"clinalign_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


@pytest.fixture
def store(db_url):
    s = Store(db_url)
    yield s
    s.dispose()


@pytest.fixture
def study(store, tmp_path) -> Study:
    return make_study(store, tmp_path)
