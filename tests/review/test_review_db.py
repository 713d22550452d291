"""The feedback store's helpers: URL redaction for messages and logs."""

from __future__ import annotations

import pytest

from clinalign.review.db import Store, redact_url


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql+psycopg://ada:s3cret@db.lab:5432/review", "postgresql+psycopg://ada:***@db.lab:5432/review"),
        (
            "postgresql+psycopg://ada@db.lab/review?password=s3cret",
            "postgresql+psycopg://ada@db.lab/review?password=xxx",
        ),
        ("postgresql://db.lab/review?sslmode=require", "postgresql://db.lab/review?sslmode=require"),
        ("sqlite:////data/feedback.db", "sqlite:////data/feedback.db"),
        ("feedback.db", "feedback.db"),
        ("postgresql://ada:s3cret@db.lab:notaport/x", "<database URL>"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


def test_store_safe_url_uses_redact_url(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        assert store.safe_url == redact_url(store.url) == f"sqlite:///{tmp_path / 'f.db'}"
    finally:
        store.dispose()
