"""Publication against a real Postgres: readers during swaps, SIGKILL at named points, pruning, rules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest
from publish_common import load_items, synthetic_recs

from pipeline.db.engine import connect
from pipeline.errors import PublishError
from pipeline.publish import live_lists, live_publication, publish_run, rollback

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N_USERS, N_ITEMS, TOP = 300, 200, 20
GEN = datetime(2026, 11, 24, tzinfo=UTC)


def _recs(run_id: str, shift: int = 0, users: int = N_USERS) -> pd.DataFrame:
    return synthetic_recs(run_id, GEN, users=users, items=N_ITEMS, top=TOP, shift=shift)


@pytest.fixture
def shop(db_url: str) -> str:
    return load_items(db_url, N_ITEMS)


def _read(cur, user: int) -> list[tuple]:
    cur.execute("SELECT item_id, run_id FROM recsys.user_recommendations WHERE user_id = %s ORDER BY rank LIMIT 20",
                (user,))
    return cur.fetchall()


def _snapshot(url: str) -> pd.DataFrame:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT user_id, rank, item_id, run_id FROM recsys.user_recommendations ORDER BY 1, 2")
        return pd.DataFrame(cur.fetchall(), columns=["user_id", "rank", "item_id", "run_id"])


def _recs_tables(url: str) -> list[str]:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'recsys' AND tablename ~ '^recs_.*_p[0-9]+$' "
                    "ORDER BY 1")
        return [r[0] for r in cur.fetchall()]


def test_publication_is_indexed_analysed_and_last_k_kept(shop: str) -> None:
    results = [publish_run(shop, f"nightly_2026112{i}T0000", _recs(f"run{i}", shift=i), None, generated_at=GEN,
                           keep=2) for i in range(4)]
    live = live_publication(shop)
    assert live["run_id"] == "nightly_20261123T0000" and live["recs_table"] == results[-1]["recs_table"]
    assert _recs_tables(shop) == sorted(r["recs_table"] for r in results[-2:])
    assert results[-1]["pruned"] == [results[1]["recs_table"]]
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'recsys' AND tablename = %s",
                    (live["recs_table"],))
        assert any("(user_id, rank)" in d for (d,) in cur.fetchall())
        cur.execute("SELECT reltuples FROM pg_class WHERE relname = %s", (live["recs_table"],))
        assert cur.fetchone()[0] == N_USERS * TOP  # ANALYZE ran before the swap
    assert set(_snapshot(shop)["run_id"]) == {"run3"}
    assert len(live_lists(shop)) == N_USERS * TOP
    rollback(shop)
    assert set(_snapshot(shop)["run_id"]) == {"run2"}


def test_keep_and_rollback_count_runs_not_publications(shop: str) -> None:
    """Re-publishing a run (a user subset) must not push older runs out, and rollback goes back a run."""
    a = publish_run(shop, "nightly_20261121T0000", _recs("a", shift=1), None, generated_at=GEN, keep=2)
    b1 = publish_run(shop, "nightly_20261122T0000", _recs("b1", shift=2), None, generated_at=GEN, keep=2)
    b2 = publish_run(shop, "nightly_20261122T0000", _recs("b2", shift=3), None, generated_at=GEN, keep=2)
    # b1 is superseded by b2 (same run): dropped; run a is still inside the window of 2 runs.
    assert _recs_tables(shop) == sorted([a["recs_table"], b2["recs_table"]])
    assert b1["recs_table"] not in _recs_tables(shop)
    assert rollback(shop)["run_id"] == "nightly_20261121T0000"
    assert set(_snapshot(shop)["run_id"]) == {"a"}
    with pytest.raises(PublishError, match="no earlier publication"):
        rollback(shop)


def test_publish_refuses_incomplete_frames(shop: str) -> None:
    with pytest.raises(PublishError, match="lack columns"):
        publish_run(shop, "r", _recs("r").drop(columns="variant"), None, generated_at=GEN)
    assert live_publication(shop) is None


def test_readers_never_see_a_partial_or_mixed_run_during_swaps(shop: str) -> None:
    publish_run(shop, "run_a", _recs("a"), None, generated_at=GEN)
    stop = threading.Event()
    stats = {"reads": 0, "errors": [], "empty": 0, "mixed": 0, "runs": set()}
    lock = threading.Lock()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        conn = psycopg2.connect(shop)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET ROLE rerank_reader")
            while not stop.is_set():
                try:
                    rows = _read(cur, int(rng.integers(1, N_USERS + 1)))
                except psycopg2.Error as exc:  # any error is a failure of the contract
                    with lock:
                        stats["errors"].append(repr(exc))
                    continue
                runs = {r[1] for r in rows}
                with lock:
                    stats["reads"] += 1
                    stats["empty"] += len(rows) == 0
                    stats["mixed"] += len(runs) > 1
                    stats["runs"] |= runs
        conn.close()

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        publish_run(shop, "run_b", _recs("b", shift=1), None, generated_at=GEN)
        time.sleep(0.1)
        publish_run(shop, "run_c", _recs("c", shift=2), None, generated_at=GEN)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert stats["errors"] == [] and stats["empty"] == 0 and stats["mixed"] == 0
    assert stats["reads"] > 50 and {"a", "c"} <= stats["runs"]


CHILD = textwrap.dedent("""
    import sys
    import time
    from datetime import UTC, datetime
    from pathlib import Path
    from pipeline.publish import publish_run
    from pipeline.publish.parts import rec_parts

    def pause(at):  # the test's hook: stop at the named point, to be killed there
        if at == sys.argv[3]:
            print(f"paused at {at}", flush=True)
            time.sleep(3600)

    publish_run(sys.argv[1], "run_killed", rec_parts(Path(sys.argv[2])), None,
                generated_at=datetime(2026, 11, 24, tzinfo=UTC), chunk_rows=1000, hook=pause)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("point", ["copy", "index", "loaded", "swap"])
