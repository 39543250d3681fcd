"""The near-real-time refresh against a real Postgres: fresh lists, exactly once, the lock, LISTEN/NOTIFY.

One generated shop with a published live run (``seed_live_run``: the nightly run's file layout without its
cost) is prepared per module; every test works on its own clone of that database.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest

from pipeline.db.engine import connect
from pipeline.recommend import RecommendConfig
from pipeline.refresh import DEFAULT_LOCK_KEY, follow, pending, refresh_once
from pipeline.refresh.seed import seed_live_run

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CFG = RecommendConfig(top_n=20, n_candidates=60)
TEMPLATE_DB = "rerank_test_template"  # tests/conftest.py's migrated template


def _with_db(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _admin(pg_server: str):
    conn = psycopg2.connect(_with_db(pg_server, "postgres"))
    conn.autocommit = True
    return conn


def _clone(pg_server: str, template: str) -> str:
    name = f"r_{uuid.uuid4().hex[:12]}"
    conn = _admin(pg_server)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (template,))
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    conn.close()
    return name


def _drop(pg_server: str, name: str) -> None:
    from pipeline.db.engine import sa_engine

    sa_engine.cache_clear()
    conn = _admin(pg_server)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture(scope="module")
def seeded(pg_server: str, template_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A shop (300 users, 150 items, 14 days up to an hour ago) with a live run, its history already passed."""
    from pipeline.datagen import generate_shop

    name = _clone(pg_server, TEMPLATE_DB)
    url = _with_db(pg_server, name)
    home = str(tmp_path_factory.mktemp("refresh-home"))
    as_of = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    generate_shop(url, users=300, items=150, days=14, seed=11, end=as_of)
    seed_live_run(url, home, as_of)
    first = refresh_once(url, home, cfg=CFG)  # the history is the live run's: it moves the watermark only
    assert first["status"] == "ok" and first["users"] == 0 and pending(url) == 0
    try:
        yield url, home
    finally:
        _drop(pg_server, name)


@pytest.fixture
def shop(seeded: tuple[str, str], pg_server: str) -> Iterator[tuple[str, str]]:
    url, home = seeded
    name = _clone(pg_server, url.rsplit("/", 1)[1])
    try:
        yield _with_db(pg_server, name), home
    finally:
        _drop(pg_server, name)


def _insert(url: str, rows: list[tuple]) -> list[int]:
    """Insert (user_id, item_id, event_type, query) rows stamped now; one transaction; returns their ids."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(event_id), 0) FROM shop.events")
        base = cur.fetchone()[0]
        ids = [base + 1 + i for i in range(len(rows))]
        for eid, (user, item, etype, query) in zip(ids, rows, strict=True):
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, query, session_id, ts) "
                        "VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp())", (eid, user, item, etype, query, "s-test"))
    return ids


def _read(url: str, sql: str, params: tuple = ()) -> pd.DataFrame:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])


def _list(url: str, user: int) -> pd.DataFrame:
    """The user's list as a downstream reader sees it (role rerank_reader, the read view)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE rerank_reader")
        cur.execute("SELECT rank, item_id, reason, anchor_item_id, source, run_id FROM recsys.user_recommendations "
                    "WHERE user_id = %s ORDER BY rank", (user,))
        return pd.DataFrame(cur.fetchall(), columns=["rank", "item_id", "reason", "anchor_item_id", "source", "run_id"])


def _neighbours(home: str) -> pd.DataFrame:
    return pd.read_parquet(Path(home) / "runs" / "seed_live" / "snapshot" / "neighbours.parquet")


def _assert_complete_lists(url: str, users: set[int]) -> None:
    """Every user has exactly one whole overlay list: ranks 1..top_n, one run_id, one generated_at."""
    ov = _read(url, "SELECT user_id, rank, run_id, generated_at FROM recsys.recs_realtime")
    assert set(ov["user_id"]) == users
    for _, g in ov.groupby("user_id"):
        assert sorted(g["rank"]) == list(range(1, CFG.top_n + 1))
        assert g["run_id"].nunique() == 1 and g["generated_at"].nunique() == 1


