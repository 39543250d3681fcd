"""Benchmark the near-real-time refresh: freshness under a steady insert stream, and drain throughput.

    python benchmarks/bench_refresh.py [--url postgresql://...] [--users 2000] [--items 2000]
                                       [--rates 200,1000] [--seconds 20] [--threads 4] [--backlog 12000]

On a scratch database ``bench_refresh`` of the server (the embedded one under RERANK_HOME without
``--url``), it generates a shop, publishes a live run (``pipeline.refresh.seed``), then:

1. baseline: the plain INSERT rate (one event per transaction, ``--threads`` connections,
   ``synchronous_commit = off`` for the writer sessions, no refresher);
2. for each rate: ``follow`` runs in its own process while the threads insert events of ``--users`` active
   users at that rate for ``--seconds``; freshness of each event = the commit time of the refresh batch that
   covers it (``recsys.refresh_batches.committed_at``, server clock) minus the moment the event's own
   INSERT committed (client clock, the same host on loopback); p50/p95/max, and the insert rate achieved
   next to the baseline;
3. drain throughput: ``--backlog`` events (a minute at 200 events/s) land at once and one ``refresh_once``
   processes them: users/s and events/s; with the minutely DAG an event waits for the next tick (0-60 s,
   30 s on average) plus the task's start-up plus this drain time.

The scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
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
from pipeline.refresh.fresh import FreshConfig
print(follow(sys.argv[1], sys.argv[2], poll_seconds=2.0, cfg=FreshConfig(top_n=50, n_candidates=int(sys.argv[3]))),
      flush=True)
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
    ids = np.array(sorted(committed))
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_event_id, extract(epoch FROM committed_at), extract(epoch FROM started_at), users, "
                    "events FROM recsys.refresh_batches WHERE to_event_id >= %s ORDER BY to_event_id",
                    (int(ids.min()),))
        b = np.array(cur.fetchall(), dtype="float64")
    pos = np.searchsorted(b[:, 0], ids)  # the first batch whose upper bound covers the event
    lat = b[pos, 1] - np.array([committed[i] for i in ids])
    busy = float((b[:, 1] - b[:, 2]).sum())
    return {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "max": float(lat.max()),
            "batches": len(b), "users_per_s": float(b[:, 3].sum() / busy) if busy else 0.0,
            "events_per_batch": float(b[:, 4].mean())}


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
    from pipeline.refresh import refresh_once
    from pipeline.refresh.fresh import FreshConfig

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
        proc = subprocess.Popen([sys.executable, "-c", FOLLOW, url, home, str(args.candidates)], env=env, cwd=str(REPO),
                                stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(8.0)  # imports and the live run's first load
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
        f = _freshness(url, {k: v for k, v in s.committed.items() if k <= _watermark(url)})
        print(f"follow @ {rate:,.0f} events/s target: inserted {n} in {secs:.1f} s ({n / secs:,.0f}/s, "
              f"{n / secs / base_rate:.0%} of baseline); caught up: {caught_up}; freshness p50 {f['p50']:.2f} s, "
              f"p95 {f['p95']:.2f} s, max {f['max']:.2f} s; {f['batches']} batches of {f['events_per_batch']:.0f} "
              f"events; {f['users_per_s']:,.0f} users/s while busy; follow: {out.strip().splitlines()[-1]}")

    refresh_once(url, home)  # what a rate above capacity left behind, so that the drain starts from zero
    s = Stream(url, users, items, p, args.threads, seed=7)
    n, secs = s.run(None, args.backlog / max(base_rate, 1.0) * 1.05)
    t = time.perf_counter()
    res = refresh_once(url, home, cfg=FreshConfig(top_n=50, n_candidates=args.candidates))
    dt = time.perf_counter() - t
    print(f"drain (refresh_once, the minutely DAG's call): {res['events']} events of {res['users']} users in "
          f"{res['batches']} batches, {dt:.1f} s: {res['users'] / dt:,.0f} users/s, {res['events'] / dt:,.0f} "
          f"events/s; minutely DAG freshness ~ U(0, 60 s) tick wait + task start-up + {dt:.1f} s")


if __name__ == "__main__":
    main()
