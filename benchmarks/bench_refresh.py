"""Benchmark the near-real-time refresh: freshness under a steady insert stream, the minutely DAG path, and
drain throughput.

    python benchmarks/bench_refresh.py [--url postgresql://...] [--users 2000] [--items 2000]
                                       [--rates 200,1000] [--seconds 20] [--threads 4] [--backlog 12000]
                                       [--dag-rate 200] [--dag-seconds 60] [--candidates 300]

On a scratch database ``bench_refresh`` of the server (the embedded one under RERANK_HOME without
``--url``), it generates a shop, publishes a live run (``pipeline.refresh.seed``), then:

1. baseline: the plain INSERT rate (one event per transaction, ``--threads`` connections,
   ``synchronous_commit = off`` for the writer sessions, no refresher);
2. for each rate: ``follow`` runs in its own process; once it reports ready (imports, live run loaded,
   backlog drained: the start-up is printed, it is not steady-state freshness) the threads insert events
   of ``--users`` active users at that rate for ``--seconds``; freshness of each event = the commit time of
   the refresh batch that covers it (``recsys.refresh_batches.committed_at``, server clock, in the same
   transaction as the overlay rows) minus the moment the event's own INSERT committed (client clock, the
   same host on loopback); p50/p95/max, batch durations, users/s while busy, and a check through the read
   view as role ``rerank_reader`` that every streamed user's list is a refresh list generated after their
   last event;
3. the minutely DAG path: ``--dag-seconds`` (the schedule interval) of events at ``--dag-rate`` with no
   refresher, then ``refresh_once`` in a fresh process at the tick (what the DAG's task does: imports,
   live run load, drain); freshness as in 2, so it includes each event's wait for the tick (0-60 s) but not
   Airflow's own scheduling delay;
4. drain throughput: ``--backlog`` events land at once and one ``refresh_once`` in this (warm) process
   processes them: users/s and events/s.

The scratch database is dropped at the end. Timings depend on the machine's load: report it with them.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg2  # noqa: E402

from pipeline.db.engine import connect, database_url  # noqa: E402

DB = "bench_refresh"
FOLLOW = """
import sys
from pipeline.refresh import follow
from pipeline.recommend import RecommendConfig
ready = []
def on_drain(res):
    if not ready:  # the live run is loaded and the backlog drained: the stream may start
        ready.append(1)
        print("READY", flush=True)
print(follow(sys.argv[1], sys.argv[2], poll_seconds=2.0, cfg=RecommendConfig(top_n=50, n_candidates=int(sys.argv[3])),
             on_drain=on_drain), flush=True)
