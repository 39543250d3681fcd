"""Read the clean events before ``as_of`` in event_id ranges on Dask workers, write Parquet.

Partitions are event_id ranges (``divisions``), never LIMIT/OFFSET, so each worker reads an index range.
Users and items are small next to events and are read in one query each.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from pipeline.db.engine import connect, sa_engine
from pipeline.frames import EVENT_COLUMNS
from pipeline.validate.sqlchecks import clean_events_predicate

ROWS_PER_PARTITION = 250_000
# Explicit dtypes: inferring them from a few head rows would make item_id int64 and break on a search
# event's NULL item.
EVENTS_META = pd.DataFrame({
    "user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="Int64"),
    "event_type": pd.Series(dtype="object"), "query": pd.Series(dtype="object"),
    "session_id": pd.Series(dtype="object"), "quantity": pd.Series(dtype="int64"),
    "ts": pd.Series(dtype="datetime64[us, UTC]"),
}, index=pd.Index([], dtype="int64", name="event_id"))


def _events_query(as_of: datetime):  # noqa: ANN202 - sqlalchemy Select
    import sqlalchemy as sa

    t = sa.table("events", *[sa.column(c) for c in EVENT_COLUMNS], schema="shop")
    aliased = t.alias("e")
    return (sa.select(*[aliased.c[c] for c in EVENT_COLUMNS])
            .where(sa.text(clean_events_predicate()))
            .where(aliased.c.ts < sa.literal(as_of, sa.DateTime(timezone=True))))


def extract_snapshot(url: str, out_dir: str | Path, as_of: datetime, client: object) -> dict:
    """Write ``events/``, ``items.parquet`` and ``users.parquet`` under ``out_dir``; return row counts."""
    import dask.dataframe as dd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT min(event_id), max(event_id), count(*) FROM shop.events")
        lo, hi, n = cur.fetchone()
    ev_dir = out / "events"
    if n:
        parts = max(1, min(64, -(-n // ROWS_PER_PARTITION)))
        step = max(1, -(-(hi - lo + 1) // parts))
        divisions = [lo + i * step for i in range(parts)] + [hi + 1]
        divisions = sorted(set(divisions))
        sa_url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
        ddf = dd.read_sql_query(_events_query(as_of), sa_url, index_col="event_id", divisions=divisions,
                                meta=EVENTS_META)
        ddf = ddf.reset_index()
        import shutil

        shutil.rmtree(ev_dir, ignore_errors=True)
        ddf.to_parquet(str(ev_dir), write_index=False, compute=False).compute(scheduler=client.get)
        events_n = len(dd.read_parquet(str(ev_dir)).index)
    else:
        events_n = 0
        ev_dir.mkdir(exist_ok=True)
        pd.DataFrame({c: pd.Series(dtype="object") for c in EVENT_COLUMNS}).to_parquet(ev_dir / "part.0.parquet")
    eng = sa_engine(url)
    items = pd.read_sql("SELECT item_id, title, category, brand, price::float8 AS price, in_stock, visible, "
                        "created_at FROM shop.items ORDER BY item_id", eng)
    users = pd.read_sql("SELECT user_id, created_at FROM shop.users WHERE created_at < %(as_of)s "
                        "ORDER BY user_id", eng, params={"as_of": as_of})
    items.to_parquet(out / "items.parquet", index=False)
    users.to_parquet(out / "users.parquet", index=False)
    return {"events": int(events_n), "items": len(items), "users": len(users)}


def read_snapshot(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The run's (events, items, users) as pandas frames, events sorted by (ts, event_id)."""
    out = Path(out_dir)
    events = pd.read_parquet(out / "events")
    if len(events):
        events = events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    return events, pd.read_parquet(out / "items.parquet"), pd.read_parquet(out / "users.parquet")
