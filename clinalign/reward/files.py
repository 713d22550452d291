"""Atomic file writes for the reward stage: temp file beside the target, then ``os.replace``.

Unlike a bare ``mkstemp`` (mode 0600), the files get the permissions an ordinary ``open`` would
give under the user's umask, so a checkpoint or CSV is readable by whoever could read the folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fix_mode(path: str | Path) -> None:
    os.chmod(path, _default_mode())


def write_texts(files: dict[Path, str]) -> None:
    """Write every file to a temporary sibling first, then rename them all: all or nothing."""
    tmps: dict[Path, str] = {}
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            tmps[path] = tmp
            with os.fdopen(fd, "w", newline="") as f:
                f.write(text)
            fix_mode(tmp)
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_texts({path: json.dumps(obj, indent=2) + "\n"})


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_texts({path: "".join(json.dumps(r) + "\n" for r in rows)})
