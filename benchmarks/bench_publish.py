"""Publication benchmark: publish rows/s as a ratio to a raw COPY of the same rows, the swap transaction's
duration, and the typical read's latency (pgbench) at several client counts, idle and during swaps.

    .venv/bin/python benchmarks/bench_publish.py --users 20000 --top-n 50 --clients 1,8,32 --seconds 5

Without ``--url`` it starts a throwaway embedded PostgreSQL under a temp folder. Both the raw COPY and the
publication build their CSV with the same pyarrow writer, so the ratio measures what publication adds
(COPY FREEZE in the creating transaction, the (user_id, rank) index, ANALYZE, the swap and pruning).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import psycopg2
from psycopg2 import sql

from pipeline.db.copy import copy_frame
from pipeline.db.engine import connect
from pipeline.publish import publish_run
from pipeline.publish.swap import RECS_COLUMNS

GEN = datetime(2026, 11, 24, tzinfo=UTC)
READ = ("\\set uid random(1, {users})\n"
        "SELECT item_id, reason FROM recsys.user_recommendations WHERE user_id = :uid ORDER BY rank LIMIT 20;\n")


def make_recs(users: int, top_n: int, n_items: int, run_id: str, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(1, users + 1, dtype=np.int64), top_n)
    r = np.tile(np.arange(1, top_n + 1, dtype=np.int32), users)
    reasons = ["popular right now", "because you viewed \u201cLinen apron\u201d", "new arrival"]
    anchor = pd.array(np.where(r % 3 == 0, r, 0), dtype="Int64")
    anchor[r % 3 != 0] = pd.NA
    return pd.DataFrame({"user_id": u, "rank": r, "item_id": rng.integers(1, n_items + 1, len(u)),
                         "score": np.round(1.0 / r, 6), "reason": rng.choice(reasons, len(u)), "anchor_item_id": anchor,
                         "source": "item-cf", "variant": "control", "model_version": "m1", "run_id": run_id,
                         "generated_at": pd.Timestamp(GEN)})[RECS_COLUMNS]


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def setup_db(server_url: str, n_items: int) -> str:
    from pipeline.db.migrate import upgrade

    name = f"bench_publish_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(_with_db(server_url, "postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'bench_reader'")
        exists = cur.fetchone()
    admin.close()
    url = _with_db(server_url, name)
    upgrade(url)
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": "item", "category": "A>B",
                          "in_stock": True, "visible": True})
    with connect(url) as conn, conn.cursor() as cur:
        copy_frame(cur, "shop.items", items)
        cur.execute("ANALYZE shop.items")
        if not exists:
            cur.execute("CREATE ROLE bench_reader LOGIN IN ROLE rerank_reader")
    return url


def raw_copy(url: str, recs: pd.DataFrame) -> float:
    """Seconds for CREATE TABLE + COPY of ``recs`` into a plain table (committed), dropped afterwards."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS public.raw_copy")
        cur.execute("CREATE TABLE public.raw_copy (LIKE recsys.recs_bootstrap)")
    t0 = time.perf_counter()
    with connect(url) as conn, conn.cursor() as cur:
        copy_frame(cur, sql.Identifier("public", "raw_copy"), recs, RECS_COLUMNS)
    secs = time.perf_counter() - t0
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE public.raw_copy")
    return secs


def pgbench(url: str, users: int, clients: int, seconds: int, workdir: Path) -> dict:
    """Latency percentiles of the typical read as ``bench_reader`` (a LOGIN member of rerank_reader)."""
    script = workdir / "read.sql"
    script.write_text(READ.format(users=users))
    logdir = workdir / f"log_{clients}_{uuid.uuid4().hex[:6]}"
    logdir.mkdir()
    parts = urlsplit(url)
    cmd = ["pgbench", "-n", "-f", str(script), "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds),
           "-l", "--log-prefix", str(logdir / "tx"), "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port),
           "-U", "bench_reader", parts.path.lstrip("/")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": parts.password or ""})
    lat, failed = [], 0
    for f in logdir.glob("tx*"):
        for line in f.read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2].isdigit():
                lat.append(int(fields[2]) / 1000.0)
            else:
                failed += 1
    if not lat:
        raise RuntimeError(f"pgbench produced no transactions: {proc.stderr[-2000:]}")
    arr = np.array(lat)
    return {"clients": clients, "tx": len(arr), "tps": round(len(arr) / seconds, 1), "failed": failed,
            "p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "max_ms": round(float(arr.max()), 3), "pgbench_errors": proc.returncode != 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--top-n", type=int, default=50)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--url", help="a PostgreSQL server URL (any database; a fresh one is created)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    home = None
    if args.url:
        server = args.url
    else:
        from pipeline.db.embedded import EmbeddedPostgres

        home = Path(tempfile.mkdtemp(prefix="bench-publish-pg-"))
        pg = EmbeddedPostgres(home)
        server = pg.up()
    work = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    try:
        url = setup_db(server, args.items)
        recs = make_recs(args.users, args.top_n, args.items, "bench_0")
        rows = len(recs)
        raw_s, pub_s, swap_s, parts = [], [], [], []
        for i in range(args.repeats):  # alternate, so drift on a shared machine hits both sides alike
            raw_s.append(raw_copy(url, recs))
            res = publish_run(url, f"bench_{i}", recs.assign(run_id=f"bench_{i}"), None, generated_at=GEN, keep=2)
            pub_s.append(res["total_s"])
            swap_s.append(res["swap_s"])
            parts.append({k: res[k] for k in ("copy_s", "load_s", "swap_s", "tidy_s", "total_s")})
        raw_m, pub_m = statistics.median(raw_s), statistics.median(pub_s)
        out = {"rows": rows, "raw_copy_rows_per_s": round(rows / raw_m), "publish_rows_per_s": round(rows / pub_m),
               "publish_to_raw_copy_ratio": round(raw_m / pub_m, 3), "swap_ms_median": round(
                   statistics.median(swap_s) * 1000, 2), "swap_ms_max": round(max(swap_s) * 1000, 2),
               "publish_parts_s": parts, "reads": [], "reads_during_swaps": None}
        print(f"rows {rows}: raw COPY {out['raw_copy_rows_per_s']:,} rows/s, publish "
              f"{out['publish_rows_per_s']:,} rows/s, ratio {out['publish_to_raw_copy_ratio']}, swap "
              f"{out['swap_ms_median']} ms (max {out['swap_ms_max']} ms)", flush=True)
        for c in [int(x) for x in args.clients.split(",") if x]:
            r = pgbench(url, args.users, c, args.seconds, work)
            out["reads"].append(r)
            print(f"read, {c:>2} clients: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['tps']} tx/s, "
                  f"failed {r['failed']}", flush=True)
        # During swaps: publish repeatedly while 8 clients read.
        stop, swaps = threading.Event(), []

        def publisher() -> None:
            i = 100
            while not stop.is_set():
                res = publish_run(url, f"bench_{i}", recs.assign(run_id=f"bench_{i}"), None, generated_at=GEN, keep=2)
                swaps.append(res["swap_s"])
                i += 1

        t = threading.Thread(target=publisher)
        t.start()
        try:
            r = pgbench(url, args.users, 8, max(args.seconds * 2, 6), work)
        finally:
            stop.set()
            t.join()
        r["swaps"] = len(swaps)
        r["swap_ms_max"] = round(max(swaps) * 1000, 2) if swaps else None
        out["reads_during_swaps"] = r
        print(f"read during {len(swaps)} publications, 8 clients: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
              f"max {r['max_ms']} ms, failed {r['failed']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if home is not None:
            pg.down()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
