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
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
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


# --- validation that does not grow with the shop: events above a mark, each bad row once, retention --------

BAD_ROWS = 17  # bad events (13) and items (4) of the corpus


def _count(url: str, query: str = "SELECT count(*) FROM recsys.quarantine") -> int:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(query)
        return int(cur.fetchone()[0])


def _add_events(url: str, rows: list[tuple]) -> None:
    with connect(url) as conn, conn.cursor() as cur:
        for e in rows:
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, quantity, ts) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", e)


def test_second_full_pass_quarantines_nothing_new(corpus: str) -> None:
    first = validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, data_docs=False, full_every_days=0)
    assert _count(corpus) == BAD_ROWS
    again = validate_source(corpus, "r2", AS_OF, max_bad_share=1.0, data_docs=False, full_every_days=0)
    assert again["shop.events"]["scope"]["mode"] == "full"
    # the same rows are read and found bad again (the gate sees them), but none is copied a second time
    for table in ("shop.users", "shop.items", "shop.events"):
        assert again[table]["read"] == first[table]["read"]
        assert again[table]["quarantined"] == first[table]["quarantined"]
        assert again[table]["newly_quarantined"] == 0
    assert first["shop.events"]["newly_quarantined"] == 13
    assert _count(corpus) == BAD_ROWS
    assert _count(corpus, "SELECT count(*) FROM recsys.quarantine WHERE run_id = 'r2'") == 0


def test_next_run_validates_only_new_events(corpus: str, tmp_path: Path) -> None:
    first = validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, data_docs=False)
    assert first["shop.events"]["scope"]["mode"] == "full" and first["shop.events"]["read"] == 16
    quiet = validate_source(corpus, "r2", AS_OF, max_bad_share=1.0, data_docs=False)
    assert quiet["shop.events"]["scope"]["mode"] == "incremental"
    assert quiet["shop.events"]["read"] == 0 and quiet["shop.events"]["scope"]["after_event_id"] == 9103
    _add_events(corpus, [(9200, 5, 1, "view", 1, "2026-11-21"), (9201, 5, 1, "view", 0, "2026-11-21")])
    rep = validate_source(corpus, "r3", AS_OF, max_bad_share=1.0, home=tmp_path)
    ev = rep["shop.events"]
    assert ev["scope"]["mode"] == "incremental"
    assert (ev["scope"]["after_event_id"], ev["scope"]["through_event_id"]) == (9103, 9201)
    assert (ev["read"], ev["clean"], ev["quarantined"], ev["newly_quarantined"]) == (2, 1, 1, 1)
    assert ev["reasons"] == {"quantity < 1": 1}
    # GX validated the same two rows
    assert ev["gx"]["unexpected"]["quantity < 1"] == 1 and not ev["gx"]["errors"]
    assert rep["shop.items"]["read"] == 5  # small tables stay whole
    assert _count(corpus, "SELECT count(*) FROM recsys.quarantine WHERE run_id = 'r3'") == 1


def test_full_pass_when_due(corpus: str) -> None:
    validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, data_docs=False, full_every_days=7)
    rep = validate_source(corpus, "r2", AS_OF, max_bad_share=1.0, data_docs=False, full_every_days=7)
    assert rep["shop.events"]["scope"]["mode"] == "incremental"
    with connect(corpus) as conn, conn.cursor() as cur:
        cur.execute("UPDATE recsys.validation_state SET last_full_at = now() - interval '8 days'")
    rep = validate_source(corpus, "r3", AS_OF, max_bad_share=1.0, data_docs=False, full_every_days=7)
    assert rep["shop.events"]["scope"]["mode"] == "full" and rep["shop.events"]["read"] == 16
    assert rep["shop.events"]["quarantined"] == 13 and rep["shop.events"]["newly_quarantined"] == 0
    # the full pass restarted the clock
    rep = validate_source(corpus, "r4", AS_OF, max_bad_share=1.0, data_docs=False, full_every_days=7)
    assert rep["shop.events"]["scope"]["mode"] == "incremental"


def test_retention_prunes_old_quarantine_rows(corpus: str) -> None:
    validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, data_docs=False)
    with connect(corpus) as conn, conn.cursor() as cur:
        cur.execute("UPDATE recsys.quarantine SET created_at = now() - interval '31 days' "
                    "WHERE source = 'shop.events'")
    rep = validate_source(corpus, "r2", AS_OF, max_bad_share=1.0, data_docs=False, retention_days=30)
    assert rep["quarantine_pruned"] == 13
    assert _count(corpus) == BAD_ROWS - 13
    kept = validate_source(corpus, "r3", AS_OF, max_bad_share=1.0, data_docs=False, retention_days=0)
    assert kept["quarantine_pruned"] == 0


def test_gate_is_over_the_pass_and_a_refused_range_is_validated_again(db_url: str) -> None:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.items (item_id, title, category, price) VALUES (1, 'x', 'A', 1)")
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                    "SELECT g, 1, 1, 'view', '2026-11-20' FROM generate_series(1, 200) g")
    validate_source(db_url, "r1", AS_OF, max_bad_share=0.1, data_docs=False)
    # 2 bad of 4 new rows: 1% of the table, but 50% of this pass -> refused
    _add_events(db_url, [(201, 1, 1, "view", 1, "2026-11-21"), (202, 1, 1, "view", 1, "2026-11-21"),
                         (203, 1, 1, "view", 0, "2026-11-21"), (204, 1, 1, "view", 0, "2026-11-21")])
    with pytest.raises(ValidationFailed, match="shop.events: 2 of 4 rows bad"):
        validate_source(db_url, "r2", AS_OF, max_bad_share=0.1, data_docs=False)
    # the mark did not move: the next run sees the same range again (and quarantines nothing twice)
    with pytest.raises(ValidationFailed, match="shop.events: 2 of 4 rows bad"):
        validate_source(db_url, "r3", AS_OF, max_bad_share=0.1, data_docs=False)
    assert _count(db_url) == 2


def test_a_replaced_shop_gets_a_full_pass(corpus: str) -> None:
    validate_source(corpus, "r1", AS_OF, max_bad_share=1.0, data_docs=False)
    # a re-import: the events are replaced, their ids start afresh below the mark
    with connect(corpus) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM shop.events")
    _add_events(corpus, [(1, 5, 1, "view", 1, "2026-11-21"), (2, 5, 1, "view", 0, "2026-11-21")])
    rep = validate_source(corpus, "r2", AS_OF, max_bad_share=1.0, data_docs=False)
    ev = rep["shop.events"]
    assert ev["scope"]["mode"] == "full" and "replaced" in ev["scope"]["reason"]
    assert (ev["read"], ev["quarantined"], ev["newly_quarantined"]) == (2, 1, 1)
    assert ev["scope"]["through_event_id"] == 2
    # the new mark holds: the next run is incremental again
    assert validate_source(corpus, "r3", AS_OF, max_bad_share=1.0,
                           data_docs=False)["shop.events"]["scope"]["mode"] == "incremental"
