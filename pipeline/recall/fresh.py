"""Recall from fresh behaviour (pure pandas): the sources :func:`pipeline.recommend.recommend` adds when it
is given a batch of new events, as the refresh does. They read only the *fresh* events (the batch and the
last ``fresh_minutes`` of the user's history), so a shopper who just looked at hiking boots sees boots now:

- ``fresh-cf``: neighbours (the run's item neighbours) of just-viewed / clicked / carted / bought items;
- ``fresh-session``: popular items of the top-level category the fresh events concentrate on (session intent);
- ``fresh-search``: items whose title or category contains the words of a fresh search query.

Each row carries a ``hint``: the reason that names the fresh item or query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline.recall.candidates import SOURCES, ItemTables, item_tables

#: Priors of the fresh sources, on the scale of ``candidates.SOURCE_PRIOR`` (retarget 1.0, item-cf 0.8,
#: category 0.35, popularity 0.15): fresh intent outranks long-term item-cf, never the re-targeted item itself.
FRESH_PRIOR = {"fresh-cf": 0.9, "fresh-search": 0.85, "fresh-session": 0.45}
FRESH_TYPES = ("view", "click", "add_to_cart", "purchase")
_VERB = {"view": "viewed", "click": "viewed", "add_to_cart": "added to your cart", "purchase": "bought"}
_WORD = re.compile(r"\w+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
HINT_COLUMNS = ["user_id", "item_id", "source", "recall_score", "anchor_item_id", "hint"]
#: Every source name a refresh candidate may carry, in sort order (ties of p_recall go to the first).
ALL_SOURCES = sorted({*SOURCES, *FRESH_PRIOR})
#: Fresh search queries whose matches a RunTables remembers (queries repeat; the item texts do not change).
QUERY_MEMO = 2048


class FreshParams(Protocol):
    """What the fresh sources read of the caller's configuration (:class:`pipeline.recommend.RecommendConfig`)."""

    n_candidates: int
    neighbours_per_item: int
    weights: dict[str, float]


@dataclass
class RunTables:
    """What the per-user path derives from a run's items and neighbours alone, built once per process and run
    (a nightly worker, the refresh's live run) instead of once per shard or batch. Derived tables that depend
    on the config are memoised by the config value that shapes them."""

    item_feats: pd.DataFrame
    neighbours: pd.DataFrame
    items: ItemTables
    titles: pd.Series
    item_text: pd.Series
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def available(self) -> pd.DataFrame:
        return self.items.available

    def top_neighbours(self, k: int) -> pd.DataFrame:
        """Each item's ``k`` best neighbours (score desc, id asc)."""
        if ("nb", k) not in self._memo:
            self._memo[("nb", k)] = (
                self.neighbours.sort_values(["item_id", "score", "similar_item_id"], ascending=[True, False, True])
                .groupby("item_id").head(k))
        return self._memo[("nb", k)]

    def session_pool(self, n: int) -> pd.DataFrame:
        """The ``n`` most active available items of each top-level category."""
        if ("pool", n) not in self._memo:
            self._memo[("pool", n)] = (self.available.sort_values(["activity", "item_id"], ascending=[False, True])
                                       .groupby("top_category").head(max(1, n)))
        return self._memo[("pool", n)]

    def query_matches(self, query: str, n: int) -> pd.Series:
        """Share of the query's words in each item's text, best ``n`` (memoised; oldest forgotten first)."""
        memo = self._memo.setdefault("queries", {})
        key = (query, n)
        if key not in memo:
            if len(memo) >= QUERY_MEMO:
                memo.pop(next(iter(memo)))
            memo[key] = _match(query, self.item_text, n)
        return memo[key]


def run_tables(item_feats: pd.DataFrame, neighbours: pd.DataFrame, item_text: pd.Series | None = None
               ) -> RunTables:
    """The :class:`RunTables` of a run's item features (with titles) and neighbours."""
    items = item_tables(item_feats)
    titles = item_feats.set_index("item_id")["title"] if "title" in item_feats else pd.Series(dtype=object)
    return RunTables(item_feats=item_feats, neighbours=neighbours, items=items, titles=titles,
                     item_text=search_text(items.available) if item_text is None else item_text)


