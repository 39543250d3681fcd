"""Atomic replacement of a run's local files and folders.

A same-date re-run writes into the live run's own folder (run ids follow the date), while the refresh may
be reading that folder's snapshot. Every snapshot file is therefore written next to its final name and
moved over it with ``os.replace``: a reader sees the old file or the new one, never a half-written one.
A folder (the events view, the ALS factors) is built beside its final name and swapped in with one atomic
exchange of the two names (Linux ``renameat2(RENAME_EXCHANGE)``), so a reader always finds a whole folder,
the old or the new. Where the exchange is unavailable (another OS, a file system without it) two renames
are used, and between them a reader finds no folder (a clear "not found"), never a mix of old and new
files. The old folder is renamed ``.<name>.old-*`` before it is deleted; a process killed meanwhile leaves
it behind, and the next replacement of the same folder sweeps it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
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


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step; False where the system cannot (then nothing moved)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # a libc older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this file system or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _sweep_old(final: Path) -> None:
    """Remove ``.<name>.old-*`` folders a killed replacement of ``final`` left behind."""
    for left in final.parent.glob(f".{final.name}.old-*"):
        shutil.rmtree(left, ignore_errors=True)


@contextmanager
def replacing_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on a clean exit it takes ``path``'s place in one
    atomic exchange (the old folder is removed), on an error it is removed and ``path`` is left as it was."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_old(final)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        old = _sibling(final, "old")
        if final.exists() and _exchange(tmp, final):
            os.replace(tmp, old)  # tmp now holds the old folder
        else:
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


def files_stamp(paths: list[Path]) -> tuple:
    """(path, mtime_ns, size) of each of ``paths`` that exists: a cache key that changes when a re-run of a
    stage rewrites a file, so a long-lived worker does not keep serving the first attempt's copy."""
    out = []
    for p in paths:
        try:
            st = Path(p).stat()
        except FileNotFoundError:
            continue
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)
