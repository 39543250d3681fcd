"""A/B of the refresh's list building: this working tree against a git revision, same batches, same lists.

    python benchmarks/bench_refresh_ab.py [--baseline-ref HEAD] [--users 2000] [--items 2000]
                                          [--batches 200,700,1800] [--repeat 3] [--candidates 300]

On a scratch database ``bench_refresh_ab`` (the embedded server without ``--url``) it generates a shop,
publishes a live run (``pipeline.refresh.seed``), appends events and cuts batches of the last N events.
Each tree (``git archive <ref> pipeline`` into a temporary folder, and this working tree) then builds the
batches' lists with its own per-user path (``pipeline.recommend.recommend``; ``refresh.fresh.build_lists``
in older trees) in its own process (the live run loaded
and cached first, as ``--follow`` does): CPU seconds per batch (best of ``--repeat``; CPU time, not wall
time, because the machine may be shared) and users per CPU-second, the ratio against the baseline, and
whether both trees give identical lists. The scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from bench_refresh import _admin, _with_db  # noqa: E402  (same folder: the scratch-database helpers)

from pipeline.db.engine import connect, database_url  # noqa: E402

DB = "bench_refresh_ab"
#: Run in each tree's own process: build every batch's lists, report CPU seconds, keep the lists.
WORKER = """
import json, pickle, sys, time
tree, data, out_dir, n_cand, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, tree)
from pipeline.refresh.live import load_live
d = pickle.load(open(data, "rb"))
live = load_live(d["url"], d["home"], d["pub"], None)
try:  # trees with the shared per-user path
    from pipeline.recommend import RecommendConfig, recommend
    assert recommend.__module__ == "pipeline.recommend" and sys.modules["pipeline.recommend"].__file__.startswith(tree)
    cfg = RecommendConfig(top_n=50, n_candidates=n_cand)
    def build(users, hist, ids):
        return recommend(users, hist, live.art, d["now"], cfg, fresh_ids=ids)[0]
except ImportError:  # older trees: the refresh's own build_lists
    import pipeline.refresh.fresh as fresh
    assert fresh.__file__.startswith(tree), fresh.__file__
    kw = {"p_rank": live.p_rank, "item_text": live.item_text, "recall_kwargs": live.recall_kwargs}
    if hasattr(live, "tables"):
        kw["tables"] = live.tables
    cfg = fresh.FreshConfig(top_n=50, n_candidates=n_cand)
    def build(users, hist, ids):
        return fresh.build_lists(users, hist, ids, live.neighbours, live.item_feats, d["now"], cfg, **kw)
res = []
for k, (users, hist, ids) in enumerate(d["batches"]):
    build(users[:5], hist, ids)  # warm
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        lists = build(users, hist, ids)
        best = min(best, time.process_time() - t)
    lists.to_parquet(f"{out_dir}/lists_{k}.parquet")
    res.append([len(users), best])
