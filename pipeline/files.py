"""Atomic replacement of a run's local files and folders.

A same-date re-run writes into the live run's own folder (run ids follow the date), while the refresh may
be reading that folder's snapshot. Every snapshot file is therefore written next to its final name and
moved over it with ``os.replace``: a reader sees the old file or the new one, never a half-written one.
A folder (the events view, the ALS factors) is built beside its final name and swapped in with two
renames; between them a reader finds no folder (a clear "not found"), never a mix of old and new files.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd


def _sibling(path: Path, tag: str) -> Path:
    # same folder, so the rename never crosses a file system; dot-prefixed, so directory readers skip it
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` atomically, on an
    error it is removed and ``path`` is left as it was."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, "tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on a clean exit it takes ``path``'s place (the old
    folder is removed), on an error it is removed and ``path`` is left as it was."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = _sibling(final, "old")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: pd.DataFrame, path: str | Path, **kw: object) -> None:
    """``df.to_parquet(path, index=False)``, atomically (see :func:`replacing`)."""
    with replacing(path) as tmp:
        df.to_parquet(tmp, index=False, **kw)


def write_text(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)``, atomically (see :func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)
