"""Shard 0 of a kept benchmark run (``bench_nightly.py --keep-home``), scored again by the code on PYTHONPATH.

Writes the shard's lists to OUT (Parquet) and prints the best of two timed passes, so two versions of the code
can be compared row for row on the same artefacts; ``--profile`` prints a cProfile of a third pass instead.

    PYTHONPATH=<worktree> OPENBLAS_NUM_THREADS=1 python research/shard_lists.py HOME OUT [--profile cumulative]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipeline.extract.shards import plan_shards, read_shard_events, shard_users
from pipeline.nightly import recommend_shard
from pipeline.settings import load_settings

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)  # bench_nightly's as_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("home", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--shard-users", type=int, default=2000)
    ap.add_argument("--profile", metavar="SORT", help="print a cProfile of one more pass, sorted so")
    args = ap.parse_args()
    run = sorted((args.home / "runs").iterdir())[-1]
    snap = run / "snapshot"
    s = load_settings(home=str(args.home), shard_users=args.shard_users)
    users = pd.read_parquet(snap / "users.parquet", columns=["user_id"])["user_id"].to_numpy()
    mine = shard_users(users, plan_shards(users, s.shard_users), 0)
    events = read_shard_events(snap, 0)
    chosen = json.loads((run / "model.json").read_text())
    kw = {"top_n": s.top_n, "n_candidates": s.candidates, "recent_days": s.recent_days,
          "weights": dict(s.event_weights), "half_life": dict(s.half_life_days),
          "artifact_uri": chosen.get("artifact_uri"), "rerank": dict(s.rerank), "variants": dict(s.variants),
          "salt": s.variant_salt}
    few = mine[:50]  # warm: the artefacts load once per worker process, as on a worker's later shards
    recommend_shard(few, events[events["user_id"].isin(few)], snap, AS_OF, **kw)
    best, lists = float("inf"), None
    for _ in range(2):
        t = time.perf_counter()
        lists, _ = recommend_shard(mine, events, snap, AS_OF, **kw)
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"shard_users": int(len(mine)), "rows": int(len(lists)), "shard_s": round(best, 2)}))
    lists.to_parquet(args.out)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        recommend_shard(mine, events, snap, AS_OF, **kw)
        prof.disable()
        pstats.Stats(prof).sort_stats(args.profile).print_stats(40)


if __name__ == "__main__":
    main()
