"""Recall from fresh behaviour and the final overlay lists (pure pandas, unit-tested without a database).

The nightly sources come from :func:`pipeline.recall.candidates.generate_candidates` over the user's
history up to the refresh; three sources read only the *fresh* events (the batch and the last
``fresh_minutes`` of the user's history), so a shopper who just looked at hiking boots sees boots now:

- ``fresh-cf``: neighbours (the live run's item neighbours) of just-viewed / clicked / carted / bought items;
- ``fresh-session``: popular items of the top-level category the fresh events concentrate on (session intent);
- ``fresh-search``: items whose title or category contains the words of a fresh search query.

When the live run has ALS factors, every refreshed user's vector is folded in from the current history
(the nightly vector predates the fresh events), through generate_candidates' own fold-in of unknown users.

All candidates are merged (highest ``p_recall`` per item wins), scored (ranker probability, or 1.0 when
no champion model exists) and re-ranked by :func:`pipeline.rerank.finalize_lists`, the nightly rules; the
fresh sources then get reasons that name the fresh item or query.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from pipeline.recall.candidates import RecallConfig, generate_candidates
from pipeline.rerank import finalize_lists

#: Priors of the fresh sources, on the scale of ``candidates.SOURCE_PRIOR`` (retarget 1.0, item-cf 0.8,
#: category 0.35, popularity 0.15): fresh intent outranks long-term item-cf, never the re-targeted item itself.
FRESH_PRIOR = {"fresh-cf": 0.9, "fresh-search": 0.85, "fresh-session": 0.45}
FRESH_TYPES = ("view", "click", "add_to_cart", "purchase")
_VERB = {"view": "viewed", "click": "viewed", "add_to_cart": "added to your cart", "purchase": "bought"}
_WORD = re.compile(r"\w+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
HINT_COLUMNS = ["user_id", "item_id", "source", "recall_score", "anchor_item_id", "hint"]


@dataclass(frozen=True)
class FreshConfig:
    """How a refresh rebuilds a user's list."""

    top_n: int = 50
    n_candidates: int = 300
    recent_days: int = 7
    #: Minutes of a user's latest events that count as "fresh" besides the batch itself.
    fresh_minutes: int = 60
    #: Neighbours taken per fresh item.
    neighbours_per_item: int = 20
    weights: dict[str, float] = field(default_factory=lambda: {"view": 1.0, "click": 2.0, "add_to_cart": 4.0,
                                                               "purchase": 8.0})
    half_life_days: dict[str, float] = field(default_factory=dict)


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