print(json.dumps(res))
"""


def _baseline_tree(ref: str, dest: Path) -> Path:
    """``pipeline/`` as of ``ref``, extracted (read-only git: nothing in the checkout changes)."""
    blob = subprocess.run(["git", "archive", "--format=tar", ref, "pipeline"], cwd=REPO, capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _batches(url: str, home: str, sizes: list[int], seed: int = 5) -> dict:
    """Append ``max(sizes)`` stream-like events, then each batch = the last N events and their users'
    90-day history, as a refresh batch reads them."""
    from pipeline.refresh import core

    rng = np.random.default_rng(seed)
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT user_id FROM shop.users ORDER BY user_id")
        users = np.array([r[0] for r in cur.fetchall()])
        cur.execute("SELECT item_id FROM shop.items WHERE in_stock AND visible ORDER BY item_id")
        items = np.array([r[0] for r in cur.fetchall()])
        p = 1.0 / np.arange(1, len(items) + 1) ** 0.8
        p /= p.sum()
        cur.execute("SELECT max(event_id) FROM shop.events")
        base = int(cur.fetchone()[0])
        n = max(sizes)
        kind = rng.random(n)
        rows = [(base + 1 + k, int(rng.choice(users)), None if kind[k] < 0.05 else int(rng.choice(items, p=p)),
                 "search" if kind[k] < 0.05 else ("view" if kind[k] < 0.75 else "click" if kind[k] < 0.9
                                                   else "add_to_cart"),
                 str(rng.choice(["boots", "knife", "phone", "lamp", "serum"])) if kind[k] < 0.05 else None)
                for k in range(n)]
        cur.executemany("INSERT INTO shop.events (event_id, user_id, item_id, event_type, query, session_id, ts) "
                        "VALUES (%s, %s, %s, %s, %s, 'ab', clock_timestamp())", rows)
        conn.commit()
        pub = core._live_pub(cur)
        cur.execute("SELECT now()")
        now = cur.fetchone()[0]
        out = []
        for size in sizes:
            ids = np.array([r[0] for r in rows[-size:]])
            batch_users = np.unique([r[1] for r in rows[-size:]])
            cur.execute(core._history_sql(), {"users": batch_users.tolist(), "upto": int(ids.max()),
                                              "since": now - timedelta(days=90)})
            out.append((batch_users, core._frame(cur.fetchall(), core.EVENT_COLUMNS), ids))
    return {"url": url, "home": home, "pub": {**pub, "champion": None}, "now": now, "batches": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="server URL (a scratch database is created there); default: embedded")
    ap.add_argument("--baseline-ref", default="HEAD", help="git revision whose pipeline/ is the baseline")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--batches", default="200,700,1800", help="events per batch")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=300)
    args = ap.parse_args()
    from pipeline.datagen import generate_shop
    from pipeline.db import migrate
    from pipeline.refresh.seed import seed_live_run

    server = args.url or database_url()
    _admin(server, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    _admin(server, f'CREATE DATABASE "{DB}"')
    url = _with_db(server, DB)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-refresh-ab-") as tmp:
            tmp_path = Path(tmp)
            home = str(tmp_path / "home")
            migrate.upgrade(url)
            as_of = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
            generate_shop(url, users=args.users, items=args.items, days=14, seed=8, end=as_of)
            seed_live_run(url, home, as_of, top_n=50)
            data = tmp_path / "batches.pkl"
            data.write_bytes(pickle.dumps(_batches(url, home, [int(b) for b in args.batches.split(",")])))
            trees = {"baseline": _baseline_tree(args.baseline_ref, tmp_path / "baseline"), "this tree": REPO}
            env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
            env.pop("PYTHONPATH", None)
            res = {}
            for name, tree in trees.items():
                out = tmp_path / ("lists_" + name.replace(" ", "_"))
                out.mkdir()
                run = subprocess.run([sys.executable, "-c", WORKER, str(tree), str(data), str(out),
                                      str(args.candidates), str(args.repeat)], env=env, cwd=str(tmp_path),
                                     capture_output=True, text=True)
                if run.returncode:
                    raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
                res[name] = (json.loads(run.stdout.strip().splitlines()[-1]), out)
            import pandas as pd

            print(f"list building per batch, CPU seconds (best of {args.repeat}), baseline = {args.baseline_ref}:")
            for k, ((n_users, t_base), (_, t_new)) in enumerate(zip(res["baseline"][0], res["this tree"][0],
                                                                      strict=True)):
                same = pd.read_parquet(res["baseline"][1] / f"lists_{k}.parquet").equals(
                    pd.read_parquet(res["this tree"][1] / f"lists_{k}.parquet"))
                print(f"  {n_users} users: baseline {t_base:.3f} s ({n_users / t_base:,.0f} users/CPU-s), "
                      f"this tree {t_new:.3f} s ({n_users / t_new:,.0f} users/CPU-s), {t_base / t_new:.2f}x; "
                      f"identical lists: {same}")
    finally:
        from pipeline.db.engine import sa_engine

        sa_engine.cache_clear()
        _admin(server, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


if __name__ == "__main__":
    main()
