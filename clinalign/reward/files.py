"""Atomic writes for the reward stage (thin names over :mod:`clinalign.utils.fileio`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..utils.fileio import default_file_mode
from ..utils.fileio import write_texts_atomic as write_texts


def fix_mode(path: str | Path) -> None:
    os.chmod(path, default_file_mode())


def write_json(path: Path, obj: Any) -> None:
    write_texts({path: json.dumps(obj, indent=2) + "\n"})


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_texts({path: "".join(json.dumps(r) + "\n" for r in rows)})