def _assert_exactly_once(url: str, from_id: int, ids: list[int], clean: int) -> None:
    """Batches cover (from_id, max id] without gap or overlap, and count every clean event once."""
    b = _read(url, "SELECT from_event_id, to_event_id, events, skipped FROM recsys.refresh_batches "
                   "WHERE to_event_id > %s ORDER BY to_event_id", (from_id,))
    assert b["from_event_id"].iloc[0] == from_id and b["to_event_id"].iloc[-1] == max(ids)
    assert (b["from_event_id"].iloc[1:].to_numpy() == b["to_event_id"].iloc[:-1].to_numpy()).all()
    assert int(b["events"].sum()) == clean and int(b["events"].sum() + b["skipped"].sum()) == len(ids)
    w = _read(url, "SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'")
    assert int(w.iloc[0, 0]) == max(ids)


def test_views_in_a_new_category_bring_its_neighbours_with_reasons(shop: tuple[str, str]) -> None:
    url, home = shop
    user, touched = _read(url, """
        SELECT e.user_id, array_agg(DISTINCT split_part(i.category, '>', 1)) AS cats
          FROM shop.events e JOIN shop.items i USING (item_id) GROUP BY e.user_id HAVING count(*) >= 5
         ORDER BY count(DISTINCT split_part(i.category, '>', 1)), count(*) DESC, e.user_id LIMIT 1
    """).iloc[0]
    nb = _neighbours(home)
    items = _read(url, "SELECT item_id, title, split_part(category, '>', 1) AS cat FROM shop.items "
                       "WHERE in_stock AND visible")
    fresh_cat = items[~items["cat"].isin(touched)]
    n_nb = nb.groupby("item_id").size()
    fresh_cat = fresh_cat.assign(nb=fresh_cat["item_id"].map(n_nb).fillna(0)).sort_values(["nb", "item_id"],
                                                                                          ascending=[False, True])
    user = int(user)
    viewed = [int(i) for i in fresh_cat["item_id"].head(3)]
    assert len(viewed) == 3, "the generated shop has a category this user never touched"
    before = _list(url, user)
    assert not before["reason"].str.contains("just viewed").any()

    ids = _insert(url, [(user, it, "view", None) for it in viewed])
    res = refresh_once(url, home, cfg=CFG)
    assert res["status"] == "ok" and res["events"] == 3 and res["users"] == 1 and res["watermark"] == max(ids)

    after = _list(url, user)
    assert len(after) == CFG.top_n and after["run_id"].str.startswith("refresh_").all()
    neighbours_of_viewed = set(nb.loc[nb["item_id"].isin(viewed), "similar_item_id"])
    fresh_rows = after[after["source"] == "fresh-cf"]
    assert len(fresh_rows) >= 3
    assert set(fresh_rows["item_id"]) <= neighbours_of_viewed
    titles = items.set_index("item_id")["title"]
    for _, row in fresh_rows.iterrows():
        assert row["anchor_item_id"] in viewed
        assert row["reason"] == f"because you just viewed \u201c{titles[row['anchor_item_id']]}\u201d"


def test_events_since_a_users_own_nightly_rows_count_after_a_user_subset_publication(
        shop: tuple[str, str]) -> None:
    """A manual run for a user subset publishes at a later as_of and republishes everyone else's older rows.
    The refresh skipped every event older than the publication's as_of, so the other users' events since
    their own (older) rows were consumed without a rebuild: their lists stayed blind to them until the next
    nightly. The cut-off is the publication's oldest rows (``oldest_at``)."""
    url, home = shop
    ids = _insert(url, [(7, 3, "view", None), (7, 4, "add_to_cart", None)])
    with connect(url) as conn, conn.cursor() as cur:  # the subset run, published after those events
        cur.execute("UPDATE recsys.publications SET oldest_at = generated_at, "
                    "generated_at = clock_timestamp() + interval '1 minute' WHERE live")
    res = refresh_once(url, home, cfg=CFG)
    assert res["status"] == "ok" and res["watermark"] == max(ids)
    assert res["users"] == 1
    assert set(_read(url, "SELECT DISTINCT user_id FROM recsys.recs_realtime")["user_id"]) == {7}


