"""Imports into a real PostgreSQL: exact counts, idempotent re-import, and the public datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.db.engine import connect
from pipeline.errors import InputDataError
from pipeline.ingest import import_dataset

pytestmark = pytest.mark.integration

TS = 1511544070


def _counts(url: str) -> dict[str, int]:
    with connect(url) as conn, conn.cursor() as cur:
        out = {}
        for name, table in [("users", "shop.users"), ("items", "shop.items"), ("events", "shop.events"),
                            ("quarantine", "recsys.quarantine")]:
            cur.execute(f"SELECT count(*) FROM {table}")
            out[name] = cur.fetchone()[0]
        return out


def _corrupt_csv(path: Path) -> Path:
    lines = [
        b"user_id,item_id,event_type,ts,query",
        b"1,10,view,2024-01-01T00:00:00Z,",
        b"x,10,view,2024-01-01T00:00:00Z,",  # bad id
        b"1,10,view",  # missing field
        b"1,10,view,2024-01-01,,extra",  # extra field
        b"1,10,teleport,2024-01-01,",  # unknown event type
        b"1,10,view,1970-01-01,",  # impossible timestamp
        b"1,10,vi\xffew,2024-01-02,",  # invalid UTF-8
        b"1,10,view,2024-01-02,a\x00b",  # NUL byte
        b"1,10,search,2024-01-02," + b"q" * 20_000,  # huge field
        b"1,10,view,2024-01-01T00:00:00Z,",  # duplicate of line 2
        b"2,,search,2024-01-03,red shoes",
        b"2,11,purchase,2024-01-03T10:00:00+02:00,",
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_corrupted_csv_exact_counts_and_idempotent(db_url: str, tmp_path: Path) -> None:
    path = _corrupt_csv(tmp_path / "events.csv")
    first = import_dataset(db_url, "csv", path)
    assert first.loaded == {"users": 2, "items": 2, "events": 3}
    assert first.quarantined == 9
    assert first.summary_line() == "imported csv: 2 users, 2 items, 3 events loaded; 9 rows quarantined"
    assert first.run_id.startswith("import_csv_")
    assert _counts(db_url) == {"users": 2, "items": 2, "events": 3, "quarantine": 9}
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT (raw->>'line')::int, reason, source FROM recsys.quarantine ORDER BY 1")
        rows = cur.fetchall()
        cur.execute("SELECT event_id, user_id, item_id, event_type, query, ts FROM shop.events ORDER BY 1")
        events = cur.fetchall()
        cur.execute("SELECT raw->>'text' FROM recsys.quarantine WHERE raw->>'line' IN ('8', '9')")
        raws = [r[0] for r in cur.fetchall()]
    expected = ["bad user_id", "missing field", "extra field", "unknown event type", "impossible timestamp",
                "invalid UTF-8", "NUL byte", "huge field", "duplicate event"]
    assert [line for line, _, _ in rows] == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    for (_, reason, source), name in zip(rows, expected, strict=True):
        assert reason.startswith(name), reason
        assert source == "shop.events"
    assert "1,10,vi\\xffew,2024-01-02," in raws and "1,10,view,2024-01-02,a\\x00b" in raws
    assert [e[:5] for e in events] == [(2, 1, 10, "view", None), (12, 2, None, "search", "red shoes"),
                                       (13, 2, 11, "purchase", None)]

    again = import_dataset(db_url, "csv", path)
    assert (again.loaded, again.quarantined) == (first.loaded, first.quarantined)
    assert _counts(db_url) == {"users": 2, "items": 2, "events": 3, "quarantine": 9}
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT event_id, user_id, item_id, event_type, query, ts FROM shop.events ORDER BY 1")
        assert cur.fetchall() == events


def test_quarantine_of_other_stages_survives_import(db_url: str, tmp_path: Path) -> None:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO recsys.quarantine (source, raw, reason, run_id) "
                    "VALUES ('shop.events', '{}', 'validation', 'nightly_2026')")
    import_dataset(db_url, "csv", _corrupt_csv(tmp_path / "events.csv"), run_id="import_csv_a")
    import_dataset(db_url, "csv", _corrupt_csv(tmp_path / "events.csv"), run_id="import_csv_b")
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, count(*) FROM recsys.quarantine GROUP BY 1 ORDER BY 1")
        assert cur.fetchall() == [("import_csv_b", 9), ("nightly_2026", 1)]


def test_file_without_valid_rows_leaves_shop_alone(db_url: str, tmp_path: Path) -> None:
    import_dataset(db_url, "csv", _corrupt_csv(tmp_path / "events.csv"))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("user_id,item_id,event_type,ts\n1,2,3,4\n")
    with pytest.raises(InputDataError, match="no valid events"):
        import_dataset(db_url, "csv", wrong)
    assert _counts(db_url) == {"users": 2, "items": 2, "events": 3, "quarantine": 9}


# ---- public datasets (row counts as in each folder's SOURCE.md) ----------------------------------------
def _dataset(shared_data: Path, rel: str) -> Path:
    path = shared_data / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.dataset
def test_movielens_100k(db_url: str, shared_data: Path) -> None:
    res = import_dataset(db_url, "movielens", _dataset(shared_data, "ml-100k"))
    assert res.loaded == {"users": 943, "items": 1682, "events": 100_000}
    assert res.quarantined == 0
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT min(ts), max(ts), count(DISTINCT event_type) FROM shop.events")
        lo, hi, n_types = cur.fetchone()
    assert (lo.isoformat(), hi.isoformat()) == ("1997-09-20T03:05:10+00:00", "1998-04-22T23:10:38+00:00")
    assert n_types == 1


@pytest.mark.dataset
def test_taobao_sample(db_url: str, shared_data: Path) -> None:
    path = _dataset(shared_data, "taobao-userbehavior/UserBehavior_head_814users.csv")
    res = import_dataset(db_url, "taobao", path)
    assert res.loaded == {"users": 814, "items": 55_233, "events": 84_287}
    assert res.quarantined == 0
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT event_type, count(*) FROM shop.events GROUP BY 1")
        by_type = dict(cur.fetchall())
        cur.execute("SELECT count(DISTINCT category) FROM shop.items")
        n_categories = cur.fetchone()[0]
    assert by_type == {"view": 75_693, "add_to_cart": 4_494, "click": 2_351, "purchase": 1_749}
    assert n_categories == 2_911


@pytest.mark.dataset
@pytest.mark.parametrize(("name", "users", "items", "events"), [
    ("Beauty", 22_363, 12_101, 198_502),
    ("Sports_and_Outdoors", 35_598, 18_357, 296_337),
])
def test_amazon_s3rec(db_url: str, shared_data: Path, name: str, users: int, items: int, events: int) -> None:
    res = import_dataset(db_url, "amazon-s3rec", _dataset(shared_data, f"amazon-s3rec/{name}.txt"))
    assert res.loaded == {"users": users, "items": items, "events": events}
    assert res.quarantined == 0
    with connect(db_url) as conn, conn.cursor() as cur:
        # every user's sequence has strictly increasing timestamps, in file order (= event_id order)
        cur.execute("SELECT count(*) FROM (SELECT ts <= lag(ts) OVER w AS bad FROM shop.events "
                    "WINDOW w AS (PARTITION BY user_id ORDER BY event_id)) s WHERE bad")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT min(n), max(n) FROM (SELECT count(*) n FROM shop.events GROUP BY user_id) s")
        assert cur.fetchone()[0] == 5


@pytest.mark.dataset
def test_diginetica_sample(db_url: str, shared_data: Path) -> None:
    path = _dataset(shared_data, "diginetica-sample/sample_train-item-views.csv")
    res = import_dataset(db_url, "diginetica", path)
    assert res.loaded["events"] == 12_391 and res.loaded["items"] == 7_139
    assert res.quarantined == 0
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT session_id), min(ts)::date, max(ts)::date FROM shop.events")
        sessions, lo, hi = cur.fetchone()
        cur.execute("SELECT count(*) FROM shop.users WHERE user_id < 1000000000000")
        known_users = cur.fetchone()[0]
    assert sessions == 2_986
    assert (str(lo), str(hi)) == ("2016-01-03", "2016-06-01")
    assert known_users == 1_270
