"""Popularity counts, optionally time-decayed, and top-N selection.

Decay is a half-life in seconds: an event ``age`` seconds before ``as_of`` weighs
``0.5 ** (age / half_life)``, so "trending" is popularity with a short half-life and "all-time" is no
decay at all. Events at or after ``as_of`` are ignored so that a run is reproducible for its ``as_of``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def distinct_user_counts(user_items: sp.spmatrix) -> np.ndarray:
    """Number of distinct users per item (column) of a user x item matrix."""
    return np.asarray((sp.csr_matrix(user_items) != 0).sum(axis=0)).ravel().astype(np.int64)


def popular_table(item_feats: pd.DataFrame) -> pd.DataFrame:
    """item_id, top_category, popularity (decayed activity) and trending (recent volume times recent share)
    of each item in ``item_feats`` (the features stage's columns activity, recent_events, trend)."""
    f = item_feats
    recent = f["recent_events"] if "recent_events" in f.columns else pd.Series(0.0, index=f.index)
    trend = f["trend"] if "trend" in f.columns else pd.Series(0.0, index=f.index)
    out = pd.DataFrame({"item_id": f["item_id"].astype("int64"), "top_category": f["top_category"],
                        "popularity": f["activity"].astype("float64"),
                        "trending": recent.astype("float64") * trend.astype("float64")})
    if "category" in f.columns:
        out["category"] = f["category"]
    return out


def top_per_category(table: pd.DataFrame, score: str, n: int) -> pd.DataFrame:
    """The ``n`` best items of each top-level category by ``score`` (ties by item_id), with their rank."""
    t = table[table[score] > 0].sort_values(["top_category", score, "item_id"], ascending=[True, False, True])
    t = t.groupby("top_category", sort=True).head(n).copy()
    t["cat_rank"] = t.groupby("top_category").cumcount()
    return t