def test_a_brand_new_user_gets_a_personal_list_at_the_next_refresh(shop: tuple[str, str]) -> None:
    url, home = shop
    user = int(_read(url, "SELECT max(user_id) + 1000 FROM shop.users").iloc[0, 0])
    nb = _neighbours(home)
    viewed = [int(i) for i in nb["item_id"].value_counts().index[:2]]
    word = _read(url, "SELECT title FROM shop.items WHERE item_id = %s", (int(viewed[0]),)).iloc[0, 0].split()[0]
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.users (user_id, created_at) VALUES (%s, now())", (user,))
    assert _list(url, user).empty
    _insert(url, [(user, int(viewed[0]), "view", None), (user, int(viewed[1]), "add_to_cart", None),
                  (user, None, "search", word)])
    res = refresh_once(url, home, cfg=CFG)
    assert res["users"] == 1
    lst = _list(url, user)
    assert len(lst) == CFG.top_n and not lst["item_id"].duplicated().any()
    assert lst["reason"].str.startswith("because you just").any()
    assert (lst["reason"] == f"matches your search \u201c{word}\u201d").any()
    assert set(lst.loc[lst["source"] == "fresh-cf", "anchor_item_id"]) <= set(viewed)


def test_batches_are_contiguous_and_count_every_event_once(shop: tuple[str, str]) -> None:
    url, home = shop
    w0 = int(_read(url, "SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'").iloc[0, 0])
    rows = [(u, 1 + (u * 7 + k) % 150, "view", None) for u in range(1, 21) for k in range(2)]
    rows += [(3, 5, "teleport", None), (4, None, "view", None)]  # invalid: skipped, never processed
    ids = _insert(url, rows)
    res = refresh_once(url, home, cfg=CFG, batch_size=15)
    assert res["status"] == "ok" and res["batches"] == 3 and res["events"] == 40 and res["skipped"] == 2
    _assert_exactly_once(url, w0, ids, clean=40)
    _assert_complete_lists(url, set(range(1, 21)))
    again = refresh_once(url, home, cfg=CFG, batch_size=15)
    assert again["status"] == "empty" and again["batches"] == 0
    _assert_exactly_once(url, w0, ids, clean=40)


def test_a_second_refresher_backs_off_while_the_lock_is_held(shop: tuple[str, str]) -> None:
    url, home = shop
    ids = _insert(url, [(1, 10, "view", None)])
    holder = psycopg2.connect(url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (DEFAULT_LOCK_KEY,))
        busy = refresh_once(url, home, cfg=CFG)
        assert busy["status"] == "busy" and busy["events"] == 0 and pending(url) == 1
    finally:
        holder.rollback()
        holder.close()
    assert refresh_once(url, home, cfg=CFG)["watermark"] == ids[0]


def test_events_behind_a_transaction_still_writing_wait_for_it(shop: tuple[str, str]) -> None:
    url, home = shop
    max_id = int(_read(url, "SELECT max(event_id) FROM shop.events").iloc[0, 0])
    slow = psycopg2.connect(url)
    try:
        with slow.cursor() as cur:  # takes id max+1, commits last
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                        "VALUES (%s, 1, 10, 'view', now())", (max_id + 1,))
        with connect(url) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                        "VALUES (%s, 2, 11, 'view', now())", (max_id + 2,))
        held = refresh_once(url, home, cfg=CFG)
        assert held["status"] == "empty" and held["held_back"] and held["watermark"] == max_id
        slow.commit()
    finally:
        slow.close()
    done = refresh_once(url, home, cfg=CFG)
    assert done["events"] == 2 and done["watermark"] == max_id + 2


