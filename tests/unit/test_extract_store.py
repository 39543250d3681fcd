"""The incremental snapshot's pure parts (no database): planning, ranges, day split, the run's view."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.extract import plan_extract
from pipeline.extract import store as st
from pipeline.extract.snapshot import FILE_SCHEMA, batch_key, event_ranges, split_by_day

FP = "fp"


def _manifest(*batches: tuple[str, int, int]) -> dict:
    return {"version": st.STORE_VERSION, "fingerprint": FP, "high_water": batches[-1][2] if batches else 0,
            "batches": [{"batch": b, "after": a, "upto": u, "files": []} for b, a, u in batches]}


def _plan(manifest: dict | None, batch: str = "r3", last: int = 300, **kw: object):  # noqa: ANN202
    args = {"batch": batch, "first_id": 1, "last_id": last, "fingerprint": FP, "probes_match": True, **kw}
    return plan_extract(manifest, **args)  # type: ignore[arg-type]


def test_plan_reads_only_after_the_high_water_mark() -> None:
    p = _plan(_manifest(("r1", 0, 100), ("r2", 100, 200)))
    assert (p.mode, p.after, [b["batch"] for b in p.keep]) == ("incremental", 200, ["r1", "r2"])


def test_plan_rebuilds_when_it_cannot_trust_the_store() -> None:
    m = _manifest(("r1", 0, 100))
    assert _plan(None).mode == "full" and _plan(None).after == 0
    assert _plan(m, full=True).mode == "full"
    assert _plan(m, fingerprint="other").mode == "full"  # rules or ts_floor changed
    assert _plan(m, probes_match=False).mode == "full"  # rows under the mark changed (reloaded table)
    assert _plan(m, last=50).mode == "full"  # ids went back
    assert _plan({**m, "version": st.STORE_VERSION + 1}).mode == "full"
    assert all(_plan(m, **kw).keep == [] for kw in ({"full": True}, {"probes_match": False}))


def test_plan_for_a_rerun_replaces_the_newest_batch_and_reuses_older_ones() -> None:
    m = _manifest(("r1", 0, 100), ("r2", 100, 200))
    again = _plan(m, batch="r2")
    assert (again.mode, again.after, [b["batch"] for b in again.keep]) == ("rerun", 100, ["r1"])
    old = _plan(m, batch="r1")
    assert (old.mode, old.after, [b["batch"] for b in old.keep]) == ("reuse", None, ["r1"])


def test_event_ranges_cover_every_id_once() -> None:
    for lo, hi, workers in ((1, 5_000_000, 2), (101, 150, 2), (7, 7, 4), (1, 3_000_000, 3)):
        r = event_ranges(lo, hi, hi - lo + 1, workers)
        assert r[0][0] == lo and r[-1][1] == hi + 1
        assert all(a < b for a, b in r) and all(r[i][1] == r[i + 1][0] for i in range(len(r) - 1))
    assert len(event_ranges(101, 150, 50, 2)) == 1  # a small increment is one range
    assert len(event_ranges(1, 5_000_000, 5_000_000, 2)) % 2 == 0  # no idle worker in the last round


def test_split_by_day_keeps_every_row_in_its_utc_date() -> None:
    ts = pd.to_datetime(["2026-11-01 23:59:59", "2026-11-02 00:00:00", "2026-11-01 00:00:01"], utc=True)
    batch = pa.RecordBatch.from_pydict({"event_id": [1, 2, 3], "ts": pa.array(ts, pa.timestamp("us", tz="UTC"))})
    parts = dict(split_by_day(batch))
    day = (datetime(2026, 11, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days
    assert parts[day].column("event_id").to_pylist() == [1, 3]
    assert parts[day + 1].column("event_id").to_pylist() == [2]
    one = dict(split_by_day(batch.slice(0, 1)))
    assert list(one) == [day] and one[day].num_rows == 1


def test_batch_key_is_stable_per_run_directory(tmp_path: Path) -> None:
    a = batch_key(tmp_path / "runs" / "nightly-1" / "snapshot")
    assert a == batch_key(tmp_path / "runs" / "nightly-1" / "snapshot") and a.startswith("nightly-1-")
    assert a != batch_key(tmp_path / "runs" / "nightly-2" / "snapshot")


def _write(fs: object, root: str, rel: str, ts: list[str]) -> dict:
    t = pa.table({"event_id": list(range(len(ts))), "user_id": [1] * len(ts), "item_id": [1] * len(ts),
                  "event_type": ["view"] * len(ts), "query": [None] * len(ts), "session_id": ["s"] * len(ts),
                  "quantity": [1] * len(ts), "ts": pa.array(pd.to_datetime(ts, utc=True), pa.timestamp("us", "UTC"))},
                 schema=FILE_SCHEMA)
    path = st.join(root, st.EVENTS, rel)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # type: ignore[attr-defined]
    with fs.open(path, "wb") as f:  # type: ignore[attr-defined]
        pq.write_table(t, f)
    return {"path": rel, "date": rel[5:15], "rows": len(ts)}


@pytest.mark.parametrize("url", ["local", "memory://fc-view-test"])
def test_view_cuts_the_day_of_as_of_and_drops_later_days(tmp_path: Path, url: str) -> None:
    fs, root = st.resolve(str(tmp_path / "store") if url == "local" else url)
    files = [_write(fs, root, "date=2026-11-01/part-a.parquet", ["2026-11-01 10:00", "2026-11-01 11:00"]),
             _write(fs, root, "date=2026-11-02/part-a.parquet", ["2026-11-02 08:00", "2026-11-02 13:00"]),
             _write(fs, root, "date=2026-11-03/part-a.parquet", ["2026-11-03 08:00"])]
    st.write_manifest(fs, root, {"batches": [{"batch": "a", "files": files}]})
    assert st.read_manifest(fs, root)["batches"][0]["files"] == files
    as_of = datetime(2026, 11, 2, 12, tzinfo=UTC)
    n = st.materialize_view(fs, root, files, as_of, tmp_path / "view", FILE_SCHEMA)
    ev = pd.read_parquet(tmp_path / "view")
    assert n == len(ev) == 3 and ev["ts"].max() < pd.Timestamp(as_of)
    assert sorted(ev["date"].astype(str).unique()) == ["2026-11-01", "2026-11-02"]
    if url == "local":  # whole days are hard links to the store's files, not copies
        linked = (tmp_path / "view" / files[0]["path"]).stat().st_ino
        assert linked == Path(root, "events", files[0]["path"]).stat().st_ino
    # No file before as_of: still a readable, empty directory.
    assert st.materialize_view(fs, root, files, datetime(2026, 10, 1, tzinfo=UTC), tmp_path / "v0", FILE_SCHEMA) == 0
    assert pd.read_parquet(tmp_path / "v0").empty
    if url != "local":
        st.remove_tree(fs, root)
