"""Issue 25, acceptance 1: the simulated A/B loop on a generated shop, read out as `rerank ab report` does.

Two arms ("control" serves the user's true tastes in 20% of slots, "tastes" in 70%), 50/50 by the salted hash;
then the same with 10% of the "tastes" users moved to "control" (a broken assignment). Runs on a scratch
database of the configured server (RERANK_DATABASE_URL, else the embedded one), dropped afterwards.

    python research/ab_simulation.py --users 3000 --items 400 --days 7 --seeds 1,2,3
"""

from __future__ import annotations

import argparse

import pandas as pd


def run(url: str, users: int, items: int, days: int, seed: int, skew: float, method: str) -> dict:
    from pipeline.datagen.build import build_world
    from pipeline.datagen.loop import load_loop, simulate_ab
    from pipeline.db.engine import connect
    from pipeline.db.shop import load_shop
    from pipeline.reporting.ab import readout

    world = build_world(users, items, 6, seed=seed)
    with connect(url) as conn, conn.cursor() as cur:
        load_shop(cur, world.frames)
    imp, ev = simulate_ab(world, days, {"control": 0.2, "tastes": 0.7}, seed=seed, skew=skew)
    load_loop(url, imp, ev)
    r = readout(url, pd.Timestamp(world.end_ms, unit="ms").date(), method=method)
    ctr = r.diffs.set_index("metric").loc["ctr"]
    conv = r.diffs.set_index("metric").loc["conversion"]
    rev = r.diffs.set_index("metric").loc["revenue_per_user"]
    return {"seed": seed, "skew": skew, "users": dict(zip(r.srm["arms"], r.srm["observed"], strict=True)),
            "srm_p": r.srm["p_value"], "ctr_diff": round(ctr["diff"], 4),
            "ctr_ci": (round(ctr["ci_low"], 4), round(ctr["ci_high"], 4)),
            "conv_ci": (round(conv["ci_low"], 4), round(conv["ci_high"], 4)),
            "rev_ci": (round(rev["ci_low"], 2), round(rev["ci_high"], 2)), "winner_ctr": r.winner("ctr")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--method", default="delta")
    a = ap.parse_args()
    from pipeline.db.engine import database_url
    from pipeline.db.scratch import scratch_database

    for seed in [int(s) for s in a.seeds.split(",")]:
        for skew in (0.0, 0.1):
            with scratch_database(database_url(), prefix="rerank_ab") as url:
                print(run(url, a.users, a.items, a.days, seed, skew, a.method), flush=True)


if __name__ == "__main__":
    main()