def test_overlay_rows_older_than_the_live_run_are_cleaned(shop: tuple[str, str]) -> None:
    url, home = shop
    _insert(url, [(1, 10, "view", None), (2, 11, "view", None)])
    assert refresh_once(url, home, cfg=CFG)["rows"] == 2 * CFG.top_n
    with connect(url) as conn, conn.cursor() as cur:  # a newer nightly run went live
        cur.execute("UPDATE recsys.publications SET generated_at = now() + interval '1 minute', "
                    "oldest_at = now() + interval '1 minute' WHERE live")
    res = refresh_once(url, home, cfg=CFG)
    assert res["overlay_rows_cleaned"] == 2 * CFG.top_n
    assert _read(url, "SELECT count(*) FROM recsys.recs_realtime").iloc[0, 0] == 0


def test_nothing_is_consumed_before_a_live_run_exists(db_url: str, tmp_path: Path) -> None:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, query, ts) "
                    "VALUES (1, 1, NULL, 'search', 'boots', now())")
    res = refresh_once(db_url, str(tmp_path), cfg=CFG)
    assert res["status"] == "no_live_run" and pending(db_url) == 1


def test_follow_wakes_on_notify_and_stops_cleanly(shop: tuple[str, str]) -> None:
    url, home = shop
    stop, ready = threading.Event(), threading.Event()
    out: dict = {}

    def run() -> None:
        out.update(follow(url, home, poll_seconds=60, cfg=CFG, stop=stop, on_drain=lambda r: ready.set()))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        assert ready.wait(30)
        _insert(url, [(5, 20, "view", None)])
        deadline = time.monotonic() + 20  # the poll interval is 60 s: only a notification makes this in time
        while time.monotonic() < deadline and not len(_read(url, "SELECT 1 FROM recsys.recs_realtime "
                                                                 "WHERE user_id = 5")):
            time.sleep(0.05)
        assert len(_read(url, "SELECT 1 FROM recsys.recs_realtime WHERE user_id = 5")) == CFG.top_n
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert out["wakeups"] >= 1 and out["events"] == 1 and out["polls"] == 0


FAULT_SCRIPT = """
import sys, time
from pipeline.refresh import refresh_once
from pipeline.recommend import RecommendConfig

url, home, point = sys.argv[1:4]
state = {"batch": 0}


def hook(name, info):
    if name == "locked":
        state["batch"] += 1
    if name == point and state["batch"] == 3:  # two batches committed, the third one half done
        print("PAUSED", flush=True)
        time.sleep(600)


refresh_once(url, home, batch_size=6, cfg=RecommendConfig(top_n=20, n_candidates=60), hook=hook)
"""


