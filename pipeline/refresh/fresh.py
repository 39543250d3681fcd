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

from pipeline.frames import pair_index
from pipeline.recall.candidates import SOURCES, ItemTables, RecallConfig, generate_candidates, item_tables
from pipeline.rerank import (
    RerankConfig,
    caps_every_seen_item,
    fill_empty_lists,
    finalize_lists,
    repurchasable_categories,
    split_by_arm,
)
from pipeline.rerank.rules import purchase_exclusions

#: Priors of the fresh sources, on the scale of ``candidates.SOURCE_PRIOR`` (retarget 1.0, item-cf 0.8,
#: category 0.35, popularity 0.15): fresh intent outranks long-term item-cf, never the re-targeted item itself.
FRESH_PRIOR = {"fresh-cf": 0.9, "fresh-search": 0.85, "fresh-session": 0.45}
FRESH_TYPES = ("view", "click", "add_to_cart", "purchase")
_VERB = {"view": "viewed", "click": "viewed", "add_to_cart": "added to your cart", "purchase": "bought"}
_WORD = re.compile(r"\w+", re.UNICODE)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
HINT_COLUMNS = ["user_id", "item_id", "source", "recall_score", "anchor_item_id", "hint"]
#: Every source name a refresh candidate may carry, in sort order (ties of p_recall go to the first).
_ALL_SOURCES = sorted({*SOURCES, *FRESH_PRIOR})
#: Columns finalize_lists reads (the ranker reads all of them, the re-rank only these).
_FINAL_COLUMNS = ["user_id", "item_id", "source", "p_recall", "anchor_item_id", "p_rank", "score_retarget"]
#: Fresh search queries whose matches a LiveTables remembers (queries repeat; the item texts do not change).
QUERY_MEMO = 2048


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


@dataclass
class LiveTables:
    """Everything a refresh derives from the live run's items and neighbours alone: built once per live
    run (``pipeline.refresh.live`` caches it with the run) instead of once per batch. Derived tables that
    depend on the config are memoised by the config value that shapes them."""

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


