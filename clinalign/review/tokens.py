"""Access tokens: random, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import re
import secrets

# 32 random bytes = 256 bits, URL-safe so the token fits a private link.
TOKEN_BYTES = 32
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,128}$")


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    # A plain hash is enough: tokens are uniformly random, so there is nothing to brute-force
    # that a slow hash would protect.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def looks_like_token(token: str) -> bool:
    return bool(TOKEN_RE.match(token))