"""
#: The minutely DAG's task: a fresh process that imports, loads the live run, drains and exits.
ONCE = """
import sys, time
t0 = time.time()
from pipeline.refresh import refresh_once
from pipeline.recommend import RecommendConfig
res = refresh_once(sys.argv[1], sys.argv[2], cfg=RecommendConfig(top_n=50, n_candidates=int(sys.argv[3])))
print(res["events"], res["users"], res["batches"], time.time() - t0, flush=True)
"""


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _admin(url: str, sql: str) -> None:
    conn = psycopg2.connect(_with_db(url, "postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def _setup(server: str, home: str, users: int, items: int) -> str:
    from pipeline.datagen import generate_shop
    from pipeline.db import migrate
    from pipeline.refresh import refresh_once
    from pipeline.refresh.seed import seed_live_run

    _admin(server, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    _admin(server, f'CREATE DATABASE "{DB}"')
    url = _with_db(server, DB)
    migrate.upgrade(url)
    as_of = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    t = time.perf_counter()
    generate_shop(url, users=users, items=items, days=14, seed=8, end=as_of)
    seed_live_run(url, home, as_of, top_n=50)
    first = refresh_once(url, home)
    print(f"setup: shop {users} users x {items} items, live run, history passed ({first['events']} events) "
          f"in {time.perf_counter() - t:.1f} s")
    return url


class Stream:
    """Paced single-event INSERT transactions from ``threads`` connections; records each commit time."""

    def __init__(self, url: str, users: np.ndarray, items: np.ndarray, item_p: np.ndarray, threads: int,
                 seed: int = 1) -> None:
        self.url, self.users, self.items, self.item_p, self.threads = url, users, items, item_p, threads
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        with connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT max(event_id) FROM shop.events")
            self.next_id = int(cur.fetchone()[0]) + 1
        self.committed: dict[int, float] = {}

    def _event(self) -> tuple:
        r = self.rng.random()
        user = int(self.rng.choice(self.users))
        if r < 0.05:
            return user, None, "search", str(self.rng.choice(["boots", "knife", "phone", "lamp", "serum"]))
        etype = "view" if r < 0.75 else ("click" if r < 0.9 else "add_to_cart")
        return user, int(self.rng.choice(self.items, p=self.item_p)), etype, None

    def run(self, rate: float | None, seconds: float) -> tuple[int, float]:
        """Insert for ``seconds`` at ``rate`` events/s (None: as fast as possible); returns (count, seconds)."""
        t0 = time.monotonic()
        stop_at = t0 + seconds
        k = {"n": 0}

        def worker() -> None:
            conn = psycopg2.connect(self.url)
            cur = conn.cursor()
            # The shop's writer, not the refresher: commits are visible at once either way; without waiting
            # for the WAL flush one loopback writer is not bound by this disk's fsync rate.
            cur.execute("SET synchronous_commit = off")
            while True:
                with self.lock:
                    i = k["n"]
                    k["n"] += 1
                    eid = self.next_id
                    self.next_id += 1
                    ev = self._event()
                due = t0 + (i / rate if rate else 0.0)
                if due >= stop_at or time.monotonic() >= stop_at:
                    break
                if rate:
                    time.sleep(max(0.0, due - time.monotonic()))
                cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, query, session_id, ts) "
                            "VALUES (%s, %s, %s, %s, %s, 'bench', clock_timestamp())", (eid, *ev))
                conn.commit()
                self.committed[eid] = time.time()
            conn.close()

        ts = [threading.Thread(target=worker) for _ in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return len(self.committed), time.monotonic() - t0


def _watermark(url: str) -> int:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'")
        return int(cur.fetchone()[0])


def _freshness(url: str, committed: dict[int, float]) -> dict:
    """Per event: commit time of the first refresh batch covering it minus its own commit time; and the
    batches' own durations (committed_at - started_at, the transaction after the live run is at hand)."""
    ids = np.array(sorted(committed))
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_event_id, extract(epoch FROM committed_at), extract(epoch FROM started_at), users, "
                    "events FROM recsys.refresh_batches WHERE to_event_id >= %s ORDER BY to_event_id",
                    (int(ids.min()),))
        b = np.array(cur.fetchall(), dtype="float64")
    pos = np.searchsorted(b[:, 0], ids)  # the first batch whose upper bound covers the event
    lat = b[pos, 1] - np.array([committed[i] for i in ids])
    dur = b[:, 1] - b[:, 2]
    busy = float(dur.sum())
    return {"users": float(b[:, 3].sum()),
            "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "max": float(lat.max()),
            "batches": len(b), "users_per_s": float(b[:, 3].sum() / busy) if busy else 0.0,
            "events_per_batch": float(b[:, 4].mean()), "batch_p50": float(np.percentile(dur, 50)),
            "batch_max": float(dur.max()), "users_per_batch": float(b[:, 3].mean())}


