"""The incremental event store: clean events as hive-style date partitions at any fsspec URL.

Layout under the store URL (one store per source database, see :func:`store_url_for`)::

    manifest.json                                   high-water mark, batches and their files, probes
    events/date=YYYY-MM-DD/part-<batch>-<task>.parquet

A *batch* is what one run added: the clean events with ``after < event_id <= upto``. The manifest lists
every batch with its files (path, date, rows), so a run's view is "the batches up to mine", never a
directory listing (a half-written batch of a crashed run is invisible until its manifest entry lands).
Each run gets a local *view* under its snapshot directory (:func:`materialize_view`): hard links to the
store's files on a local store, downloads from a remote one, with the day that contains ``as_of`` cut at
``as_of``; so every reader sees plain local Parquet with exactly the run's events.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from pipeline.files import replacing, replacing_dir

#: Bump when the layout or the manifest's meaning changes: an older store is then rebuilt, never misread.
STORE_VERSION = 1
MANIFEST = "manifest.json"
EVENTS = "events"


def resolve(url: str) -> tuple[object, str]:
    """``(fsspec filesystem, root path)`` of a store URL or local path."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(url))
    return fs, root.rstrip("/") or "/"


def is_local(fs: object) -> bool:
    """The filesystem is this machine's disk (pyarrow can then write and link natively)."""
    proto = fs.protocol  # type: ignore[attr-defined]
    return bool({"file", "local"} & set(proto if isinstance(proto, tuple | list) else [proto]))


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def store_url_for(base_url: str, source_key: str) -> str:
    """The store of one source database under the configured snapshot URL."""
    return join(str(base_url).rstrip("/"), source_key)


def source_key(cur: object) -> str:
    """A short stable key of the source database (server identity + database name).

    Two databases never share a store, so one store's high-water mark is never applied to another's ids.
    """
    cur.execute("SELECT current_database()")  # type: ignore[attr-defined]
    name = cur.fetchone()[0]  # type: ignore[attr-defined]
    try:
        cur.execute("SELECT system_identifier::text FROM pg_control_system()")  # type: ignore[attr-defined]
        ident = cur.fetchone()[0]  # type: ignore[attr-defined]
    except Exception:  # no privilege on pg_control_system: server address and port instead
        cur.connection.rollback()  # type: ignore[attr-defined]
        cur.execute("SELECT coalesce(inet_server_addr()::text, 'local') || ':' || "  # type: ignore[attr-defined]
                    "coalesce(inet_server_port()::text, '')")
        ident = cur.fetchone()[0]  # type: ignore[attr-defined]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]
    return f"{safe}-{hashlib.sha1(f'{ident}/{name}'.encode()).hexdigest()[:10]}"


def read_manifest(fs: object, root: str) -> dict | None:
    """The store's manifest, or None when there is none yet (or it is unreadable: then it is rebuilt)."""
    path = join(root, MANIFEST)
    if not fs.exists(path):  # type: ignore[attr-defined]
        return None
    try:
        with fs.open(path, "rb") as f:  # type: ignore[attr-defined]
            return json.loads(f.read().decode("utf-8"))
    except (ValueError, OSError):
        return None


def write_manifest(fs: object, root: str, manifest: dict) -> None:
    """Write the manifest last, after the files it lists (a crash before leaves the previous one valid)."""
    data = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode("utf-8")
    path = join(root, MANIFEST)
    if is_local(fs):  # atomic on a local disk; object stores replace a key atomically anyway
        with replacing(path) as tmp:
            tmp.write_bytes(data)
        return
    fs.makedirs(root, exist_ok=True)  # type: ignore[attr-defined]
    with fs.open(path, "wb") as f:  # type: ignore[attr-defined]
        f.write(data)


def remove(fs: object, paths: list[str]) -> None:
    """Delete files that exist (a re-run or rebuild replaces its batch's files)."""
    for p in paths:
        if fs.exists(p):  # type: ignore[attr-defined]
            fs.rm(p)  # type: ignore[attr-defined]


def remove_tree(fs: object, path: str) -> None:
    if fs.exists(path):  # type: ignore[attr-defined]
        fs.rm(path, recursive=True)  # type: ignore[attr-defined]


def _day_bounds(day: str) -> tuple[datetime, datetime]:
    d = date.fromisoformat(day)
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def view_files(manifest: dict, upto_batch: str | None = None) -> list[dict]:
    """The files of the batches up to and including ``upto_batch`` (all batches when None)."""
    out: list[dict] = []
    for b in manifest.get("batches", []):
        out.extend(b["files"])
        if b["batch"] == upto_batch:
            break
    return out


def materialize_view(fs: object, root: str, files: list[dict], as_of: datetime, dest: str | Path,
                     schema: pa.Schema) -> int:
    """Make ``dest`` (local) a hive-partitioned copy of the store's events before ``as_of``; return its rows.

    Whole days before ``as_of`` are hard-linked (local store; copied when linking fails, e.g. across
    devices) or downloaded (remote store); the day that contains ``as_of`` is filtered to ``ts < as_of``;
    later days are left out. With no file at all, one empty file keeps the directory readable.
    """
    with replacing_dir(dest) as tmp:  # a reader of the old view never sees a half-built one
        return _fill_view(fs, root, files, as_of, tmp, schema)


def _fill_view(fs: object, root: str, files: list[dict], as_of: datetime, dest: Path, schema: pa.Schema) -> int:
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    local = is_local(fs)
    rows = 0
    for f in files:
        start, end = _day_bounds(f["date"])
        if start >= as_of:
            continue
        src = join(root, EVENTS, f["path"])
        out = dest / f["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        if end <= as_of:
            if local:
                try:
                    os.link(src, out)
                except OSError:
                    shutil.copyfile(src, out)
            else:
                fs.get(src, str(out))  # type: ignore[attr-defined]
            rows += int(f["rows"])
            continue
        # The day of as_of: only its events before as_of belong to the run.
        table = pq.read_table(src, filesystem=None if local else fs)
        ts = pa.scalar(as_of, type=pa.timestamp("us", tz="UTC"))
        table = pads.dataset(table).to_table(filter=pads.field("ts") < ts)
        if table.num_rows:
            pq.write_table(table.cast(schema), out)
            rows += table.num_rows
    if not any(dest.rglob("*.parquet")):
        pq.write_table(schema.empty_table(), dest / "part.empty.parquet")
    return rows
