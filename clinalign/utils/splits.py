"""Deterministic splits keyed by a file's *name*.

Hashing the base name (not the path, not the folder order) means two commands run separately on
the same data agree on every split without sharing state, and adding images never moves an
existing image to another split.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HALF_EXPERT, HALF_ORACLE = "A", "B"


def hash01(salt: str, name: str) -> float:
    """A uniform number in [0, 1) from ``salt`` and the file's base name (stable across machines)."""
    digest = hashlib.sha256(f"{salt}:{Path(name).name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def half_of(name: str) -> str:
    """``"A"`` (the simulated expert's half) or ``"B"`` (the evaluation oracle's half) for a file name."""
    return HALF_EXPERT if hash01("clinalign-half", name) < 0.5 else HALF_ORACLE


def is_held_out(name: str, fraction: float) -> bool:
    """Whether a file belongs to the held-out real test split (used when no test folder is given)."""
    return hash01("clinalign-test", name) < fraction


def is_validation(name: str, fraction: float) -> bool:
    """Whether a file is kept out of a classifier's training for early stopping."""
    return hash01("clinalign-val", name) < fraction


def derived_seed(role: str, seed: int) -> int:
    """A model seed for ``role`` ("oracle", "expert", ...): one user seed, different streams per role."""
    return int.from_bytes(hashlib.sha256(f"{role}:{seed}".encode()).digest()[:4], "big") & 0x7FFFFFFF
