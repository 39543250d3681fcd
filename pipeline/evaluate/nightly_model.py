"""The ``nightly`` model of the evaluation harness: the production nightly run itself, scored on its lists.

``fit`` loads the training rows into a throwaway database on the same PostgreSQL server as the shop
(``RERANK_DATABASE_URL``, else the embedded server), runs :func:`pipeline.nightly.run_nightly` there with the
default settings (``--params '{"nightly": {...}}'`` overrides settings by name, e.g. ``{"rank_windows": 3}``),
and keeps the lists the run published (its Parquet parts, the rows the publish COPYs). ``recommend`` returns
their top ``k`` as written: the metrics are those of the published lists, ranks and ties included.

Mapping: every training row becomes a ``purchase`` event at its timestamp (a rating or review means the item
was consumed, so the run's re-rank leaves it out of that user's list, as the protocols' "unseen items" want);
items are the dataset's own (title, category, brand, price where it has them; ``item <id>`` and category
``unknown`` where it has none: :func:`with_descriptors`); ``as_of`` is one second
after the last training row. Under leave-one-out the run trains on each user's items[:-1] (``lists_only``:
the harness fits it on the test history, since published lists cannot fold one in) and the metrics are the
target's position in the published list.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.errors import ModelError
from pipeline.evaluate.models import Recommender, register_model
from pipeline.frames import ITEM_COL, RANK_COL, SCORE_COL, TS_COL, USER_COL, ShopFrames


def train_ts(train: pd.DataFrame) -> pd.Series:
    """The rows' times (unix seconds or datetimes); without a time column, their order a second apart."""
    if TS_COL not in train.columns:
        return pd.Series(pd.Timestamp("2020-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(train)), unit="s"))
    if pd.api.types.is_numeric_dtype(train[TS_COL]):
        return pd.to_datetime(train[TS_COL], utc=True, unit="s")
    return pd.to_datetime(train[TS_COL], utc=True)


#: Item columns the run reads from the dataset when it has them (the stubs keep theirs where it has none).
DESCRIPTORS = ("title", "description", "category", "brand", "price")


def with_descriptors(stubs: pd.DataFrame, descriptors: pd.DataFrame | None) -> pd.DataFrame:
    """``stubs`` with each of :data:`DESCRIPTORS` taken from the dataset's ``descriptors`` where it has a value
    for the item: the run sees the categories, brands and titles a shop would have, not stubs."""
    if descriptors is None or ITEM_COL not in descriptors.columns:
        return stubs
    d = descriptors.drop_duplicates(ITEM_COL).set_index(ITEM_COL)
    out = stubs.copy()
    for col in DESCRIPTORS:
        if col in d.columns:
            got = out[ITEM_COL].map(d[col])
            if col == "category":
                got = got.where(got.astype("string").str.strip().fillna("") != "", None)
            out[col] = got.where(got.notna(), out[col]).astype("object" if col != "price" else "float64")
    return out


class NightlyModel(Recommender):
    """The nightly run's published lists (see the module docstring)."""

    name = "nightly"
    #: Metrics from its published lists only (no score for every catalogue item, no fold-in).
    lists_only = True

    def __init__(self, *, seed: int = 42, **settings: object) -> None:
        super().__init__(use_ratings=False, seed=seed)
        self.settings = settings
        self.lists = pd.DataFrame({USER_COL: [], ITEM_COL: [], RANK_COL: [], SCORE_COL: []})
        self.run_figures: dict = {}

    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None = None) -> NightlyModel:
        super().fit(train, items)
        from pipeline.db.engine import connect, database_url
        from pipeline.db.scratch import scratch_database
        from pipeline.db.shop import load_shop
        from pipeline.nightly import run_nightly
        from pipeline.publish.parts import rec_parts
        from pipeline.settings import get_settings, load_settings

        home = Path(tempfile.mkdtemp(prefix="rerank-eval-nightly-"))
        try:
            with scratch_database(database_url(get_settings())) as url:
                with connect(url) as conn, conn.cursor() as cur:
                    load_shop(cur, self._shop(train))
                as_of = pd.Timestamp(train_ts(train).max()).to_pydatetime() + timedelta(seconds=1)
                s = load_settings(**{"database_url": url, "home": str(home), "seed": self.seed, **self.settings})
                res = run_nightly(s, as_of=as_of)
                self.run_figures = {k: v for k, v in res.items() if k in ("evaluate_gate", "score_users")}
                parts = rec_parts(home / "runs" / res["run_id"])
                lists = pd.concat([pd.read_parquet(p, columns=["user_id", "item_id", "rank", "score"])
                                   for p in parts], ignore_index=True)
            self.lists = lists.rename(columns={"user_id": USER_COL, "item_id": ITEM_COL, "rank": RANK_COL,
                                               "score": SCORE_COL}).sort_values([USER_COL, RANK_COL])
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return self

    def _shop(self, train: pd.DataFrame) -> ShopFrames:
        """The training rows as a shop: users, item stubs, one purchase event per row."""
        ts = train_ts(train)
        start = ts.min() - pd.Timedelta(days=1)
        users = pd.DataFrame({"user_id": self.user_ids.astype("int64"), "created_at": start, "attrs": None})
        items = pd.DataFrame({"item_id": self.item_ids.astype("int64"), "title": [f"item {i}" for i in self.item_ids],
                              "description": None, "category": "unknown", "brand": None, "price": None,
                              "in_stock": True, "visible": True, "created_at": start, "image_path": None,
                              "attrs": None})
        items = with_descriptors(items, self.item_descriptors)
        events = pd.DataFrame({"event_id": np.arange(1, len(train) + 1, dtype="int64"),
                               "user_id": train[USER_COL].to_numpy(dtype="int64"),
                               "item_id": train[ITEM_COL].to_numpy(dtype="int64"), "event_type": "purchase",
                               "query": None, "session_id": None, "quantity": 1, "ts": ts.to_numpy()})
        return ShopFrames(users=users, items=items, events=events, name="evaluation")

    def recommend(self, users: Sequence | np.ndarray, k: int = 10, exclude_seen: bool = True,
                  history: sp.csr_matrix | None = None) -> pd.DataFrame:
        if history is not None:
            raise ModelError("nightly: the published lists cannot fold in another history",
                             "evaluate the nightly model with --protocol msr-stratified or temporal")
        want = pd.unique(np.asarray(users))
        out = self.lists[self.lists[USER_COL].isin(want) & (self.lists[RANK_COL] <= k)]
        return out.reset_index(drop=True)

    def score(self, users: Sequence | np.ndarray, history: sp.csr_matrix | None = None) -> np.ndarray:
        raise ModelError("nightly: a published list ranks its top N, not every catalogue item",
                         "evaluate the nightly model with --protocol msr-stratified or temporal")

    def _fit(self, user_items: sp.csr_matrix) -> None:
        """The run happens in :meth:`fit`, on the training rows."""


register_model("nightly", NightlyModel, replace=True)
