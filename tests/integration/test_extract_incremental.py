"""Incremental, date-partitioned extraction on a real Postgres: high-water mark, late events, re-runs,
full rebuild, reload detection, fsspec ``file://`` and ``memory://`` stores, Dask readers.

Range tasks run in this process (``client=None``); the Dask path is covered by test_features_dask.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipeline.db.engine import connect
from pipeline.extract import extract_snapshot, read_events
from pipeline.extract import store as st

pytestmark = pytest.mark.integration
END = datetime(2026, 11, 24, tzinfo=UTC)
AS_OF = datetime(2026, 11, 22, 12, tzinfo=UTC)  # mid-day: the run's last day is cut, later days left out


@pytest.fixture
def shop(db_url: str) -> str:
    from pipeline.datagen import generate_shop

    generate_shop(db_url, users=150, items=60, days=6, seed=5, end=END)
    return db_url


def _clean_ids(url: str, as_of: datetime | None = None) -> set[int]:
    """The ids a fresh, full read must give (through the same SQL rules)."""
    from pipeline.validate.sqlchecks import clean_events_predicate

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT event_id FROM shop.events WHERE " + clean_events_predicate()
                    + (" AND ts < %s" if as_of else ""), (as_of,) if as_of else None)
        return {r[0] for r in cur.fetchall()}


def _add_events(url: str, ts: list[datetime]) -> list[int]:
    """Append events with new ids (a late one is an old ts with a new id)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT max(event_id), min(user_id), min(item_id) FROM shop.events "
                    "WHERE event_type = 'view'")
        top, user, item = cur.fetchone()
        ids = [top + 1 + i for i in range(len(ts))]
        for i, t in zip(ids, ts, strict=True):
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, session_id, quantity, ts) "
                        "VALUES (%s, %s, %s, 'view', 'late', 1, %s)", (i, user, item, t))
    return ids


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def test_incremental_runs_add_only_new_events_and_reruns_are_idempotent(shop: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = extract_snapshot(shop, tmp_path / "r1" / "snapshot", AS_OF, None, store_url=str(store))
    assert first["mode"] == "full" and first["events_read"] == len(_clean_ids(shop))
    ev1 = read_events(tmp_path / "r1" / "snapshot")
    assert set(ev1["event_id"]) == _clean_ids(shop, AS_OF) and ev1["event_id"].is_unique
    root = Path(first["store"])
    days = sorted(p.name for p in (root / "events").iterdir())
    assert days[0].startswith("date=") and len(days) >= 6
    # The store is not cut at as_of (a later run needs those events); the run's view is.
    assert ev1["ts"].max() < pd.Timestamp(AS_OF) and (root / "events" / "date=2026-11-23").is_dir()

    late = _add_events(shop, [END - timedelta(days=4, hours=3), END - timedelta(hours=30)])
    as_of2 = END + timedelta(days=1)
    second = extract_snapshot(shop, tmp_path / "r2" / "snapshot", as_of2, None, store_url=str(store))
    assert (second["mode"], second["events_read"], second["high_water"]) == ("incremental", 2, late[-1])
    ev2 = read_events(tmp_path / "r2" / "snapshot")
    assert set(ev2["event_id"]) == _clean_ids(shop) and ev2["event_id"].is_unique
    # A late event lands in the partition of its own date.
    d = pd.read_parquet(tmp_path / "r2" / "snapshot" / "events", columns=["event_id", "ts", "date"])
    d = d[d["event_id"].isin(late)]
    assert (d["date"].astype(str) == d["ts"].dt.strftime("%Y-%m-%d")).all() and len(d) == 2

    store_files = _files(root)
    view_files = _files(tmp_path / "r2" / "snapshot" / "events")
    again = extract_snapshot(shop, tmp_path / "r2" / "snapshot", as_of2, None, store_url=str(store))
    assert (again["mode"], again["events_read"], again["events"]) == ("rerun", 2, second["events"])
    assert _files(root) == store_files and _files(tmp_path / "r2" / "snapshot" / "events") == view_files
    pd.testing.assert_frame_equal(read_events(tmp_path / "r2" / "snapshot").sort_values("event_id", ignore_index=True),
                                  ev2.sort_values("event_id", ignore_index=True))
    # The first run again, after the second: its own batch is reused, nothing is read.
    old = extract_snapshot(shop, tmp_path / "r1" / "snapshot", AS_OF, None, store_url=str(store))
    assert (old["mode"], old["events_read"], old["events"]) == ("reuse", 0, first["events"])

    full = extract_snapshot(shop, tmp_path / "r3" / "snapshot", as_of2, None, store_url=str(store), full=True)
    assert full["mode"] == "full" and full["events_read"] == full["events"] == second["events"]
    assert set(read_events(tmp_path / "r3" / "snapshot")["event_id"]) == set(ev2["event_id"])
    # Older runs' views survive the rebuild (hard links keep their data).
    assert len(read_events(tmp_path / "r2" / "snapshot")) == second["events"]


def test_store_is_readable_by_dask_with_the_date_partitions(shop: str, tmp_path: Path) -> None:
    import dask.dataframe as dd

    out = extract_snapshot(shop, tmp_path / "snap", AS_OF, None, store_url=str(tmp_path / "store"))
    ddf = dd.read_parquet(str(Path(out["store"]) / "events"))
    assert "date" in ddf.columns and len(ddf) == out["events_read"]
    got = ddf[["event_id", "ts", "date"]].compute()
    assert (got["date"].astype(str) == got["ts"].dt.strftime("%Y-%m-%d")).all()
    view = dd.read_parquet(str(tmp_path / "snap" / "events"), columns=["item_id", "event_type", "ts"])
    assert len(view) == out["events"]


def test_a_reloaded_table_is_detected_and_rebuilt(shop: str, tmp_path: Path) -> None:
    from pipeline.datagen import generate_shop

    extract_snapshot(shop, tmp_path / "a", AS_OF, None, store_url=str(tmp_path / "store"))
    generate_shop(shop, users=150, items=60, days=6, seed=6, end=END)  # same ids, other rows
    out = extract_snapshot(shop, tmp_path / "b", AS_OF, None, store_url=str(tmp_path / "store"))
    assert out["mode"] == "full" and "changed" in out["reason"]
    assert set(read_events(tmp_path / "b")["event_id"]) == _clean_ids(shop, AS_OF)


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_any_fsspec_url_holds_the_store(shop: str, tmp_path: Path, scheme: str) -> None:
    url = f"file://{tmp_path}/fs-store" if scheme == "file" else f"memory://fc-{tmp_path.name}/snapshots"
    out = extract_snapshot(shop, tmp_path / "snap", AS_OF, None, store_url=url)
    assert out["store"].startswith(url) and out["mode"] == "full"
    fs, root = st.resolve(out["store"])
    manifest = st.read_manifest(fs, root)
    assert manifest["high_water"] == out["high_water"]
    assert fs.exists(st.join(root, "events", manifest["batches"][0]["files"][0]["path"]))
    assert set(read_events(tmp_path / "snap")["event_id"]) == _clean_ids(shop, AS_OF)
    _add_events(shop, [END - timedelta(hours=1)])
    more = extract_snapshot(shop, tmp_path / "snap2", END + timedelta(days=1), None, store_url=url)
    assert (more["mode"], more["events_read"]) == ("incremental", 1)
    if scheme == "memory":
        st.remove_tree(fs, root)


def test_rows_committed_late_below_the_high_water_mark_are_not_lost(shop: str, tmp_path: Path) -> None:
    """A writer that drew a lower id but commits after a higher one must still land in the store:
    extraction waits for writers open when it read max(event_id)."""
    import threading

    import psycopg2

    store = tmp_path / "store"
    extract_snapshot(shop, tmp_path / "r1" / "snapshot", AS_OF, None, store_url=str(store))
    slow = psycopg2.connect(shop)
    with slow.cursor() as cur:  # id N+1, not committed yet
        cur.execute("SELECT max(event_id), min(user_id), min(item_id) FROM shop.events WHERE event_type = 'view'")
        top, user, item = cur.fetchone()
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, session_id, quantity, ts) "
                    "VALUES (%s, %s, %s, 'view', 'slow', 1, %s)", (top + 1, user, item, END - timedelta(hours=2)))
    with connect(shop) as conn, conn.cursor() as cur:  # id N+2, committed first
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, session_id, quantity, ts) "
                    "VALUES (%s, %s, %s, 'view', 'fast', 1, %s)", (top + 2, user, item, END - timedelta(hours=1)))
    timer = threading.Timer(3.0, slow.commit)
    timer.start()
    second = extract_snapshot(shop, tmp_path / "r2" / "snapshot", END + timedelta(days=1), None,
                              store_url=str(store))
    timer.join()
    slow.close()
    assert second["writers_waited"] == 1 and second["high_water"] == top + 2
    ids = set(read_events(tmp_path / "r2" / "snapshot")["event_id"])
    assert {top + 1, top + 2} <= ids


