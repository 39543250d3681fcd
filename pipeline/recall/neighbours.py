"""The CF build stage: item-item neighbours from the run's interaction matrix (also "similar items")."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.extract.snapshot import read_snapshot
from pipeline.recall.matrix import build_interactions


def build_neighbours(snapshot_dir: str | Path, as_of: datetime, *, weights: dict[str, float],
                     half_life_days: dict[str, float], k: int = 20) -> pd.DataFrame:
    """Top-``k`` cosine neighbours per item, written to ``neighbours.parquet`` (item_id, similar_item_id,
    score, rank, method)."""
    from pipeline.recall.itemcf import cosine_topk

    snap = Path(snapshot_dir)
    events, items, _ = read_snapshot(snap)
    inter = build_interactions(events, as_of, weights=weights, half_life_days=half_life_days,
                               item_ids=np.sort(items["item_id"].to_numpy()))
    idx, scores = cosine_topk(inter.user_items, k=k)
    rows, cols = np.nonzero(scores > 0)
    out = pd.DataFrame({"item_id": inter.item_ids[rows], "similar_item_id": inter.item_ids[idx[rows, cols]],
                        "score": scores[rows, cols].astype("float64")})
    out = out.sort_values(["item_id", "score", "similar_item_id"], ascending=[True, False, True], kind="stable")
    out["rank"] = out.groupby("item_id").cumcount().astype("int32") + 1
    out["method"] = "item-cf-cosine"
    out = out.reset_index(drop=True)
    out.to_parquet(snap / "neighbours.parquet", index=False)
    return out
