"""Scale-out curve: the same nightly run on an external ``dask scheduler`` with 1, 2, 4, ... ``dask worker``
processes (one thread each): wall time of score_users and of the whole run per worker count, and whether every
count published the same lists (order and items; scores within 1e-6).

    .venv/bin/python benchmarks/bench_scale_out.py --users 6000 --items 2000 --workers 1,2,4

One shop is generated once into a throwaway embedded PostgreSQL; each worker count runs the nightly for the
same ``as_of`` in its own RERANK_HOME. On a machine with fewer cores than workers the curve flattens at the
core count: that is the machine's limit, not the code's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)


def _cluster(n: int, port: int, url: str) -> list[subprocess.Popen]:
    bin_dir = Path(sys.executable).parent
    # workers take the database password from their own environment, never from a task's arguments
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "RERANK_DATABASE_URL": url}
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    time.sleep(2.0)
    procs += [subprocess.Popen([str(bin_dir / "dask"), "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1",
                                "--memory-limit", "4GiB", "--dashboard-address", ":0"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    from distributed import Client

    with Client(f"tcp://127.0.0.1:{port}", timeout="30s") as c:
        c.wait_for_workers(n, timeout=60)
    return procs


def _lists(home: Path, run_id: str):  # noqa: ANN202 - a DataFrame
    import pandas as pd

    from pipeline.publish.parts import rec_parts

    frames = [pd.read_parquet(p, columns=["user_id", "rank", "item_id", "score"])
              for p in rec_parts(home / "runs" / run_id)]
    return pd.concat(frames, ignore_index=True).sort_values(["user_id", "rank"]).reset_index(drop=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--shard-users", type=int, default=500)
    ap.add_argument("--port", type=int, default=8799)
    args = ap.parse_args()

    import numpy as np

    from pipeline.datagen import generate_shop
    from pipeline.db.embedded import EmbeddedPostgres
    from pipeline.db.migrate import upgrade
    from pipeline.nightly import run_nightly
    from pipeline.settings import load_settings

    root = Path(tempfile.mkdtemp(prefix="rerank-bench-scale-"))
    pg = EmbeddedPostgres(root / "pg")
    rows, reference = [], None
    try:
        url = pg.up()
        upgrade(url)
        generate_shop(url, users=args.users, items=args.items, days=args.days, seed=42, end=AS_OF)
        for n in [int(x) for x in args.workers.split(",")]:
            procs = _cluster(n, args.port, url)
            home = root / f"home-{n}"
            try:
                s = load_settings(database_url=url, home=str(home), dask_address=f"tcp://127.0.0.1:{args.port}",
                                  shard_users=args.shard_users, embedding_method="tfidf")
                stages: dict[str, float] = {}
                t0 = time.perf_counter()
                res = run_nightly(s, as_of=AS_OF, on_stage=lambda name, out, secs, st=stages: st.update({name: secs}))
                total = time.perf_counter() - t0
            finally:
                for p in reversed(procs):
                    p.terminate()
                for p in procs:
                    p.wait(30)
            lists = _lists(home, res["run_id"])
            same = None
            if reference is None:
                reference = lists
            else:
                same = bool(lists[["user_id", "rank", "item_id"]].equals(reference[["user_id", "rank", "item_id"]])
                            and np.allclose(lists["score"], reference["score"], atol=1e-6))
            rows.append({"workers": n, "score_users_s": round(stages["score_users"], 1),
                         "nightly_s": round(total, 1), "shards": res["score_users"]["shards"],
                         "same_lists_as_first": same})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        pg.down()
        shutil.rmtree(root, ignore_errors=True)
    base = rows[0]
    for r in rows:
        r["score_users_speedup"] = round(base["score_users_s"] / r["score_users_s"], 2)
        r["nightly_speedup"] = round(base["nightly_s"] / r["nightly_s"], 2)
    print(json.dumps({"users": args.users, "items": args.items, "cores": os.cpu_count(), "curve": rows}, indent=2))


if __name__ == "__main__":
    main()
