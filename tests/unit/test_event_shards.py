"""The run's user-sharded event layout: written once, reused for the same bounds and event files, rewritten
when either changes (a re-extract or another shard size)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.extract.shards import plan_shards, read_shard_events, shard_events


def _snapshot(tmp_path: Path) -> Path:
    snap = tmp_path / "snapshot"
    ts = pd.Timestamp("2026-11-20", tz="UTC")
    for day in range(2):
        d = snap / "events" / f"date=2026-11-2{day}"
        d.mkdir(parents=True)
        n = 50
        pd.DataFrame({"event_id": np.arange(n) + 100 * day, "user_id": np.arange(n) % 20 + 1,
                      "item_id": pd.array(np.arange(n) % 7, dtype="Int64"), "event_type": "view",
                      "query": None, "session_id": "s", "quantity": pd.array([1] * n, dtype="Int64"),
                      "ts": ts + pd.to_timedelta(np.arange(n) + 86400 * day, unit="s")}
                     ).to_parquet(d / "part-0.parquet", index=False)
    return snap


def test_the_layout_is_reused_for_the_same_bounds_and_files_and_rewritten_otherwise(tmp_path: Path) -> None:
    snap = _snapshot(tmp_path)
    users = np.arange(1, 21)
    bounds = plan_shards(users, 6)
    first = shard_events(snap, bounds, None, chunk_rows=17)
    assert first["reused"] is False and first["rows"] == 100 and first["shards"] == 4
    shard0 = read_shard_events(snap, 0)
    assert set(shard0["user_id"]) == set(range(1, 6)) and len(shard0) == 30  # 4 shards of 5 users
    again = shard_events(snap, bounds, None, chunk_rows=17)
    assert again["reused"] is True and again["rows"] == 100
    # another shard size: the layout is rewritten for the new bounds
    other = shard_events(snap, plan_shards(users, 10), None, chunk_rows=17)
    assert other["reused"] is False and set(read_shard_events(snap, 0)["user_id"]) == set(range(1, 11))
    # the same bounds over re-extracted events (a file rewritten): split again, the new rows read
    f = snap / "events" / "date=2026-11-21" / "part-0.parquet"
    df = pd.read_parquet(f)
    df.iloc[:10].to_parquet(f, index=False)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    fresh = shard_events(snap, plan_shards(users, 10), None, chunk_rows=17)
    assert fresh["reused"] is False and fresh["rows"] == 60
    assert shard_events(snap, plan_shards(users, 10), None, chunk_rows=17, reuse=False)["reused"] is False