def _wait_line(proc: subprocess.Popen, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    buf = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            buf += line
            if text in line:
                return
    raise AssertionError(f"the refresher never reached {text!r}: {buf[-2000:]} {proc.stderr.read()[-2000:]}")


@pytest.mark.parametrize("point", ["rows_written", "watermark_moved"])
def test_sigkill_mid_batch_then_rerun_processes_every_event_exactly_once(shop: tuple[str, str], point: str) -> None:
    url, home = shop
    w0 = int(_read(url, "SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'").iloc[0, 0])
    new_users = [900_001, 900_002, 900_003, 900_004]
    users = list(range(1, 13)) + new_users
    rows = [(u, 1 + (u * 13 + k) % 150, "view" if k < 2 else "add_to_cart", None) for k in range(3) for u in users]
    rows = rows[:24]
    ids = _insert(url, rows)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", FAULT_SCRIPT, url, home, point], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    try:
        _wait_line(proc, "PAUSED", 120)
        # Mid-batch: two batches are visible, the third is not; a second refresher is locked out.
        b = _read(url, "SELECT to_event_id FROM recsys.refresh_batches WHERE to_event_id > %s ORDER BY 1", (w0,))
        assert b["to_event_id"].tolist() == [ids[5], ids[11]]
        _assert_complete_lists(url, {r[0] for r in rows[:12]})
        assert refresh_once(url, home, cfg=CFG)["status"] == "busy"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while (res := refresh_once(url, home, cfg=CFG, batch_size=6))["status"] == "busy":  # the server reaps the
        assert time.monotonic() < deadline  # dead client's transaction (and its lock) within moments
        time.sleep(0.1)
    assert res["status"] == "ok" and res["batches"] == 2 and res["events"] == 12
    _assert_exactly_once(url, w0, ids, clean=24)
    _assert_complete_lists(url, {r[0] for r in rows})


def test_a_newly_published_nightly_run_replaces_the_cached_live_run(shop: tuple[str, str]) -> None:
    """The follower's cache is keyed by the live publication: after a new nightly run publishes, the next
    batch uses the new run's neighbours, not the cached ones."""
    from pipeline.refresh import live

    url, home = shop
    _insert(url, [(1, 10, "view", None)])
    assert refresh_once(url, home, cfg=CFG)["users"] == 1  # loads (and caches) the first live run
    (old_key,) = live.cached_runs()
    old_nb = _neighbours(home)
    items = _read(url, "SELECT item_id FROM shop.items WHERE in_stock AND visible ORDER BY item_id")["item_id"]
    viewed = int(old_nb["item_id"].value_counts().index[0])
    new_targets = [int(i) for i in items[::-1] if i != viewed
                   and i not in set(old_nb.loc[old_nb["item_id"] == viewed, "similar_item_id"])][:5]
    assert len(new_targets) == 5

    seed_live_run(url, home, datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1), run_id="seed_live_2")
    snap = Path(home) / "runs" / "seed_live_2" / "snapshot"
    crafted = pd.DataFrame({"item_id": viewed, "rank": range(1, 6), "similar_item_id": new_targets,
                            "score": [0.9, 0.8, 0.7, 0.6, 0.5]})
    crafted.to_parquet(snap / "neighbours.parquet", index=False)  # the new run's neighbours of `viewed`

    user = 2
    _insert(url, [(user, viewed, "view", None), (user, viewed, "click", None)])
    res = refresh_once(url, home, cfg=CFG)
    assert res["status"] == "ok" and res["users"] == 1
    (new_key,) = live.cached_runs()
    assert new_key != old_key and new_key[2] != old_key[2]  # reloaded for the new publication
    lst = _list(url, user)
    fresh_rows = lst[lst["source"] == "fresh-cf"]
    assert len(fresh_rows) >= 1
    assert set(fresh_rows["item_id"]) <= set(new_targets)
    assert set(fresh_rows["anchor_item_id"]) == {viewed}


def test_cached_and_uncached_live_run_build_the_same_lists(shop: tuple[str, str]) -> None:
    """A batch built from the cached live run (its derived tables memoised by earlier batches) gives the
    lists a freshly loaded run with every table derived on the spot gives."""
    from pipeline.recommend import Artefacts, recommend
    from pipeline.refresh import core, live

    url, home = shop
    word = _read(url, "SELECT title FROM shop.items WHERE item_id = 7").iloc[0, 0].split()[0]
    ids = _insert(url, [(u, 1 + (u * 11 + k) % 150, "view" if k else "add_to_cart", None)
                        for u in range(1, 16) for k in range(3)] + [(3, None, "search", word)])
    users = np.arange(1, 16)
    with connect(url) as conn, conn.cursor() as cur:
        pub = core._live_pub(cur)
        now = datetime.now(UTC)
        cur.execute(core._history_sql(), {"users": users.tolist(), "upto": max(ids), "since": now - timedelta(days=90)})
        history = core._frame(cur.fetchall(), core.EVENT_COLUMNS)
    live.clear_cache()
    run = live.load_live(url, home, pub, pub["champion"])
    assert live.load_live(url, home, pub, pub["champion"]) is run  # the second batch's lookup hits the cache
    assert run.art.followers is not None and len(run.art.followers)  # the seq source's table loads here too
    cached = [recommend(users, history, run.art, now, CFG, fresh_ids=np.array(ids))[0] for _ in range(2)]
    live.clear_cache()
    fresh_run = live.load_live(url, home, pub, pub["champion"])
    assert fresh_run is not run
    art = fresh_run.art
    # every table derived on the spot, nothing memoised
    uncached = recommend(users, history, Artefacts(**{**art.__dict__, "tables": type(art.tables)(
        art.item_feats, art.neighbours, art.tables.items, art.tables.titles, art.tables.item_text)}), now, CFG,
        fresh_ids=np.array(ids))[0]
    assert len(uncached) == len(users) * CFG.top_n and (uncached["source"] == "fresh-cf").any()
    for c in cached:
        pd.testing.assert_frame_equal(c, uncached)