def _children_cpu() -> float:
    """User + system CPU seconds of the waited-for child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _readable(url: str, committed: dict[int, float]) -> tuple[int, int]:
    """(users whose list the reader role sees is a refresh list from a batch that covered their last
    streamed event, users streamed): the freshness above is of lists a reader really gets."""
    ids = [int(i) for i in committed]
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT user_id, max(event_id) FROM shop.events WHERE event_id = ANY(%s) GROUP BY user_id", (ids,))
        last = dict(cur.fetchall())
        cur.execute("SELECT 'refresh_' || batch_id, to_event_id FROM recsys.refresh_batches")
        covered = dict(cur.fetchall())
        cur.execute("SET ROLE rerank_reader")  # what a downstream reader sees, through the read view
        cur.execute("SELECT user_id, min(run_id), max(run_id) FROM recsys.user_recommendations "
                    "WHERE user_id = ANY(%s) GROUP BY user_id", (list(last),))
        seen = {u: (lo, hi) for u, lo, hi in cur.fetchall()}
    ok = sum(1 for u, e in last.items() if u in seen and seen[u][0] == seen[u][1]
             and covered.get(seen[u][0], -1) >= e)
    return ok, len(last)


def _wait_ready(proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until the follower printed READY (its imports, the live run's load and first drain)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if "READY" in line:
            return time.monotonic() - t0
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"the follower did not get ready in {timeout:.0f} s (exit code {proc.poll()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="server URL (a scratch database is created there); default: embedded")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--rates", default="200,1000")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--backlog", type=int, default=12_000)
    ap.add_argument("--candidates", type=int, default=300, help="candidates per user (the nightly default: 300)")
    ap.add_argument("--dag-rate", type=float, default=200.0, help="events/s during the minutely DAG measurement")
    ap.add_argument("--dag-seconds", type=float, default=60.0,
                    help="the DAG's schedule interval: events arrive this long before the tick (0: skip)")
    args = ap.parse_args()
    server = args.url or database_url()
    home = tempfile.mkdtemp(prefix="bench-refresh-")
    url = _setup(server, home, args.users, args.items)
    try:
        _bench(url, home, args)
    finally:
        from pipeline.db.engine import sa_engine

        sa_engine.cache_clear()
        _admin(server, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


def _bench(url: str, home: str, args: argparse.Namespace) -> None:
    from pipeline.recommend import RecommendConfig
    from pipeline.refresh import refresh_once

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT user_id FROM shop.users ORDER BY user_id LIMIT %s", (args.users,))
        users = np.array([r[0] for r in cur.fetchall()])
        cur.execute("SELECT item_id FROM shop.items WHERE in_stock AND visible ORDER BY item_id")
        items = np.array([r[0] for r in cur.fetchall()])
    p = 1.0 / np.arange(1, len(items) + 1) ** 0.8  # a popularity skew, so neighbours overlap as in a shop
    p /= p.sum()

    s = Stream(url, users, items, p, args.threads, seed=1)
    n, secs = s.run(None, 5.0)
    base_rate = n / secs
    print(f"baseline: plain INSERT (1 event per transaction, {args.threads} connections, no refresher): "
          f"{base_rate:,.0f} events/s")
    refresh_once(url, home)  # the baseline's events, so that the follow runs start from an empty backlog

    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
    for rate in [float(r) for r in args.rates.split(",")]:
        cpu0 = _children_cpu()
        proc = subprocess.Popen([sys.executable, "-c", FOLLOW, url, home, str(args.candidates)], env=env, cwd=str(REPO),
                                stdout=subprocess.PIPE, text=True)
        try:
            startup = _wait_ready(proc, 180.0)
            s = Stream(url, users, items, p, args.threads, seed=int(rate))
            n, secs = s.run(rate, args.seconds)
            last = max(s.committed)
            deadline = time.monotonic() + 120
            while _watermark(url) < last and time.monotonic() < deadline:
                time.sleep(0.1)
            caught_up = _watermark(url) >= last
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        cpu = _children_cpu() - cpu0  # the follower's CPU seconds (start-up included): load-independent cost
        done = {k: v for k, v in s.committed.items() if k <= _watermark(url)}
        f = _freshness(url, done)
        ok, n_users = _readable(url, done)
        print(f"follow @ {rate:,.0f} events/s target: inserted {n} in {secs:.1f} s ({n / secs:,.0f}/s, "
              f"{n / secs / base_rate:.0%} of baseline); follower ready after {startup:.1f} s; caught up: {caught_up}; "
              f"freshness p50 {f['p50']:.2f} s, p95 {f['p95']:.2f} s, max {f['max']:.2f} s; {f['batches']} batches "
              f"of {f['events_per_batch']:.0f} events / {f['users_per_batch']:.0f} users, batch p50 "
              f"{f['batch_p50']:.2f} s, max {f['batch_max']:.2f} s; {f['users_per_s']:,.0f} users/s while busy; "
              f"readable refreshed lists: {ok}/{n_users} users; follower CPU {cpu:.1f} s ({f['users'] / cpu:,.0f} "
              f"users per CPU-second); follow: {out.strip().splitlines()[-1]}", flush=True)

    # The minutely DAG: events arrive for one schedule interval with no refresher, then the task (a fresh
    # process: imports, live run load, drain) runs at the tick. Freshness per event as above: it includes the
    # wait for the tick (0 to 60 s), not Airflow's own scheduling delay (the scheduler's, not the refresh's).
    if args.dag_seconds > 0:
        refresh_once(url, home)
        s = Stream(url, users, items, p, args.threads, seed=3)
        n, secs = s.run(args.dag_rate, args.dag_seconds)
        t = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", ONCE, url, home, str(args.candidates)], env=env, cwd=str(REPO),
                             capture_output=True, text=True, check=True)
        dt = time.perf_counter() - t
        events, n_users, batches, _ = run.stdout.split()
        f = _freshness(url, s.committed)
        print(f"minutely DAG path ({args.dag_seconds:.0f} s of events at {args.dag_rate:,.0f}/s, then `refresh --once` "
              f"in a fresh process at the tick): {events} events of {n_users} users in {batches} batches, task "
              f"{dt:.1f} s (imports + live run load + drain); freshness p50 {f['p50']:.2f} s, p95 {f['p95']:.2f} s, "
              f"max {f['max']:.2f} s", flush=True)

    refresh_once(url, home)  # what a rate above capacity left behind, so that the drain starts from zero
    s = Stream(url, users, items, p, args.threads, seed=7)
    n, secs = s.run(None, args.backlog / max(base_rate, 1.0) * 1.05)
    t = time.perf_counter()
    res = refresh_once(url, home, cfg=RecommendConfig(top_n=50, n_candidates=args.candidates))
    dt = time.perf_counter() - t
    print(f"drain (refresh_once in a warm process): {res['events']} events of {res['users']} users in "
          f"{res['batches']} batches, {dt:.1f} s: {res['users'] / dt:,.0f} users/s, {res['events'] / dt:,.0f} "
          f"events/s")


if __name__ == "__main__":
    main()
