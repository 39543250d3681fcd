"""The run's events laid out by user shard, so that a scoring task reads its own users' events and no others.

``plan_shards`` cuts the sorted user ids into ranges of at most ``shard_users`` users (the memory budget of
one task, whatever the shop's size). ``shard_events`` streams every file of the run's date-partitioned events
view in record batches of ``chunk_rows`` rows, splits each batch by shard and writes the pieces under
``events_by_shard/shard=NNNNN/``: one Dask task per source file, each holding one batch at a time. A shard's
read (``read_shard_events``) then touches only its own folder. The user_features stage writes the layout and
score_users reuses it (same bounds, same event files); a partial run (``--users``) writes its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import files_stamp, replacing_dir, write_text

SHARDS_DIR = "events_by_shard"
#: The layout's key (bounds, source files) and row count, beside the shard folders.
LAYOUT_FILE = "layout.json"


def plan_shards(users: np.ndarray, shard_users: int) -> np.ndarray:
    """Upper bounds (inclusive user ids) of consecutive user-id ranges of at most ``shard_users`` users each."""
    users = np.unique(np.asarray(users, dtype="int64"))
    if not len(users):
        return np.zeros(0, dtype="int64")
    n = -(-len(users) // max(1, int(shard_users)))
    return np.array([part[-1] for part in np.array_split(users, n) if len(part)], dtype="int64")


def shard_of(user_ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The shard index of each user id (ids above the last bound get the last shard)."""
    return np.minimum(np.searchsorted(bounds, np.asarray(user_ids, dtype="int64"), side="left"),
                      max(len(bounds) - 1, 0))


def shard_cuts(sorted_ids: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Where each shard after the first starts in ``sorted_ids`` (ascending user ids): ``len(bounds) - 1``
    positions, for ``np.split`` or slicing a frame sorted by user."""
    return np.searchsorted(shard_of(sorted_ids, bounds), np.arange(1, len(bounds)), side="left")


def split_users(users: np.ndarray, bounds: np.ndarray) -> list[np.ndarray]:
    """Every shard's users (sorted), from one pass over the users: a list as long as ``bounds``."""
    users = np.unique(np.asarray(users, dtype="int64"))
    return np.split(users, shard_cuts(users, bounds)) if len(bounds) else []


def shard_users(users: np.ndarray, bounds: np.ndarray, k: int) -> np.ndarray:
    """The users of shard ``k`` (sorted)."""
    return split_users(users, bounds)[k]


def _split_file(src: str, dest: str, bounds: np.ndarray, chunk_rows: int, tag: str) -> int:
    """One task: stream ``src`` in batches, write each batch's rows under their shard's folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(src)
    rows = 0
    for b, batch in enumerate(f.iter_batches(batch_size=max(1, chunk_rows))):
        table = pa.Table.from_batches([batch])
        shard = shard_of(table.column("user_id").to_numpy(zero_copy_only=False), bounds)
        order = np.argsort(shard, kind="stable")
        shard_sorted = shard[order]
        table = table.take(pa.array(order))
        cuts = np.flatnonzero(np.r_[True, shard_sorted[1:] != shard_sorted[:-1]])
        for start, stop in zip(cuts, np.r_[cuts[1:], len(shard_sorted)], strict=True):
            folder = Path(dest) / f"shard={int(shard_sorted[start]):05d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.slice(start, stop - start), folder / f"{tag}-{b:04d}.parquet")
        rows += table.num_rows
    return rows


def _layout_key(sources: list[str], bounds: np.ndarray) -> dict:
    return {"bounds": [int(b) for b in bounds], "sources": [list(x) for x in files_stamp([Path(s) for s in sources])]}


def shard_events(snapshot_dir: str | Path, bounds: np.ndarray, client: object | None, *,
                 chunk_rows: int, reuse: bool = True) -> dict:
    """Write ``snapshot/events_by_shard`` from ``snapshot/events`` (replacing an earlier layout).

    With ``reuse``, a layout already written for the same ``bounds`` from the same event files (their paths,
    sizes and mtimes, kept in ``layout.json``) is kept as it is: the user_features stage writes it and
    score_users reads the same shards, so the run splits its events once."""
    import json

    from pipeline.extract.snapshot import events_path

    snap = Path(snapshot_dir)
    sources = sorted(str(p) for p in events_path(snap).rglob("*.parquet"))
    key = _layout_key(sources, bounds)
    meta = snap / SHARDS_DIR / LAYOUT_FILE
    if reuse and meta.is_file():
        try:
            old = json.loads(meta.read_text())
        except ValueError:
            old = {}
        if {k: old.get(k) for k in key} == key:
            return {"rows": int(old.get("rows", 0)), "shards": len(bounds), "files": len(sources), "reused": True}
    with replacing_dir(snap / SHARDS_DIR) as tmp:
        tags = [f"f{i:05d}" for i in range(len(sources))]
        if client is not None and sources:
            n = len(sources)
            futures = client.map(_split_file, sources, [str(tmp)] * n, [bounds] * n,  # type: ignore[attr-defined]
                                 [chunk_rows] * n, tags, pure=False)
            rows = sum(client.gather(futures))  # type: ignore[attr-defined]
        else:
            rows = sum(_split_file(s, str(tmp), bounds, chunk_rows, t) for s, t in zip(sources, tags, strict=True))
        write_text(tmp / LAYOUT_FILE, json.dumps({**key, "rows": int(rows)}))
    return {"rows": int(rows), "shards": len(bounds), "files": len(sources), "reused": False}


def read_shard_events(snapshot_dir: str | Path, k: int) -> pd.DataFrame:
    """Shard ``k``'s events (the ``read_events`` columns and types); empty when its users have none."""
    from pipeline.extract.snapshot import EVENT_COLUMNS, FILE_SCHEMA

    folder = Path(snapshot_dir) / SHARDS_DIR / f"shard={k:05d}"
    if folder.exists():
        events = pd.read_parquet(folder, columns=EVENT_COLUMNS)
    else:
        events = FILE_SCHEMA.empty_table().to_pandas()[EVENT_COLUMNS]
    if "item_id" in events.columns:
        events["item_id"] = events["item_id"].astype("Int64")
    return events