# --- commit order: exactly once with concurrent writers -------------------------------------------------------
def _batches_after(url: str, w0: int) -> pd.DataFrame:
    return _read(url, "SELECT from_event_id, to_event_id, events, skipped FROM recsys.refresh_batches "
                      "WHERE to_event_id > %s ORDER BY to_event_id", (w0,))


def _assert_each_committed_event_in_one_batch(url: str, w0: int) -> dict:
    """Batches tile (w0, watermark] without overlap, and their counts add up to the events committed there:
    an event that became visible after its range was passed would be missing from the counts."""
    b = _batches_after(url, w0)
    w = int(_read(url, "SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'").iloc[0, 0])
    committed = int(_read(url, "SELECT count(*) FROM shop.events WHERE event_id > %s", (w0,)).iloc[0, 0])
    top = int(_read(url, "SELECT coalesce(max(event_id), 0) FROM shop.events").iloc[0, 0])
    assert w == top, "the refresh caught up"
    assert b["from_event_id"].iloc[0] == w0 and b["to_event_id"].iloc[-1] == w
    assert (b["from_event_id"].iloc[1:].to_numpy() == b["to_event_id"].iloc[:-1].to_numpy()).all()
    counted = int(b["events"].sum() + b["skipped"].sum())
    assert counted == committed, f"{committed - counted} committed events never processed"
    return {"events": committed, "batches": len(b), "counted": counted}


def test_an_older_writer_committing_a_higher_id_first_does_not_hide_the_lower_one(shop: tuple[str, str]) -> None:
    """Writer A (the older transaction) takes id N+1 and commits; writer B (newer) took id N and commits after
    a refresh ran. The refresh must not move past N while B may still commit it."""
    url, home = shop
    w0 = int(_read(url, "SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'").iloc[0, 0])
    a, b = psycopg2.connect(url), psycopg2.connect(url)
    try:
        with a.cursor() as ca, b.cursor() as cb:
            ca.execute("SELECT pg_current_xact_id()")  # A gets its transaction id first: the older writer
            cb.execute("SELECT pg_current_xact_id()")
            ins = ("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                   "VALUES (%s, %s, %s, 'view', clock_timestamp())")
            cb.execute(ins, (w0 + 1, 8, 12))  # B takes N
            ca.execute(ins, (w0 + 2, 9, 13))  # A takes N + 1 ...
        a.commit()  # ... and commits first
        first = refresh_once(url, home, cfg=CFG)
        assert first["watermark"] == w0 and first["held_back"]
        b.commit()
    finally:
        a.close()
        b.close()
    second = refresh_once(url, home, cfg=CFG)
    assert second["status"] == "ok" and second["events"] == 2 and second["watermark"] == w0 + 2
    _assert_each_committed_event_in_one_batch(url, w0)
    assert set(_read(url, "SELECT DISTINCT user_id FROM recsys.recs_realtime")["user_id"]) == {8, 9}


def test_a_gap_left_by_a_rolled_back_insert_is_passed(shop: tuple[str, str]) -> None:
    url, home = shop
    w0 = int(_read(url, "SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'").iloc[0, 0])
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                    "VALUES (%s, 3, 10, 'view', now())", (w0 + 1,))
        conn.rollback()  # id N is never used
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                    "VALUES (%s, 4, 11, 'view', now())", (w0 + 2,))
    res = refresh_once(url, home, cfg=CFG)  # no writer is left that could fill N: one call passes it
    assert res["status"] == "ok" and res["events"] == 1 and res["watermark"] == w0 + 2


