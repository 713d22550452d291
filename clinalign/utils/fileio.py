"""Atomic file writes, the one way clinalign writes a file a crash must not leave half-written.

A temp file beside the target is written, flushed, fsynced, given the permissions a plain
``open`` would give under the user's umask (``mkstemp`` alone gives 0600), then renamed onto the
target: readers and a crash see the old file or the whole new one, never part of one.
:func:`atomic_directory` does the same for a folder of outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_directory(out: str | Path, durable: bool = False) -> Iterator[Path]:
    """A temp folder beside ``out`` to fill; it replaces ``out`` only when the block completes.

    On an exception the temp folder is removed and ``out`` is left as it was. ``durable``: fsync
    every file and the parent folder, so that after a power cut the folder is whole or absent
    (checkpoints; cheaper outputs that can be recomputed skip it).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if durable:
            for f in tmp.rglob("*"):
                if f.is_file():
                    with f.open("rb") as fh:
                        os.fsync(fh.fileno())
        if out.exists():
            shutil.rmtree(out)  # os.replace cannot replace a non-empty directory
        os.rename(tmp, out)
        if durable:
            fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_writer(path: str | Path, mode: str = "wb", newline: str | None = None) -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": newline})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_writer(path, "w", newline="") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_texts_atomic(files: dict[Path, str]) -> None:
    """Several files, all or nothing: every temp file is complete before any is renamed."""
    tmps: dict[Path, str] = {}
    try:
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            tmps[path] = tmp
            with os.fdopen(fd, "w", newline="") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, default_file_mode())
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)
        raise
