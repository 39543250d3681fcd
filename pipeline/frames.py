"""Column names of the shop contract and the in-memory form of a shop (Microsoft Recommenders style).

Every stage takes column names from here; generators and importers produce :class:`ShopFrames`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

USER_COL = "user_id"
ITEM_COL = "item_id"
EVENT_COL = "event_type"
TS_COL = "ts"
RATING_COL = "rating"
SCORE_COL = "score"
RANK_COL = "rank"

USER_COLUMNS = ["user_id", "created_at", "attrs"]
ITEM_COLUMNS = ["item_id", "title", "description", "category", "brand", "price", "in_stock", "visible",
                "created_at", "image_path", "attrs"]
EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "query", "session_id", "quantity", "ts"]
IMPRESSION_COLUMNS = ["user_id", "item_id", "placement", "rank", "variant", "run_id", "ts"]
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "search")


def pair_index(df: pd.DataFrame) -> pd.MultiIndex:
    """(user_id, item_id) of each row as an int64 MultiIndex, for set tests (``isin``) between frames."""
    return pd.MultiIndex.from_arrays([df[USER_COL].to_numpy(dtype="int64"), df[ITEM_COL].to_numpy(dtype="int64")])


@dataclass
class ShopFrames:
    """A shop as three DataFrames with the contract's columns (attrs as JSON text or dict)."""

    users: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    #: Rows refused while parsing: columns ``source`` (table), ``raw`` (dict), ``reason`` (str).
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["source", "raw", "reason"]))
    #: Optional extra columns kept for evaluation (e.g. MovieLens ``rating``), keyed like events.
    name: str = "shop"