def test_stress_concurrent_writers_every_committed_event_in_exactly_one_batch(shop: tuple[str, str]) -> None:
    """Several writers take ids from one sequence inside their INSERT and commit after random delays (some roll
    back) while --follow runs; afterwards every committed event was counted in exactly one committed batch."""
    import random

    url, home = shop
    w0 = int(_read(url, "SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'").iloc[0, 0])
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SEQUENCE shop.stress_ids START {w0 + 1}")
    stop_writers, stop_follow = threading.Event(), threading.Event()
    done = {"committed": 0, "rolled_back": 0}
    lock = threading.Lock()

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        conn = psycopg2.connect(url)
        try:
            while not stop_writers.is_set():
                with conn.cursor() as cur:
                    for _ in range(rng.randint(1, 3)):
                        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) VALUES "
                                    "(nextval('shop.stress_ids'), %s, %s, 'view', clock_timestamp())",
                                    (rng.randint(1, 300), rng.randint(1, 150)))
                time.sleep(rng.random() * 0.02)
                with lock:
                    if rng.random() < 0.1:
                        conn.rollback()
                        done["rolled_back"] += 1
                    else:
                        conn.commit()
                        done["committed"] += 1
        finally:
            conn.close()

    out: dict = {}
    follower = threading.Thread(target=lambda: out.update(
        follow(url, home, poll_seconds=0.5, cfg=CFG, stop=stop_follow)), daemon=True)
    follower.start()
    writers = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(6)]
    t0 = time.monotonic()
    for t in writers:
        t.start()
    time.sleep(6)
    stop_writers.set()
    for t in writers:
        t.join(10)
    seconds = time.monotonic() - t0
    top = int(_read(url, "SELECT max(event_id) FROM shop.events").iloc[0, 0])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and int(_read(
            url, "SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'").iloc[0, 0]) < top:
        time.sleep(0.1)
    stop_follow.set()
    follower.join(30)
    figures = _assert_each_committed_event_in_one_batch(url, w0)
    assert figures["events"] >= 500, figures  # hundreds of events a second for several seconds
    print(f"\nstress: {figures['events']} committed events ({figures['events'] / seconds:.0f}/s) from 6 writers, "
          f"{done['rolled_back']} rolled-back transactions, {figures['batches']} batches, "
          f"duplicates 0, losses {figures['events'] - figures['counted']}")


def test_follow_survives_a_database_restart_and_refreshes_the_next_event() -> None:
    """A server of its own (the suite's is shared): stop and start it under a running follower."""
    import shutil
    import tempfile

    from pipeline.datagen import generate_shop
    from pipeline.db import migrate
    from pipeline.db.embedded import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="rerank-test-restart-"))  # not pytest's 0700 tmp: the server's user
    pg = EmbeddedPostgres(root / "pg-home")
    stop, ready = threading.Event(), threading.Event()
    out: dict = {}
    follower = None
    try:
        url = pg.up()
        migrate.upgrade(url)
        as_of = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
        home = str(root / "home")
        generate_shop(url, users=120, items=60, days=7, seed=5, end=as_of)
        seed_live_run(url, home, as_of)
        follower = threading.Thread(target=lambda: out.update(follow(
            pg.url, home, poll_seconds=0.5, cfg=CFG, stop=stop, on_drain=lambda r: ready.set())), daemon=True)
        follower.start()
        assert ready.wait(60)
        pg.down()
        time.sleep(1.0)  # the follower meets a refused connection at least once
        url = pg.up()
        _insert(url, [(5, 20, "view", None)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not len(_read(url, "SELECT 1 FROM recsys.recs_realtime "
                                                                 "WHERE user_id = 5")):
            time.sleep(0.1)
        assert len(_read(url, "SELECT 1 FROM recsys.recs_realtime WHERE user_id = 5")) == CFG.top_n
    finally:
        stop.set()
        if follower is not None:
            follower.join(30)
        from pipeline.db.engine import sa_engine

        sa_engine.cache_clear()
        pg.down()
        shutil.rmtree(root, ignore_errors=True)
    assert out["reconnects"] >= 1 and follower is not None and not follower.is_alive()