def test_a_range_pyarrow_cannot_convert_fails_instead_of_reading_as_empty(
        shop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser's first block is converted when the reader opens; its ArrowInvalid was taken for pyarrow's
    "empty stream" and the range was stored as holding no events: a silent loss. Only an empty stream
    may pass for empty."""
    import pyarrow as pa

    from pipeline.errors import DatabaseError
    from pipeline.extract import snapshot as snap

    good = snap._csv_options

    def wrong_types():  # noqa: ANN202 - event_type read as a number: every row fails to convert
        read, parse, convert = good()
        convert.column_types = {**convert.column_types, "event_type": pa.int64()}
        return read, parse, convert

    monkeypatch.setattr(snap, "_csv_options", wrong_types)
    with pytest.raises(DatabaseError, match="conversion error"):
        extract_snapshot(shop, tmp_path / "r1" / "snapshot", AS_OF, None, store_url=str(tmp_path / "store"))


def test_items_added_after_as_of_stay_out_of_the_run_unless_its_events_use_them(shop: str, tmp_path: Path) -> None:
    """A re-run of an old date must not recommend what the shop added since (same date, same lists)."""
    store = str(tmp_path / "store")
    before = extract_snapshot(shop, tmp_path / "r1" / "snapshot", AS_OF, None, store_url=store)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT max(item_id), min(user_id) FROM shop.items, shop.users")
        top, user = cur.fetchone()
        late = (AS_OF + timedelta(hours=1), AS_OF + timedelta(hours=2), AS_OF - timedelta(hours=2))
        for i, created in enumerate(late, start=1):
            cur.execute("INSERT INTO shop.items (item_id, title, category, brand, price, in_stock, visible, "
                        "created_at) VALUES (%s, 'Late tea', 'Food/Tea', 'Brand', 3.5, true, true, %s)",
                        (top + i, created))
        # an import dated item top+2 after the event that uses it
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, session_id, quantity, ts) "
                    "SELECT max(event_id) + 1, %s, %s, 'view', 's', 1, %s FROM shop.events",
                    (user, top + 2, AS_OF - timedelta(hours=1)))
    again = extract_snapshot(shop, tmp_path / "r1" / "snapshot", AS_OF, None, store_url=store)
    items = pd.read_parquet(tmp_path / "r1" / "snapshot" / "items.parquet")
    assert top + 1 not in set(items["item_id"])  # created after as_of, no event: out
    assert {top + 2, top + 3} <= set(items["item_id"])  # used by an event before as_of; created before it
    assert again["items"] == before["items"] + 2 == len(items)
    # the generator's own items created after as_of are out as well, and all are in a later run
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.items WHERE created_at < %s AND item_id <= %s", (AS_OF, top))
        assert before["items"] == cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM shop.items")
        n_all = cur.fetchone()[0]
    later = extract_snapshot(shop, tmp_path / "r2" / "snapshot", END + timedelta(days=1), None, store_url=store)
    assert later["items"] == n_all > before["items"] + 2
