"""Synthetic publications for the publish tests: items in ``shop.items`` and whole top-N frames."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from pipeline.db.copy import copy_frame
from pipeline.db.engine import connect
from pipeline.publish.swap import RECS_COLUMNS


def load_items(url: str, n_items: int) -> str:
    """Items 1..n_items, all in stock and visible; returns ``url``."""
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": "t", "category": "A>B",
                          "in_stock": True, "visible": True})
    with connect(url) as conn, conn.cursor() as cur:
        copy_frame(cur, "shop.items", items)
    return url


def synthetic_recs(run_id: str, generated_at: datetime, *, users: int, items: int, top: int,
                   shift: int = 0) -> pd.DataFrame:
    """Users 1..users with ``top`` items each; ``shift`` moves every list so two runs differ."""
    u = np.repeat(np.arange(1, users + 1), top)
    r = np.tile(np.arange(1, top + 1), users)
    return pd.DataFrame({"user_id": u, "rank": r, "item_id": (u * 7 + r + shift) % items + 1,
                         "score": 1.0 / r, "reason": "popular right now", "anchor_item_id": pd.NA,
                         "source": "popularity", "variant": "control", "model_version": "m1", "run_id": run_id,
                         "generated_at": pd.Timestamp(generated_at)})[RECS_COLUMNS]