def live_tables(item_feats: pd.DataFrame, neighbours: pd.DataFrame, item_text: pd.Series | None = None
                ) -> LiveTables:
    """The :class:`LiveTables` of a run's item features (with titles) and neighbours."""
    items = item_tables(item_feats)
    titles = item_feats.set_index("item_id")["title"] if "title" in item_feats else pd.Series(dtype=object)
    return LiveTables(item_feats=item_feats, neighbours=neighbours, items=items, titles=titles,
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


def fresh_cf(fresh: pd.DataFrame, neighbours: pd.DataFrame, titles: pd.Series, cfg: FreshConfig, *,
             tables: LiveTables | None = None) -> pd.DataFrame:
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


def session_intent(fresh: pd.DataFrame, available: pd.DataFrame, cfg: FreshConfig, *,
                   tables: LiveTables | None = None) -> pd.DataFrame:
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


def search_match(fresh: pd.DataFrame, item_text: pd.Series, cfg: FreshConfig, *,
                 tables: LiveTables | None = None) -> pd.DataFrame:
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


def build_lists(users: np.ndarray, history: pd.DataFrame, batch_ids: np.ndarray, neighbours: pd.DataFrame,
                item_feats: pd.DataFrame, now: datetime, cfg: FreshConfig,
                p_rank: Callable[[pd.DataFrame, pd.DataFrame, pd.DataFrame, datetime], pd.Series] | None = None,
                item_text: pd.Series | None = None, recall_kwargs: dict | None = None,
                tables: LiveTables | None = None, rerank: RerankConfig | None = None,
                rules: pd.DataFrame | None = None, variants: dict | None = None,
                variant_salt: str = "rerank-ab") -> pd.DataFrame:
    """Each of ``users``' new list: ``user_id, rank, item_id, score, reason, anchor_item_id, source``.

    ``history`` holds the users' clean events up to the batch's end (``event_id, user_id, item_id,
    event_type, query, session_id, quantity, ts``); ``item_feats`` the live run's item features with titles;
    ``recall_kwargs`` optional inputs of generate_candidates (``factors``, ``text_index``). ``tables``: the
    live run's :class:`LiveTables` of ``item_feats`` and ``neighbours`` (built here when absent; the lists
    are the same either way). ``rerank``, ``rules``, ``variants`` and ``variant_salt``: the re-rank the nightly
    run applies (settings, ``recsys.rules`` and ``recsys.repurchase_windows``), so an overlay list keeps the
    merchandisers' rules and the user's A/B arm.
    """
    users = np.asarray(users, dtype="int64")
    tables = tables if tables is not None else live_tables(item_feats, neighbours, item_text)
    rcfg = RecallConfig(as_of=now, n_candidates=cfg.n_candidates, recent_days=cfg.recent_days,
                        weights=cfg.weights, half_life_days=cfg.half_life_days,
                        repurchasable=repurchasable_categories(rerank, variants, also=RecallConfig.repurchasable))
    # All of generate_candidates' columns stay (per-source scores, ``sources``): the ranker reads them.
    base = generate_candidates(users, history, tables.neighbours, tables.item_feats, rcfg, tables=tables.items,
                               **(recall_kwargs or {}))
    fresh = fresh_events(history, batch_ids, now, cfg.fresh_minutes)
    extra = [f for f in (fresh_cf(fresh, tables.neighbours, tables.titles, cfg, tables=tables),
                         session_intent(fresh, tables.available, cfg, tables=tables),
                         search_match(fresh, tables.item_text, cfg, tables=tables)) if len(f)]
    cand, hint = base, np.full(len(base), None, dtype=object)
    if extra:
        ex = pd.concat(extra, ignore_index=True)
        ex["p_recall"] = ex["source"].map(FRESH_PRIOR) * (0.5 + 0.5 * ex["recall_score"].astype("float64"))
        hint = np.concatenate([hint, ex["hint"].to_numpy(dtype=object)])
        ex = ex.reindex(columns=base.columns)
        for col in base.columns:
            if col.startswith("score_"):
                ex[col] = 0.0  # per-source scores of the nightly sources, which did not propose these rows
        if "score_retarget" in base:
            ex["score_retarget"] = _retarget_scores(base, ex)
        if "sources" in ex:
            ex["sources"] = ex["source"]
        cand = pd.concat([base, ex], ignore_index=True) if len(base) else ex
    ev = history[history["item_id"].notna()]
    bought = ev.loc[ev["event_type"] == "purchase", ["user_id", "item_id", "ts"]].astype(
        {"user_id": "int64", "item_id": "int64"})
    # bought items stay out, except those past their category's repurchase window in the user's A/B arm
    excluded = _purchase_exclusions_by_arm(bought, tables.item_feats, now, rerank, variants, variant_salt)
    keep = _best_candidates(cand, users, tables.items.available_ids, excluded, cfg.n_candidates)
    hint = hint[keep]
    cand = cand.iloc[keep].reset_index(drop=True)
    cand = cand.astype({"user_id": "int64", "item_id": "int64", "p_recall": "float64"})
    cand["anchor_item_id"] = cand["anchor_item_id"].astype("Int64")
    # The ranker sees events strictly before as_of; a second of slack keeps events stamped "now" in view.
    # One call for the whole batch: the champion scores every candidate of every user in one forward pass.
    cand["p_rank"] = (p_rank(cand, history, tables.item_feats, pd.Timestamp(now) + pd.Timedelta(seconds=1))
                      if p_rank is not None and len(cand) else 1.0)
    final = [c for c in _FINAL_COLUMNS if c in cand.columns]  # the re-rank reads these; less to copy per step
    opts = {"top_n": cfg.top_n, "bought": bought, "config": rerank, "variants": variants or None,
            "variant_salt": variant_salt, "rules": rules, "as_of": now, "seen": None}
    if caps_every_seen_item(rerank, variants):
        opts["seen"] = ev[["user_id", "item_id"]].drop_duplicates()
    lists, _ = fill_empty_lists(finalize_lists(cand[final], tables.item_feats, **opts), users, tables.item_feats,
                                **opts)
    hints = cand[["user_id", "item_id"]].assign(hint=hint)
    lists = lists.merge(hints, on=["user_id", "item_id"], how="left")
    fresh_src = lists["source"].isin(list(FRESH_PRIOR)) & lists["hint"].notna()
    lists.loc[fresh_src, "reason"] = lists.loc[fresh_src, "hint"]
    return lists.drop(columns="hint")


def _purchase_exclusions_by_arm(bought: pd.DataFrame, item_feats: pd.DataFrame, now: datetime,
                                rerank: RerankConfig | None, variants: dict | None, salt: str) -> pd.DataFrame:
    """(user_id, item_id) pairs each buyer's own A/B arm still excludes: an arm with its own repurchase
    windows must see the items they bring back among the candidates, as the nightly's re-rank does."""
    parts = [purchase_exclusions(bought[bought["user_id"].isin(mine)], item_feats, as_of=now,
                                 windows=cfg.repurchase_days)
             for _, cfg, mine in split_by_arm(bought["user_id"], rerank, variants, salt)]
    return pd.concat(parts, ignore_index=True) if parts else purchase_exclusions(bought, item_feats, as_of=now)


def _retarget_scores(base: pd.DataFrame, ex: pd.DataFrame) -> np.ndarray:
    """``score_retarget`` of ``ex``'s (user, item) pairs in ``base`` (0 where retarget did not propose them):
    a fresh row that wins the dedupe over its retarget row still counts under the re-rank's retarget cap."""
    rt = base.loc[base["score_retarget"].fillna(0.0) > 0, ["user_id", "item_id", "score_retarget"]]
    if rt.empty or ex.empty:
        return np.zeros(len(ex))
    rt = rt.groupby(["user_id", "item_id"])["score_retarget"].max()
    key = pair_index(ex)
    return rt.reindex(key).fillna(0.0).to_numpy(dtype="float64")


def _best_candidates(cand: pd.DataFrame, users: np.ndarray, available_ids: np.ndarray, bought: pd.DataFrame,
                     n: int) -> np.ndarray:
    """Row positions of each user's best ``n`` candidates: only ``users``, available and not bought items;
    one row per (user, item), the highest p_recall (ties: the source first by name, then the earlier row);
    ordered by user, p_recall desc, item id. Integer keys and one stable lexsort each, no string sort."""
    if cand.empty:
        return np.zeros(0, dtype="int64")
    u = cand["user_id"].to_numpy(dtype="int64")
    i = cand["item_id"].to_numpy(dtype="int64")
    p = cand["p_recall"].to_numpy(dtype="float64")
    ok = np.isin(u, users) & np.isin(i, available_ids)
    if len(bought):
        span = int(max(i.max(), bought["item_id"].max())) + 1
        ok &= ~np.isin(u * span + i, bought["user_id"].to_numpy(dtype="int64") * span
                       + bought["item_id"].to_numpy(dtype="int64"))
    src = np.asarray(pd.Categorical(cand["source"], categories=_ALL_SOURCES).codes, dtype="int64")
    rows = np.flatnonzero(ok)
    rows = rows[np.lexsort((src[rows], -p[rows], i[rows], u[rows]))]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (u[rows][1:] != u[rows][:-1]) | (i[rows][1:] != i[rows][:-1])
    rows = rows[first]
    rows = rows[np.lexsort((i[rows], -p[rows], u[rows]))]
    ur = u[rows]
    starts = np.flatnonzero(np.r_[True, ur[1:] != ur[:-1]]) if len(rows) else np.zeros(0, dtype="int64")
    pos = np.arange(len(rows)) - np.repeat(starts, np.diff(np.append(starts, len(rows))))
    return rows[pos < n]


def search_text(available: pd.DataFrame) -> pd.Series:
    """Lower-case ``title category`` per available item, for :func:`search_match`."""
    title = available["title"].fillna("") if "title" in available else pd.Series("", index=available.index)
    cat = available["category"].fillna("") if "category" in available else pd.Series("", index=available.index)
    text = (title.astype(str) + " " + cat.astype(str).str.replace(">", " ", regex=False)).str.lower()
    return pd.Series(text.to_numpy(), index=available["item_id"].to_numpy(dtype="int64"))
