"""Candidate generation and merge for one shard of users (pure pandas; runs on a Dask worker).

Sources, each with a score in [0, 1] and the anchor item that caused it:
``retarget`` (viewed or carted recently, not bought), ``item-cf`` (neighbours of the user's strongest
items), ``category`` (popular in the user's favourite top-level category) and ``popularity`` (the
fallback that guarantees every user, a brand-new one included, a full list).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from pipeline.features.items import decayed_weight

SOURCE_PRIOR = {"retarget": 1.0, "item-cf": 0.8, "category": 0.35, "popularity": 0.15}
CAND_COLUMNS = ["user_id", "item_id", "source", "recall_score", "anchor_item_id"]


@dataclass(frozen=True)
class RecallConfig:
    as_of: datetime
    n_candidates: int = 300
    recent_days: int = 7
    history_items: int = 20
    weights: dict[str, float] = field(default_factory=dict)
    half_life_days: dict[str, float] = field(default_factory=dict)


def _norm(s: pd.Series, by: pd.Series) -> pd.Series:
    """Scale scores to (0, 1] within each user."""
    top = s.groupby(by).transform("max")
    return (s / top.where(top > 0, 1.0)).fillna(0.0)


def user_history(events: pd.DataFrame, cfg: RecallConfig) -> pd.DataFrame:
    """(user, item) -> decayed weight, last ts, last event type, bought flag."""
    ev = events[events["item_id"].notna()].copy()
    if ev.empty:
        return pd.DataFrame(columns=["user_id", "item_id", "weight", "last_ts", "last_type", "bought"])
    ev["item_id"] = ev["item_id"].astype("int64")
    ev["w"] = decayed_weight(ev, cfg.as_of, cfg.weights, cfg.half_life_days)
    ev = ev.sort_values(["ts", "event_id"], kind="stable")
    g = ev.groupby(["user_id", "item_id"], sort=True)
    hist = g.agg(weight=("w", "sum"), last_ts=("ts", "max"), last_type=("event_type", "last"))
    hist["bought"] = g["event_type"].agg(lambda s: bool((s == "purchase").any()))
    return hist.reset_index()


def generate_candidates(users: np.ndarray, events: pd.DataFrame, neighbours: pd.DataFrame,
                        item_feats: pd.DataFrame, cfg: RecallConfig) -> pd.DataFrame:
    """Merged, de-duplicated, filtered candidates for ``users`` (every user gets ``n_candidates``
    when the available catalogue has that many items)."""
    hist = user_history(events, cfg)
    available = item_feats.loc[item_feats["in_stock"] & item_feats["visible"], ["item_id", "activity",
                                                                              "top_category", "trend"]]
    frames = []
    if available.empty:  # nothing can be recommended; the output gate reports the empty lists
        return pd.DataFrame({c: pd.Series(dtype="object") for c in [*CAND_COLUMNS, "p_recall"]})

    recent = hist[(hist["last_ts"] >= pd.Timestamp(cfg.as_of) - pd.Timedelta(days=cfg.recent_days))
                  & ~hist["bought"]]
    if len(recent):
        frames.append(pd.DataFrame({"user_id": recent["user_id"], "item_id": recent["item_id"],
                                    "source": "retarget", "recall_score": _norm(recent["weight"], recent["user_id"]),
                                    "anchor_item_id": recent["item_id"]}))

    if len(hist) and len(neighbours):
        strongest = (hist.sort_values(["user_id", "weight", "item_id"], ascending=[True, False, True])
                     .groupby("user_id").head(cfg.history_items))
        pairs = strongest.merge(neighbours, on="item_id", how="inner")
        if len(pairs):
            pairs["contrib"] = pairs["weight"] * pairs["score"]
            pairs = pairs.sort_values(["user_id", "similar_item_id", "contrib", "item_id"],
                                      ascending=[True, True, False, True])
            agg = pairs.groupby(["user_id", "similar_item_id"], sort=False).agg(
                recall_score=("contrib", "sum"), anchor_item_id=("item_id", "first")).reset_index()
            agg = agg.rename(columns={"similar_item_id": "item_id"})
            agg["recall_score"] = _norm(agg["recall_score"], agg["user_id"])
            agg["source"] = "item-cf"
            frames.append(agg[CAND_COLUMNS])

    if len(hist):
        hc = hist.merge(item_feats[["item_id", "top_category"]], on="item_id")
        fav = (hc.groupby(["user_id", "top_category"])["weight"].sum().reset_index()
               .sort_values(["user_id", "weight", "top_category"], ascending=[True, False, True])
               .groupby("user_id").head(1))
        per_cat = (available.sort_values(["activity", "item_id"], ascending=[False, True])
                   .groupby("top_category").head(cfg.n_candidates // 3))
        cat = fav[["user_id", "top_category"]].merge(per_cat, on="top_category")
        if len(cat):
            frames.append(pd.DataFrame({"user_id": cat["user_id"], "item_id": cat["item_id"], "source": "category",
                                        "recall_score": _norm(cat["activity"], cat["user_id"]),
                                        "anchor_item_id": pd.NA}))

    # Fallback: enough popular items that every user still has a full list after exclusions.
    n_pop = cfg.n_candidates + (int(hist.groupby("user_id").size().max()) if len(hist) else 0)
    pop = available.assign(p=available["activity"] * (1.0 + available["trend"])).sort_values(
        ["p", "item_id"], ascending=[False, True]).head(n_pop)
    pop_score = (pop["p"] / max(float(pop["p"].max()), 1e-9)).to_numpy() if len(pop) else np.array([])
    ucol = np.repeat(np.asarray(users, dtype="int64"), len(pop))
    frames.append(pd.DataFrame({"user_id": ucol, "item_id": np.tile(pop["item_id"].to_numpy(), len(users)),
                                "source": "popularity", "recall_score": np.tile(pop_score, len(users)),
                                "anchor_item_id": pd.NA}))

    cand = pd.concat(frames, ignore_index=True)
    cand = cand[cand["user_id"].isin(users) & cand["item_id"].isin(available["item_id"])]
    bought = hist.loc[hist["bought"], ["user_id", "item_id"]]
    if len(bought):
        cand = cand.merge(bought.assign(_b=True), on=["user_id", "item_id"], how="left")
        cand = cand[cand["_b"].isna()].drop(columns="_b")
    cand["prior"] = cand["source"].map(SOURCE_PRIOR)
    cand["p_recall"] = cand["prior"] * (0.5 + 0.5 * cand["recall_score"].astype("float64"))
    cand = (cand.sort_values(["user_id", "item_id", "p_recall", "source"], ascending=[True, True, False, True])
            .drop_duplicates(["user_id", "item_id"], keep="first"))
    cand = (cand.sort_values(["user_id", "p_recall", "item_id"], ascending=[True, False, True])
            .groupby("user_id").head(cfg.n_candidates).reset_index(drop=True))
    cand["anchor_item_id"] = cand["anchor_item_id"].astype("Int64")
    return cand[[*CAND_COLUMNS, "p_recall"]]
