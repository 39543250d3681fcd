"""Issue 25, acceptance 2: the ranker trained with position-corrected impressions against the one trained
without them, judged on how well each orders the generator's ground truth.

For each seed: a generated shop whose last ``--impression-days`` days carry the generator's logged ``home``
placement (randomised order, position-biased clicks: ``pipeline.datagen.loop``); the same point-in-time
training windows (``pipeline.rank.data``) once with the impressions (shown-and-not-clicked negatives, inverse
propensity weights by rank, the propensity estimated from the log) and once without; both models score the
production recall's candidates of a sample of users at the holdout's start, and each user's candidates are
ordered by the model's score (ranker alone, and fused with P_recall as published). Figures: nDCG@10 with the
generator's relevance (``loop.relevance``) as the graded gain, averaged over users, and the mean per-user
Spearman correlation between score and relevance.

    python research/impressions_ranker.py --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import pandas as pd


def _ndcg(gain_in_order: np.ndarray, k: int = 10) -> float:
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    top = gain_in_order[:k]
    ideal = np.sort(gain_in_order)[::-1][:k]
    best = float((ideal * disc[:len(ideal)]).sum())
    return float((top * disc[:len(top)]).sum()) / best if best > 0 else np.nan


def ground_truth_metrics(world, cand: pd.DataFrame, score: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    from pipeline.datagen.loop import relevance

    df = cand[["user_id", "item_id"]].assign(score=score, rel=relevance(world, cand["user_id"], cand["item_id"]))
    nd, rho = [], []
    for _, g in df.groupby("user_id"):
        if len(g) < 5 or g["rel"].max() <= 0:
            continue
        g = g.sort_values(["score", "item_id"], ascending=[False, True])
        nd.append(_ndcg(g["rel"].to_numpy()))
        if g["rel"].nunique() > 1 and g["score"].nunique() > 1:
            rho.append(spearmanr(g["score"], g["rel"]).statistic)
    return {"ndcg@10": float(np.nanmean(nd)), "spearman": float(np.nanmean(rho)), "users": len(nd)}


def experiment(seed: int, *, users: int, items: int, days: int, impression_days: int, windows: int,
               epochs: int, eval_users: int) -> list[dict]:
    from pipeline.datagen.build import build_world
    from pipeline.datagen.loop import with_logged_impressions
    from pipeline.rank.data import (
        build_window,
        daily_windows,
        events_before,
        position_propensity,
        recall_candidate_fn,
    )
    from pipeline.rank.model import RankerConfig, RankerModel
    from pipeline.rank.stage import item_feats_at

    world = build_world(users, items, days, seed=seed)
    shown = with_logged_impressions(world, impression_days)
    events = world.frames.events.assign(ts=lambda d: pd.to_datetime(d["ts"], utc=True))
    catalogue = world.frames.items
    as_of = pd.Timestamp(world.end_ms, unit="ms", tz="UTC").to_pydatetime()
    train_days, (hold_start, _) = daily_windows(as_of, windows)
    fn = recall_candidate_fn(catalogue, n_candidates=100)
    hs = pd.Timestamp(hold_start)
    prop = position_propensity(shown[shown["ts"] < hs], events[events["ts"] < hs])
    with_imp = [build_window(events, c, e, fn, impressions=shown, propensity=prop) for c, e in train_days]
    without = [dataclasses.replace(w, impressions=None, propensity=None) for w in with_imp]
    hist = events_before(events, hold_start)
    rng = np.random.default_rng(seed)
    active = np.unique(hist["user_id"].to_numpy())
    who = np.sort(rng.choice(active, min(eval_users, len(active)), replace=False))
    cand = fn(who, hist[hist["user_id"].isin(who)], hold_start)
    cfg = RankerConfig(seed=seed, max_epochs=epochs)
    feats = item_feats_at(catalogue, hist, hold_start, cfg)
    rows = []
    for name, wins in (("without impressions", without), ("with impressions (IPW)", with_imp)):
        t0 = time.perf_counter()
        model = RankerModel(cfg).fit(wins, catalogue, device="cpu")
        p = model.score(cand, hist, feats, hold_start)
        ranker = ground_truth_metrics(world, cand, p)
        fused = ground_truth_metrics(world, cand, cand["p_recall"].to_numpy() * p)
        rows.append({"seed": seed, "model": name, "ndcg@10 ranker": round(ranker["ndcg@10"], 4),
                     "spearman ranker": round(ranker["spearman"], 4), "ndcg@10 fused": round(fused["ndcg@10"], 4),
                     "users": ranker["users"], "train_groups": model.metrics["train_groups"],
                     "seconds": round(time.perf_counter() - t0, 1)})
    recall_only = ground_truth_metrics(world, cand, cand["p_recall"].to_numpy())
    rows.append({"seed": seed, "model": "recall only", "ndcg@10 ranker": round(recall_only["ndcg@10"], 4),
                 "spearman ranker": round(recall_only["spearman"], 4), "ndcg@10 fused": np.nan,
                 "users": recall_only["users"], "train_groups": 0, "seconds": 0.0})
    print(f"seed {seed}: {len(shown)} impressions, propensity by rank {np.round(prop[:10], 2).tolist()}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--items", type=int, default=300)
    ap.add_argument("--days", type=int, default=12)
    ap.add_argument("--impression-days", type=int, default=8)
    ap.add_argument("--windows", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--eval-users", type=int, default=500)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for s in [int(x) for x in a.seeds.split(",")]:
        rows += experiment(s, users=a.users, items=a.items, days=a.days, impression_days=a.impression_days,
                           windows=a.windows, epochs=a.epochs, eval_users=a.eval_users)
        print(pd.DataFrame(rows[-3:]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    print(df.groupby("model")[["ndcg@10 ranker", "spearman ranker", "ndcg@10 fused"]].mean().round(4).to_string())


if __name__ == "__main__":
    main()
