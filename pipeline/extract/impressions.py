"""``shop.impressions`` of the days the ranker trains on, into the run's snapshot (``impressions.parquet``).

Only ``[as_of - days, as_of)``: the ranker's training windows are the days before the holdout, and older
impressions teach nothing the events do not. A shop without the table (a database migrated before it) or
without rows gets no file; the ranker then trains as before.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from pipeline.files import write_parquet

FILE = "impressions.parquet"
COLUMNS = ["user_id", "item_id", "placement", "rank", "variant", "run_id", "ts"]


def extract_impressions(url: str, snap: str | Path, as_of: datetime, *, days: int = 8) -> int:
    """Write the impressions of ``[as_of - days, as_of)`` to ``snap/impressions.parquet``; the row count."""
    from pipeline.db.engine import connect

    path = Path(snap) / FILE
    path.unlink(missing_ok=True)  # a re-run with no impressions must not read an older run's file
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('shop.impressions') IS NOT NULL")
        if not cur.fetchone()[0]:
            return 0
        cur.execute(f"SELECT {', '.join(COLUMNS)} FROM shop.impressions WHERE ts >= %s AND ts < %s",
                    (as_of - timedelta(days=days), as_of))
        rows = cur.fetchall()
    if not rows:
        return 0
    df = pd.DataFrame(rows, columns=COLUMNS).astype({"user_id": "int64", "item_id": "int64", "rank": "int64"})
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    write_parquet(df, path)
    return len(df)


def read_impressions(snap: str | Path, users: list[int] | None = None) -> pd.DataFrame | None:
    """The snapshot's impressions (only ``users``' when given), or None when the run has none."""
    path = Path(snap) / FILE
    if not path.exists():
        return None
    df = pd.read_parquet(path, filters=[("user_id", "in", users)] if users is not None else None)
    return df.assign(ts=pd.to_datetime(df["ts"], utc=True)) if len(df) else None