def _quote(text: object) -> str:
    s = str(text) if text is not None and text == text else "an item"
    return "\u201c" + (s[:60] + "\u2026" if len(s) > 60 else s) + "\u201d"


def _norm(s: pd.Series, by: pd.Series) -> pd.Series:
    top = s.groupby(by).transform("max")
    return (s / top.where(top > 0, 1.0)).fillna(0.0)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in HINT_COLUMNS})


def fresh_events(history: pd.DataFrame, batch_ids: np.ndarray, now: datetime, fresh_minutes: int) -> pd.DataFrame:
    """The events that express current intent: this batch's, plus each user's last ``fresh_minutes``."""
    if history.empty:
        return history
    recent = history["ts"] >= pd.Timestamp(now) - pd.Timedelta(minutes=fresh_minutes)
    return history[recent | history["event_id"].isin(batch_ids)]


def fresh_cf(fresh: pd.DataFrame, neighbours: pd.DataFrame, titles: pd.Series, cfg: FreshParams, *,
             tables: RunTables | None = None) -> pd.DataFrame:
    """Neighbours of the fresh items; the anchor is the fresh item that contributes most (``tables``: the
    live run's, whose trimmed neighbours replace ``neighbours``)."""
    ev = fresh[fresh["item_id"].notna() & fresh["event_type"].isin(FRESH_TYPES)]
    if ev.empty or neighbours.empty:
        return _empty()
    ev = ev.assign(item_id=ev["item_id"].astype("int64"), w=ev["event_type"].map(cfg.weights).fillna(1.0))
    ev = ev.sort_values(["ts", "event_id"], kind="stable")
    per_item = ev.groupby(["user_id", "item_id"], sort=False).agg(w=("w", "sum"), last_type=("event_type", "last"))
    per_item = per_item.reset_index()
    nb = (tables.top_neighbours(cfg.neighbours_per_item) if tables is not None else
          neighbours.sort_values(["item_id", "score", "similar_item_id"], ascending=[True, False, True])
          .groupby("item_id").head(cfg.neighbours_per_item))
    pairs = per_item.merge(nb, on="item_id")
    if pairs.empty:
        return _empty()
    pairs["contrib"] = pairs["w"] * pairs["score"]
    pairs = pairs.sort_values(["user_id", "similar_item_id", "contrib", "item_id"],
                              ascending=[True, True, False, True])
    agg = pairs.groupby(["user_id", "similar_item_id"], sort=False).agg(
        recall_score=("contrib", "sum"), anchor_item_id=("item_id", "first"), last_type=("last_type", "first"))
    agg = agg.reset_index().rename(columns={"similar_item_id": "item_id"})
    agg["recall_score"] = _norm(agg["recall_score"], agg["user_id"])
    agg["source"] = "fresh-cf"
    # One text per distinct anchor and per event type, then joined row-wise (object arrays add elementwise):
    # a batch has many rows per anchor.
    anchors, a_inv = np.unique(agg["anchor_item_id"].to_numpy(dtype="int64"), return_inverse=True)
    quoted = np.array([_quote(t) for t in titles.reindex(anchors).to_numpy(dtype=object)], dtype=object)
    types, t_inv = np.unique(agg["last_type"].to_numpy(dtype=object).astype(str), return_inverse=True)
    verbs = [_VERB.get(t, "viewed") for t in types]
    prefix = np.array([("bought together with " if v == "bought" else f"because you just {v} ") for v in verbs],
                      dtype=object)
    agg["hint"] = prefix[t_inv] + quoted[a_inv]
    return agg[HINT_COLUMNS]