def test_sigkill_at_any_point_keeps_previous_run_and_rerun_converges(shop: str, tmp_path: Path, point: str) -> None:
    publish_run(shop, "run_a", _recs("a"), None, generated_at=GEN)
    before = _snapshot(shop)
    (tmp_path / "recs").mkdir()
    killed = _recs("killed", shift=3)
    for i, part in enumerate((killed[killed["user_id"] <= 150], killed[killed["user_id"] > 150])):
        part.to_parquet(tmp_path / "recs" / f"part-{i:05d}.parquet", index=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, shop, str(tmp_path), point], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = child.stdout.readline()
        assert line.strip() == f"paused at {point}", child.stderr.read() if child.poll() is not None else line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # The previous run is live and whole, for readers too (no lock left behind: statement_timeout guards it).
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '10s'")
        cur.execute("SET ROLE rerank_reader")
        assert {r[1] for r in _read(cur, 1)} == {"a"}
    pd.testing.assert_frame_equal(before, _snapshot(shop))
    assert live_publication(shop)["run_id"] == "run_a"
    leftovers = set(_recs_tables(shop)) - {live_publication(shop)["recs_table"]}
    assert bool(leftovers) == (point in ("loaded", "swap"))  # only a committed load leaves an orphan
    # The next run takes the publish lock (freed with the killed session), drops the orphan and publishes.
    res = publish_run(shop, "run_killed", _recs("killed", shift=3), None, generated_at=GEN, lock_wait_s=30)
    assert set(res["orphans_dropped"]) == leftovers
    assert set(_snapshot(shop)["run_id"]) == {"killed"}
    assert len(_snapshot(shop)) == N_USERS * TOP


def test_the_pause_hook_is_no_longer_read_from_the_environment(shop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-only pause lives in the tests: an environment variable left set in production pauses nothing."""
    monkeypatch.setenv("RERANK_TEST_PUBLISH_PAUSE_AT", "create")
    res = publish_run(shop, "run_a", _recs("a"), None, generated_at=GEN)
    assert res["published"] is True


def test_orphan_sweep_drops_only_tables_a_publication_registered(shop: str) -> None:
    """Tables in recsys that merely look like run tables (an analyst's copy, a table of another tool) stay;
    a registered table whose publication never committed goes."""
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE recsys.recs_my_analysis_p1 (x int)")  # the pattern, no registration
        cur.execute("CREATE TABLE recsys.similar_notes (x int)")
        cur.execute("CREATE TABLE recsys.recs_copied_p7 (x int)")  # a copied mark naming another id
        cur.execute("COMMENT ON TABLE recsys.recs_copied_p7 IS 'ecom-rerank publication 3'")
        cur.execute("CREATE TABLE recsys.recs_crashed_p5 (x int)")  # what a killed load leaves
        cur.execute("COMMENT ON TABLE recsys.recs_crashed_p5 IS 'ecom-rerank publication 5'")
    res = publish_run(shop, "run_a", _recs("a"), None, generated_at=GEN)
    assert res["orphans_dropped"] == ["recs_crashed_p5"]
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'recsys' AND tablename IN "
                    "('recs_my_analysis_p1', 'similar_notes', 'recs_copied_p7', 'recs_crashed_p5') ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == ["recs_copied_p7", "recs_my_analysis_p1", "similar_notes"]
        cur.execute("SELECT obj_description(%s::regclass, 'pg_class')", (f"recsys.{res['recs_table']}",))
        assert cur.fetchone()[0] == f"ecom-rerank publication {res['publication_id']}"


def test_load_rules_reads_active_rules_and_the_table_checks_directions(shop: str) -> None:
    from pipeline.rerank import load_repurchase_windows, load_rules

    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("""
            INSERT INTO recsys.rules (kind, item_id, category, brand, factor, starts_at, ends_at) VALUES
              ('boost', 5, NULL, NULL, 2.0, NULL, NULL),
              ('bury', NULL, 'A>B', NULL, 0.5, '2026-11-01', '2026-12-01'),
              ('exclude', NULL, NULL, 'acme', 1.0, '2026-12-01', NULL),
              ('boost', 6, NULL, NULL, 3.0, NULL, '2026-11-24')
        """)
        cur.execute("INSERT INTO recsys.repurchase_windows (category, days) VALUES ('Food', 7), ('Food>Milk', 3)")
    rules = load_rules(shop, GEN)
    assert rules[["kind", "factor"]].values.tolist() == [["boost", 2.0], ["bury", 0.5]]
    assert rules["item_id"].iloc[0] == 5 and rules["category"].iloc[1] == "A>B"
    assert load_repurchase_windows(shop) == {"Food": 7.0, "Food>Milk": 3.0}
    with connect(shop) as conn, conn.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute("INSERT INTO recsys.rules (kind, item_id, factor) VALUES ('boost', 1, 0.5)")
    with connect(shop) as conn, conn.cursor() as cur, pytest.raises(psycopg2.errors.CheckViolation):
        cur.execute("INSERT INTO recsys.rules (kind, item_id, factor) VALUES ('bury', 1, 2.0)")


def test_reader_role_reads_the_views_only(shop: str) -> None:
    res = publish_run(shop, "run_a", _recs("a"), None, generated_at=GEN)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE rerank_reader")
        assert len(_read(cur, 1)) == TOP
        for table in (f"recsys.{res['recs_table']}", "recsys.publications", "recsys.rules", "shop.items"):
            cur.execute("SAVEPOINT s")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(f"SELECT 1 FROM {table} LIMIT 1")
            cur.execute("ROLLBACK TO SAVEPOINT s")