def fresh_cf(fresh: pd.DataFrame, neighbours: pd.DataFrame, titles: pd.Series, cfg: FreshConfig) -> pd.DataFrame:
    """Neighbours of the fresh items; the anchor is the fresh item that contributes most."""
    ev = fresh[fresh["item_id"].notna() & fresh["event_type"].isin(FRESH_TYPES)]
    if ev.empty or neighbours.empty:
        return _empty()
    ev = ev.assign(item_id=ev["item_id"].astype("int64"), w=ev["event_type"].map(cfg.weights).fillna(1.0))
    ev = ev.sort_values(["ts", "event_id"], kind="stable")
    per_item = ev.groupby(["user_id", "item_id"], sort=False).agg(w=("w", "sum"), last_type=("event_type", "last"))
    per_item = per_item.reset_index()
    nb = (neighbours.sort_values(["item_id", "score", "similar_item_id"], ascending=[True, False, True])
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
    verbs = agg["last_type"].map(_VERB).fillna("viewed")
    agg["hint"] = [("bought together with " if v == "bought" else f"because you just {v} ") + _quote(t)
                   for v, t in zip(verbs, agg["anchor_item_id"].map(titles), strict=True)]
    return agg[HINT_COLUMNS]


def session_intent(fresh: pd.DataFrame, available: pd.DataFrame, cfg: FreshConfig) -> pd.DataFrame:
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
    per_cat = (available.sort_values(["activity", "item_id"], ascending=[False, True])
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


def search_match(fresh: pd.DataFrame, item_text: pd.Series, cfg: FreshConfig) -> pd.DataFrame:
    """Items whose text contains the words of a fresh query; score = share of the query's words found.

    ``item_text`` is lower-case text (title and category) indexed by available item_id.
    """
    ev = fresh[(fresh["event_type"] == "search") & fresh["query"].notna()]
    if ev.empty or item_text.empty:
        return _empty()
    ev = ev.sort_values(["ts", "event_id"], kind="stable").drop_duplicates(["user_id", "query"], keep="last")
    matches: dict[str, pd.Series] = {}
    frames = []
    for user_id, query in zip(ev["user_id"].to_numpy(), ev["query"].to_numpy(), strict=True):
        if query not in matches:
            toks = query_tokens(query)
            if not toks:
                matches[query] = pd.Series(dtype="float64")
                continue
            hits = sum(item_text.str.contains(t, regex=False).astype("float64") for t in toks) / len(toks)
            hits = hits[hits > 0].sort_values(ascending=False, kind="stable")
            matches[query] = hits.head(cfg.n_candidates // 3)
        m = matches[query]
        if len(m):
            frames.append(pd.DataFrame({"user_id": user_id, "item_id": m.index.to_numpy(dtype="int64"),
                                        "source": "fresh-search", "recall_score": m.to_numpy(),
                                        "anchor_item_id": pd.NA, "hint": f"matches your search {_quote(query)}"}))
    if not frames:
        return _empty()
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["user_id", "item_id", "recall_score"], ascending=[True, True, False]).drop_duplicates(
        ["user_id", "item_id"])


def build_lists(users: np.ndarray, history: pd.DataFrame, batch_ids: np.ndarray, neighbours: pd.DataFrame,
                item_feats: pd.DataFrame, now: datetime, cfg: FreshConfig,
                p_rank: Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame, datetime], pd.Series] | None = None,
                item_text: pd.Series | None = None, recall_kwargs: dict | None = None) -> pd.DataFrame:
    """Each of ``users``' new list: ``user_id, rank, item_id, score, reason, anchor_item_id, source``.

    ``history`` holds the users' clean events up to the batch's end (``event_id, user_id, item_id,
    event_type, query, session_id, quantity, ts``); ``item_feats`` the live run's item features with titles;
    ``recall_kwargs`` optional inputs of generate_candidates (``factors``, ``text_index``).
    """
    users = np.asarray(users, dtype="int64")
    rcfg = RecallConfig(as_of=now, n_candidates=cfg.n_candidates, recent_days=cfg.recent_days,
                        weights=cfg.weights, half_life_days=cfg.half_life_days)
    # All of generate_candidates' columns stay (per-source scores, ``sources``): the ranker reads them.
    base = generate_candidates(users, history, neighbours, item_feats, rcfg, **(recall_kwargs or {}))
    available = item_feats.loc[item_feats["in_stock"] & item_feats["visible"]]
    titles = item_feats.set_index("item_id")["title"] if "title" in item_feats else pd.Series(dtype=object)
    if item_text is None:
        item_text = search_text(available)
    fresh = fresh_events(history, batch_ids, now, cfg.fresh_minutes)
    extra = [f for f in (fresh_cf(fresh, neighbours, titles, cfg), session_intent(fresh, available, cfg),
                         search_match(fresh, item_text, cfg)) if len(f)]
    cand = base.assign(hint=pd.NA)
    if extra:
        ex = pd.concat(extra, ignore_index=True)
        ex["p_recall"] = ex["source"].map(FRESH_PRIOR) * (0.5 + 0.5 * ex["recall_score"].astype("float64"))
        ex = ex.reindex(columns=cand.columns)
        for col in cand.columns:
            if col.startswith("score_"):
                ex[col] = 0.0  # per-source scores of the nightly sources, which did not propose these rows
        if "sources" in ex:
            ex["sources"] = ex["source"]
        cand = pd.concat([cand, ex], ignore_index=True)
    cand = cand[cand["user_id"].isin(users) & cand["item_id"].isin(available["item_id"])]
    ev = history[history["item_id"].notna()]
    bought = ev.loc[ev["event_type"] == "purchase", ["user_id", "item_id"]].astype("int64").drop_duplicates()
    if len(bought):
        cand = cand.merge(bought.assign(_b=True), on=["user_id", "item_id"], how="left")
        cand = cand[cand["_b"].isna()].drop(columns="_b")
    cand = cand.astype({"user_id": "int64", "item_id": "int64", "p_recall": "float64"})
    cand = (cand.sort_values(["user_id", "item_id", "p_recall", "source"], ascending=[True, True, False, True])
            .drop_duplicates(["user_id", "item_id"], keep="first"))
    cand = (cand.sort_values(["user_id", "p_recall", "item_id"], ascending=[True, False, True])
            .groupby("user_id").head(cfg.n_candidates).reset_index(drop=True))
    cand["anchor_item_id"] = cand["anchor_item_id"].astype("Int64")
    # The ranker sees events strictly before as_of; a second of slack keeps events stamped "now" in view.
    cand["p_rank"] = (p_rank(cand, history, item_feats, pd.Timestamp(now) + pd.Timedelta(seconds=1))
                      if p_rank is not None and len(cand) else 1.0)
    lists = finalize_lists(cand, item_feats, top_n=cfg.top_n, bought=bought)
    hints = cand[["user_id", "item_id", "hint"]]
    lists = lists.merge(hints, on=["user_id", "item_id"], how="left")
    fresh_src = lists["source"].isin(list(FRESH_PRIOR)) & lists["hint"].notna()
    lists.loc[fresh_src, "reason"] = lists.loc[fresh_src, "hint"]
    return lists.drop(columns="hint")


def search_text(available: pd.DataFrame) -> pd.Series:
    """Lower-case ``title category`` per available item, for :func:`search_match`."""
    title = available["title"].fillna("") if "title" in available else pd.Series("", index=available.index)
    cat = available["category"].fillna("") if "category" in available else pd.Series("", index=available.index)
    text = (title.astype(str) + " " + cat.astype(str).str.replace(">", " ", regex=False)).str.lower()
    return pd.Series(text.to_numpy(), index=available["item_id"].to_numpy(dtype="int64"))