def session_intent(fresh: pd.DataFrame, available: pd.DataFrame, cfg: FreshParams, *,
                   tables: RunTables | None = None) -> pd.DataFrame:
    """Popular items of the top-level category that carries most of the user's fresh weight."""
    ev = fresh[fresh["item_id"].notna() & fresh["event_type"].isin(FRESH_TYPES)]
    if ev.empty:
        return _empty()
    ev = ev.assign(item_id=ev["item_id"].astype("int64"), w=ev["event_type"].map(cfg.weights).fillna(1.0))
    ev = ev.merge(available[["item_id", "top_category"]], on="item_id")
    if ev.empty:
        return _empty()
    top = (ev.groupby(["user_id", "top_category"])["w"].sum().reset_index()
           .sort_values(["user_id", "w", "top_category"], ascending=[True, False, True]).groupby("user_id").head(1))
    per_cat = (tables.session_pool(cfg.n_candidates // 6) if tables is not None else
               available.sort_values(["activity", "item_id"], ascending=[False, True])
               .groupby("top_category").head(max(1, cfg.n_candidates // 6)))
    out = top[["user_id", "top_category"]].merge(per_cat[["item_id", "top_category", "activity"]], on="top_category")
    if out.empty:
        return _empty()
    out["recall_score"] = _norm(out["activity"].astype("float64"), out["user_id"])
    out["source"] = "fresh-session"
    out["anchor_item_id"] = pd.NA
    out["hint"] = "more from " + out["top_category"].astype(str) + ", which you are browsing now"
    return out[HINT_COLUMNS]


def query_tokens(query: str) -> list[str]:
    """Lower-case words of a query; CJK runs split into characters (titles may be Chinese)."""
    out: list[str] = []
    for w in _WORD.findall(str(query).lower()):
        out.extend(list(w) if _CJK.search(w) else ([w] if len(w) > 1 else []))
    return list(dict.fromkeys(out))


def _match(query: str, item_text: pd.Series, n: int) -> pd.Series:
    """Share of the query's words found in each item's text: the best ``n`` items, best first."""
    toks = query_tokens(query)
    if not toks:
        return pd.Series(dtype="float64")
    hits = sum(item_text.str.contains(t, regex=False).astype("float64") for t in toks) / len(toks)
    return hits[hits > 0].sort_values(ascending=False, kind="stable").head(n)


def search_match(fresh: pd.DataFrame, item_text: pd.Series, cfg: FreshParams, *,
                 tables: RunTables | None = None) -> pd.DataFrame:
    """Items whose text contains the words of a fresh query; score = share of the query's words found.

    ``item_text`` is lower-case text (title and category) indexed by available item_id; with ``tables``
    (the live run's) a query's matches are computed once per live run.
    """
    ev = fresh[(fresh["event_type"] == "search") & fresh["query"].notna()]
    if ev.empty or item_text.empty:
        return _empty()
    ev = ev.sort_values(["ts", "event_id"], kind="stable").drop_duplicates(["user_id", "query"], keep="last")
    # Each distinct query is matched once; its matches are repeated for every user who searched it.
    codes, queries = pd.factorize(ev["query"].to_numpy(dtype=object))
    matches = [tables.query_matches(q, cfg.n_candidates // 3) if tables is not None
               else _match(q, item_text, cfg.n_candidates // 3) for q in queries]
    sizes = np.array([len(m) for m in matches], dtype="int64")[codes]
    if not sizes.sum():
        return _empty()
    hints = np.array([f"matches your search {_quote(q)}" for q in queries], dtype=object)
    out = pd.DataFrame({"user_id": np.repeat(ev["user_id"].to_numpy(), sizes),
                        "item_id": np.concatenate([matches[c].index.to_numpy(dtype="int64") for c in codes]),
                        "source": "fresh-search",
                        "recall_score": np.concatenate([matches[c].to_numpy(dtype="float64") for c in codes]),
                        "anchor_item_id": pd.NA, "hint": np.repeat(hints[codes], sizes)})
    return out.sort_values(["user_id", "item_id", "recall_score"], ascending=[True, True, False]).drop_duplicates(
        ["user_id", "item_id"])


def search_text(available: pd.DataFrame) -> pd.Series:
    """Lower-case ``title category`` per available item, for :func:`search_match`."""
    title = available["title"].fillna("") if "title" in available else pd.Series("", index=available.index)
    cat = available["category"].fillna("") if "category" in available else pd.Series("", index=available.index)
    text = (title.astype(str) + " " + cat.astype(str).str.replace(">", " ", regex=False)).str.lower()
    return pd.Series(text.to_numpy(), index=available["item_id"].to_numpy(dtype="int64"))
