"""Item features: decayed, event-type-weighted activity and trend.

NVTabular discipline: ``decayed_weight`` is a pure per-partition transform; the fit is one Dask groupby
reduction to per-item sums; finalize joins the small result with the catalogue in pandas.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd


def top_category(category: pd.Series) -> pd.Series:
    """The first level of a category path (``Home>Kitchen>Knives`` -> ``Home``)."""
    return category.fillna("").astype(str).str.split(">", n=1).str[0]


def decayed_weight(events: pd.DataFrame, as_of: datetime, weights: dict[str, float],
                   half_life_days: dict[str, float]) -> pd.Series:
    """Weight of each event: its type's weight halved every half-life of that type before ``as_of``."""
    w = events["event_type"].map(weights).fillna(0.0).astype("float64")
    hl = events["event_type"].map(half_life_days).fillna(7.0).astype("float64")
    age_days = (pd.Timestamp(as_of) - events["ts"]).dt.total_seconds().to_numpy() / 86400.0
    return pd.Series(w.to_numpy() * np.exp2(-np.clip(age_days, 0, None) / hl.to_numpy()), index=events.index)


def _partition_sums(part: pd.DataFrame, as_of: datetime, weights: dict, half_life: dict) -> pd.DataFrame:
    part = part[part["item_id"].notna()]
    recent = (pd.Timestamp(as_of) - part["ts"]) <= pd.Timedelta(days=3)
    return pd.DataFrame({
        "item_id": part["item_id"].astype("int64"),
        "activity": decayed_weight(part, as_of, weights, half_life),
        "events": 1,
        "recent_events": recent.astype("int64"),
        "purchases": (part["event_type"] == "purchase").astype("int64"),
    })


def build_item_features(snapshot_dir: str | Path, as_of: datetime, client: object, *,
                        weights: dict[str, float], half_life_days: dict[str, float]) -> pd.DataFrame:
    """Per-item activity, counts and trend for every catalogue item; written to ``item_features.parquet``."""
    import dask.dataframe as dd

    snap = Path(snapshot_dir)
    ddf = dd.read_parquet(str(snap / "events"), columns=["item_id", "event_type", "ts"])
    meta = pd.DataFrame({"item_id": pd.Series(dtype="int64"), "activity": pd.Series(dtype="float64"),
                         "events": pd.Series(dtype="int64"), "recent_events": pd.Series(dtype="int64"),
                         "purchases": pd.Series(dtype="int64")})
    sums = (ddf.map_partitions(_partition_sums, as_of, weights, half_life_days, meta=meta)
            .groupby("item_id").sum())
    stats = sums.compute(scheduler=client.get)
    items = pd.read_parquet(snap / "items.parquet")
    feats = items[["item_id", "category", "brand", "price", "in_stock", "visible", "created_at"]].merge(
        stats, left_on="item_id", right_index=True, how="left")
    for c in ["activity", "events", "recent_events", "purchases"]:
        feats[c] = feats[c].fillna(0)
    # Trend: share of the last 3 days in the item's activity, smoothed so a single event is no trend.
    feats["trend"] = (feats["recent_events"] + 1.0) / (feats["events"] + 10.0)
    feats["top_category"] = top_category(feats["category"])
    feats = feats.sort_values("item_id").reset_index(drop=True)
    feats.to_parquet(snap / "item_features.parquet", index=False)
    return feats
