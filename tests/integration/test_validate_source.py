"""Validation on a real Postgres: a corpus of malformed rows, each quarantined with the right reason.

The shop tables' keys and NOT NULLs are dropped first, as for a shop mapped through views without
constraints, so that null and duplicated keys can reach the checks at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.db.engine import connect
from pipeline.errors import ValidationFailed
from pipeline.validate import validate_source

pytestmark = pytest.mark.integration
AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
MB = "x" * 1_000_000
INJECTION = "'; DROP TABLE shop.items; -- \\ %s %(x)s $1 \" ` ;"

#: (event_id, user_id, item_id, event_type, query, quantity, ts, expected reason or None for a good row)
EVENTS = [
    (9001, None, 1, "view", None, 1, "2026-11-20", "user_id is null"),
    (9002, 5, 999999, "view", None, 1, "2026-11-20", "item_id not in shop.items"),
    (9003, 5, 1, "view", None, 1, "2126-01-01", "ts in the future"),
    (9004, 5, 1, "view", None, 1, "1970-01-01", "ts before 1990-01-01"),
    (9005, 5, 1, "teleport", None, 1, "2026-11-20", "event_type not in the allowed set"),
    (9006, 5, 1, "view", None, 0, "2026-11-20", "quantity < 1"),
    (9007, 5, None, "click", None, 1, "2026-11-20", "item_id missing on a non-search event"),
    (9008, 5, None, "search", "  ", 1, "2026-11-20", "search without a query"),
    (9009, 5, None, "search", MB, 1, "2026-11-20", "query longer than 1000 characters"),
    (9010, 5, 1, "view", None, 1, "2026-11-20", "event_id duplicated"),
    (9010, 5, 1, "click", None, 1, "2026-11-20", "event_id duplicated"),
    (9011, 5, 2, "view", None, 1, "2026-11-20", "item_id refers to a quarantined item"),
    (9012, 5, None, None, None, 1, "2026-11-20", "event_type is null"),
    # good rows around them: SQL metacharacters, emoji and Chinese in queries are data, not errors
    (9101, 5, None, "search", INJECTION, 1, "2026-11-20", None),
    (9102, 5, None, "search", "礼物 🎁 for mum", 1, "2026-11-20", None),
    (9103, 5, 1, "purchase", None, 2, "2026-11-20", None),
]
#: (item_id, title, price, expected reason or None)
ITEMS = [
    (1, "Kettle 电热水壶 ☕", 10, None),
    (2, "Bad price", -5, "price < 0"),
    (3, "   ", 1, "empty title"),
    (4, MB, 1, "title longer than 2000 characters"),
    (5, "Mojibake caf\ufffd", 1, "title has control or replacement characters"),
]


@pytest.fixture
def corpus(db_url: str) -> str:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE shop.events DROP CONSTRAINT events_pkey")
        for col in ("event_id", "user_id", "event_type", "ts", "quantity"):
            cur.execute(f"ALTER TABLE shop.events ALTER COLUMN {col} DROP NOT NULL")
        cur.execute("INSERT INTO shop.users (user_id, created_at) VALUES (5, '2026-01-01')")
        for item_id, title, price, _ in ITEMS:
            cur.execute("INSERT INTO shop.items (item_id, title, category, brand, price, created_at) "
                        "VALUES (%s, %s, 'Home>Kitchen', 'A', %s, '2026-01-01')", (item_id, title, price))
        for e in EVENTS:
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, query, quantity, ts) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s)", e[:7])
    return db_url


def _quarantine(url: str, run_id: str) -> list[tuple[str, dict, str]]:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT source, raw, reason FROM recsys.quarantine WHERE run_id = %s", (run_id,))
        return cur.fetchall()


def test_each_malformed_row_gets_its_reason_and_counts_add_up(corpus: str, tmp_path: Path) -> None:
    rep = validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, home=tmp_path)
    rows = _quarantine(corpus, "r1")
    got_events = sorted((r["event_id"], reason) for src, r, reason in rows if src == "shop.events")
    want_events = sorted((e[0], e[7]) for e in EVENTS if e[7])
    assert got_events == want_events
    got_items = sorted((r["item_id"], reason) for src, r, reason in rows if src == "shop.items")
    assert got_items == sorted((i[0], i[3]) for i in ITEMS if i[3])
    for table in ("shop.users", "shop.items", "shop.events"):
        r = rep[table]
        assert r["clean"] + r["quarantined"] == r["read"]
    assert rep["shop.events"]["clean"] == 3 and rep["shop.items"]["clean"] == 1
    # the raw row is kept whole, 1 MB strings included
    assert any(len(r.get("query") or "") == 1_000_000 for _, r, _ in rows)
    # Great Expectations counts every rule exactly as the SQL quarantine does
    for table in ("shop.items", "shop.events"):
        gx = rep[table]["gx"]
        assert not gx["errors"]
        assert {k: v for k, v in gx["unexpected"].items() if v} == rep[table]["reasons"]
    assert Path(rep["data_docs"]).exists()
    assert (tmp_path / "reports" / "r1" / "validation" / "index.html").exists()


def test_good_rows_survive_extraction_unchanged(corpus: str, tmp_path: Path) -> None:
    from distributed import Client

    from pipeline.extract import extract_snapshot, read_snapshot

    validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, data_docs=False)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        counts = extract_snapshot(corpus, tmp_path / "snap", AS_OF, client)
    events, items, _ = read_snapshot(tmp_path / "snap")
    assert counts["events"] == 3 and sorted(events["event_id"]) == [9101, 9102, 9103]
    assert set(events["query"].dropna()) == {INJECTION, "礼物 🎁 for mum"}
    assert items["item_id"].tolist() == [1] and items["title"].iloc[0] == "Kettle 电热水壶 ☕"


def test_rerun_replaces_the_runs_quarantine(corpus: str) -> None:
    validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, data_docs=False)
    first = len(_quarantine(corpus, "r1"))
    validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, data_docs=False)
    assert len(_quarantine(corpus, "r1")) == first


def test_over_threshold_fails_with_top_reasons(corpus: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        validate_source(corpus, "r2", AS_OF, max_bad_share=0.01, data_docs=False)
    msg = str(err.value)
    assert "shop.events: 13 of 16 rows bad" in msg and "event_id duplicated (2)" in msg
    assert "shop.items: 4 of 5 rows bad" in msg
    # the bad rows are still recorded for inspection
    assert len(_quarantine(corpus, "r2")) == 17


def test_events_after_as_of_are_out_of_window_not_bad(db_url: str) -> None:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.items (item_id, title, category, price) VALUES (1, 'x', 'A', 1)")
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) VALUES "
                    "(1, 1, 1, 'view', '2026-11-20'), (2, 1, 1, 'view', '2026-11-25')")
    rep = validate_source(db_url, "r3", AS_OF, data_docs=False)
    assert rep["shop.events"]["quarantined"] == 0 and rep["shop.events"]["after_as_of"] == 1
