"""Read the clean events before ``as_of`` in event_id ranges on Dask workers, write Parquet.

Partitions are event_id ranges, never LIMIT/OFFSET, so each task reads an index range. Each task streams
``COPY (SELECT ... WHERE event_id >= lo AND event_id < hi AND <clean> AND ts < as_of) TO STDOUT`` as CSV and
parses it with pyarrow straight into a Parquet file: no Python object per row (pandas.read_sql through
SQLAlchemy ran at about 5% of the raw COPY rate). Users and items are small next to events and are read in
one query each. Only rows that pass validation are read (the quarantine's own SQL rules).
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.db.engine import connect, sa_engine
from pipeline.errors import DatabaseError
from pipeline.frames import EVENT_COLUMNS
from pipeline.validate.sqlchecks import (
    TS_FLOOR,
    clean_events_predicate,
    clean_items_predicate,
    clean_users_predicate,
    proven_unique,
)

ROWS_PER_PARTITION = 250_000
#: Partitions per Dask worker at least (so two workers overlap reading and parsing).
PARTS_PER_WORKER = 2
EVENTS_SCHEMA = pa.schema([
    ("event_id", pa.int64()), ("user_id", pa.int64()), ("item_id", pa.int64()), ("event_type", pa.string()),
    ("query", pa.string()), ("session_id", pa.string()), ("quantity", pa.int64()),
    ("ts", pa.timestamp("us", tz="UTC")),
])
# Kept for callers of the walking skeleton (dtypes of the events frame).
EVENTS_META = pd.DataFrame({
    "user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="Int64"),
    "event_type": pd.Series(dtype="object"), "query": pd.Series(dtype="object"),
    "session_id": pd.Series(dtype="object"), "quantity": pd.Series(dtype="int64"),
    "ts": pd.Series(dtype="datetime64[us, UTC]"),
}, index=pd.Index([], dtype="int64", name="event_id"))
# pandas metadata on the Arrow files so plain pd.read_parquet gives item_id as nullable Int64, not float.
_PANDAS_META = pa.Schema.from_pandas(EVENTS_META.reset_index()[EVENT_COLUMNS], preserve_index=False).metadata


def _csv_options():  # noqa: ANN202 - three pyarrow option objects
    import pyarrow.csv as pacsv

    return (pacsv.ReadOptions(column_names=EVENTS_SCHEMA.names, block_size=4 << 20),
            # Queries may hold newlines (quoted by COPY), so the slower multi-line parse is needed.
            pacsv.ParseOptions(newlines_in_values=True),
            pacsv.ConvertOptions(column_types=dict(zip(EVENTS_SCHEMA.names, EVENTS_SCHEMA.types, strict=True)),
                                 strings_can_be_null=True, quoted_strings_can_be_null=False,
                                 timestamp_parsers=[pacsv.ISO8601]))


def copy_range(url: str, lo: int, hi: int, as_of: datetime, clean: str, path: str) -> int:
    """One task: the clean events with ``lo <= event_id < hi`` and ``ts < as_of`` into one Parquet file.

    The COPY runs in a thread writing into a pipe while pyarrow parses the other end block by block and
    appends row groups to the Parquet file, so the server's export and the parse overlap.
    """
    import os
    import threading

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from psycopg2 import sql

    cols = sql.SQL(", ").join(sql.Identifier(c) for c in EVENT_COLUMNS)
    stmt = sql.SQL("COPY (SELECT {cols} FROM shop.events WHERE event_id >= {lo} AND event_id < {hi} "
                   "AND ts < {as_of} AND {clean}) TO STDOUT WITH (FORMAT csv)").format(
        cols=cols, lo=sql.Literal(int(lo)), hi=sql.Literal(int(hi)), as_of=sql.Literal(as_of), clean=sql.SQL(clean))
    rfd, wfd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(wfd, "wb") as w, connect(url) as conn, conn.cursor() as cur:
                cur.execute("SET TimeZone = 'UTC'")
                cur.copy_expert(stmt.as_string(conn), w)
        except BaseException as exc:  # re-raised in the task below
            failure.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    rows = 0
    with os.fdopen(rfd, "rb") as r:
        try:
            reader = pacsv.open_csv(r, *_csv_options())
        except pa.ArrowInvalid:  # no rows at all: pyarrow refuses an empty stream
            reader = None
        with pq.ParquetWriter(path, EVENTS_SCHEMA.with_metadata(_PANDAS_META), compression="snappy") as out:
            if reader is None:
                out.write_table(EVENTS_SCHEMA.empty_table().replace_schema_metadata(_PANDAS_META))
            else:
                for batch in reader:
                    out.write_batch(batch)
                    rows += batch.num_rows
        r.read()  # drain, so a producer blocked on a full pipe can finish and report
    producer.join()
    if failure:
        raise failure[0]
    return rows


def event_ranges(lo: int, hi: int, n: int, workers: int) -> list[tuple[int, int]]:
    """Half-open event_id ranges covering ``[lo, hi]``: at most ROWS_PER_PARTITION rows each (if ids are
    dense), at least PARTS_PER_WORKER per worker, never more than 256."""
    parts = max(1, min(256, max(-(-n // ROWS_PER_PARTITION), PARTS_PER_WORKER * max(1, workers))))
    step = max(1, -(-(hi - lo + 1) // parts))
    bounds = sorted({*range(lo, hi + 1, step), hi + 1})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _n_workers(client: object) -> int:
    try:
        return len(client.scheduler_info()["workers"]) or 1  # type: ignore[attr-defined]
    except Exception:  # a non-distributed scheduler: one worker's worth of partitions
        return 1


def extract_snapshot(url: str, out_dir: str | Path, as_of: datetime, client: object, *,
                     ts_floor: str = TS_FLOOR) -> dict:
    """Write ``events/``, ``items.parquet`` and ``users.parquet`` under ``out_dir``; return row counts.

    Only rows that pass validation are read (the same SQL rules as the quarantine); the duplicate-key scan
    is skipped where the catalog proves the key unique, so each range read stays an index range scan.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT min(event_id), max(event_id), count(*) FROM shop.events")
        lo, hi, n = cur.fetchone()
        items_unique = proven_unique(cur, "shop.items", "item_id")
        clean_events = clean_events_predicate(ts_floor=ts_floor,
                                              unique_proven=proven_unique(cur, "shop.events", "event_id"),
                                              items_unique_proven=items_unique)
        clean_items = clean_items_predicate(ts_floor=ts_floor, unique_proven=items_unique)
        clean_users = clean_users_predicate(ts_floor=ts_floor,
                                            unique_proven=proven_unique(cur, "shop.users", "user_id"))
    ev_dir = out / "events"
    shutil.rmtree(ev_dir, ignore_errors=True)
    ev_dir.mkdir(parents=True)
    if n:
        ranges = event_ranges(int(lo), int(hi), int(n), _n_workers(client))
        paths = [str(ev_dir / f"part.{i:05d}.parquet") for i in range(len(ranges))]
        try:
            futures = client.map(copy_range, [url] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges],
                                 [as_of] * len(ranges), [clean_events] * len(ranges), paths, pure=False)
            events_n = sum(client.gather(futures))
        except DatabaseError:
            raise
        except Exception as exc:
            raise DatabaseError(f"extracting shop.events failed: {exc}",
                                "that the Dask workers reach the database URL, and the worker logs") from exc
    else:
        import pyarrow.parquet as pq

        events_n = 0
        pq.write_table(EVENTS_SCHEMA.empty_table().replace_schema_metadata(_PANDAS_META), ev_dir / "part.00000.parquet")
    eng = sa_engine(url)
    # Constant SQL text (no user values); with params psycopg2 needs any % doubled.
    items = pd.read_sql("SELECT item_id, title, category, brand, price::float8 AS price, in_stock, visible, "
                        "created_at, description, image_path FROM shop.items WHERE "
                        + clean_items + " ORDER BY item_id", eng)
    users = pd.read_sql("SELECT user_id, created_at FROM shop.users WHERE created_at < %(as_of)s AND "
                        + clean_users.replace("%", "%%") + " ORDER BY user_id", eng, params={"as_of": as_of})
    items.to_parquet(out / "items.parquet", index=False)
    users.to_parquet(out / "users.parquet", index=False)
    return {"events": int(events_n), "items": len(items), "users": len(users)}


def read_snapshot(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The run's (events, items, users) as pandas frames, events sorted by (ts, event_id)."""
    out = Path(out_dir)
    events = pd.read_parquet(out / "events")
    if "item_id" in events.columns:  # nullable: search events carry no item
        events["item_id"] = events["item_id"].astype("Int64")
    if len(events):
        events = events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    return events, pd.read_parquet(out / "items.parquet"), pd.read_parquet(out / "users.parquet")
