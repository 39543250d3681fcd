"""Candidate generation and merge for one shard of users (pure pandas/numpy; runs on a Dask worker).

Sources, each with a score in [0, 1] and, where one exists, the anchor item that caused it:

- ``retarget``: viewed or carted recently, not bought;
- ``item-cf``: neighbours of the user's strongest items (``neighbours.parquet``);
- ``seq``: what shoppers picked next after the user's last items (``followers.parquet``, sequential item-kNN of
  :mod:`pipeline.recall.sequential`); the anchor is the item it followed;
- ``als``: the user's ALS factors against every item (folded in from the history when the user is new to
  the factors);
- ``content``: nearest items in embedding space to the user's strongest items (reaches cold items);
- ``search``: items whose text matches the user's recent search queries;
- ``category``: the popular items of the user's own shelves (full category paths), weighted by each
  shelf's share of the user's decayed history; ``trending``: trending in the user's favourite top-level
  categories (a new user gets the best of every top-level category and the trending of every one,
  interleaved; the first is labelled ``popularity`` for them);
- ``popularity``: the fallback that guarantees every user, a brand-new one included, a full list.

The merge keeps one row per (user, item): ``source`` / ``anchor_item_id`` from the strongest source,
``sources`` lists every source that proposed it, ``score_<source>`` holds each source's score (0 when
absent; ranker features), and ``p_recall`` is the noisy-or of the sources' calibrated probabilities
``prior * (0.5 + 0.5 * score)``. Purchased items are filtered unless their top-level category is
repurchasable; out-of-stock and invisible items never appear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.errors import PipelineError
from pipeline.features.items import decayed_weight
from pipeline.recall.popularity import popular_table, top_per_category

if TYPE_CHECKING:
    from pipeline.recall.content import ContentIndex
    from pipeline.recall.factors import Factors
    from pipeline.recall.text import TextIndex

SOURCES: tuple[str, ...] = ("retarget", "item-cf", "seq", "als", "search", "content", "category", "trending",
                            "popularity")
# All-time popularity above trending: on short histories "trending" is mostly noise from a few recent events.
# seq at item-cf's 0.8: on Amazon Beauty's leave-one-out validation item the nightly's lists reach nDCG@10 0.0394
# (0.0095 without the source; 0.0503 at 1.0, profiles/purchase-sequences.env), while 1.0 costs ml-100k's inner
# split 0.1823 -> 0.1214 (0.8: 0.1632) and crowds a refresh's fresh search matches out (research/RESULTS.md).
SOURCE_PRIOR = {"retarget": 1.0, "item-cf": 0.8, "seq": 0.8, "als": 0.7, "search": 0.6, "content": 0.5,
                "category": 0.35, "trending": 0.2, "popularity": 0.25}
CAND_COLUMNS = ["user_id", "item_id", "source", "recall_score", "anchor_item_id"]
SCORE_COLUMNS = [f"score_{s.replace('-', '_')}" for s in SOURCES]
OUT_COLUMNS = [*CAND_COLUMNS, "p_recall", "sources", *SCORE_COLUMNS]


@dataclass(frozen=True)
class RecallConfig:
    as_of: datetime
    n_candidates: int = 300
    recent_days: int = 7
    history_items: int = 20
    weights: dict[str, float] = field(default_factory=dict)
    half_life_days: dict[str, float] = field(default_factory=dict)
    #: What event ages count from: ``as_of`` or ``user_last`` (see pipeline.features.items.decay_factor).
    decay_from: str = "as_of"
    #: Overrides of SOURCE_PRIOR (a source's weight in p_recall, the recall-only order; RERANK_RECALL_PRIORS).
    priors: dict[str, float] = field(default_factory=dict)
    #: Top-level categories whose bought items stay candidates (consumables); the re-rank's repurchase windows
    #: decide when they return. The nightly and the refresh add every category a window names
    #: (pipeline.rerank.repurchasable_categories), so a merchandiser's window is never pre-empted here.
    repurchasable: tuple[str, ...] = ("Grocery", "Beauty")
    #: Most candidates one source may contribute per user (popularity fills up to ``n_candidates``).
    per_source: dict[str, int] = field(default_factory=lambda: {
        "retarget": 50, "item-cf": 150, "seq": 100, "als": 150, "search": 50, "content": 100, "category": 100,
        "trending": 50})
    #: Recent search queries per user used by search-intent recall; lowest text similarity kept.
    search_queries: int = 5
    search_min_similarity: float = 0.1
    #: The ``seq`` source reads each user's last ``seq_last`` items, the most recent weighted 1 and each older
    #: one ``seq_recency ** m`` (pipeline.recall.sequential.SeqParams).
    seq_last: int = 3
    seq_recency: float = 0.5
    #: Favourite top-level categories used by ``category`` and ``trending``.
    favourite_categories: int = 2
    #: ``category``'s chance that a visit goes to one of the user's own shelves rather than where the shop's
    #: visits go (:func:`_leaf_affinity`); 1 keeps the user's shelves only.
    category_blend: float = 0.5
    #: Share of ``n_candidates`` each source's best items are guaranteed in the merge, whatever their
    #: p_recall (so content keeps cold items in the list and no single strong source crowds out the rest).
    reserve: dict[str, float] = field(default_factory=lambda: {
        "retarget": 0.1, "item-cf": 0.15, "seq": 0.15, "als": 0.15, "search": 0.05, "content": 0.1, "category": 0.05,
        "trending": 0.05})


@dataclass
class ItemTables:
    """What candidate generation derives from the item features alone, never from the users: built once per
    item snapshot and reused for every call on it (the refresh keeps one per live nightly run, so a batch
    pays for its users, not for re-deriving the popularity and per-category tables).

    ``per_category`` and ``repurchasable_ids`` are memoised by their arguments (the config's quotas)."""

    available: pd.DataFrame
    #: Sorted item ids of ``available``.
    available_ids: np.ndarray
    #: popular_table(available) and the same rows by popularity desc, item id asc (the fallback's order).
    pop: pd.DataFrame
    pop_order: pd.DataFrame
    _memo: dict = field(default_factory=dict, repr=False)

    def per_category(self, col: str, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(top ``n`` per category by ``col`` with ``s`` = score / category max, the round-robin mix of
        them for users without history)."""
        key = ("cat", col, n)
        if key not in self._memo:
            per_cat = top_per_category(self.pop, col, n)
            if len(per_cat):
                mx = per_cat.groupby("top_category")[col].transform("max")
                per_cat = per_cat.assign(s=per_cat[col] / mx.where(mx > 0, 1.0))
            mix = per_cat.sort_values(["cat_rank", col, "item_id"], ascending=[True, False, True]).head(n)
            self._memo[key] = (per_cat, mix)
        return self._memo[key]

    def shelves(self, n: int) -> pd.DataFrame:
        """Each leaf category's top ``n`` items (item_id, category, in_cat = share of the shelf's popularity).

        A user's top n within one shelf are that shelf's top n by in_cat (their share is one factor for the
        whole shelf), so only those can reach the user's top n: the category source merges users x shelves x n
        rows, never users x the items of their shelves (one coarse category of 48k items made it 40M rows for
        800 users)."""
        key = ("shelf", n)
        if key not in self._memo:
            pop = self.pop
            shelf = pop.loc[pop["popularity"] > 0, ["item_id", "category", "popularity"]]
            shelf = shelf.assign(in_cat=shelf["popularity"] / shelf.groupby("category")["popularity"].transform("sum"))
            shelf = (shelf.sort_values(["category", "in_cat", "item_id"], ascending=[True, False, True],
                                       kind="stable").groupby("category", sort=False).head(n))
            self._memo[key] = shelf[["item_id", "category", "in_cat"]]
        return self._memo[key]

    def shop_shares(self, n: int) -> tuple[np.ndarray, pd.Series]:
        """(the shop's top ``n`` item ids, each available item's share of the shop's popularity by item id):
        the shop term of the ``category`` source, the same for every user."""
        key = ("shop", n)
        if key not in self._memo:
            pos = self.pop.set_index("item_id")["popularity"].clip(lower=0)
            share = pos / max(float(pos.sum()), 1e-12)
            self._memo[key] = (self.pop_order["item_id"].head(n).to_numpy("int64"), share)
        return self._memo[key]

    def repurchasable_ids(self, categories: tuple[str, ...]) -> np.ndarray:
        key = ("rep", tuple(categories))
        if key not in self._memo:
            a = self.available
            self._memo[key] = a.loc[a["top_category"].isin(list(categories)), "item_id"].to_numpy(dtype="int64")
        return self._memo[key]


def item_tables(item_feats: pd.DataFrame) -> ItemTables:
    """The :class:`ItemTables` of an item-features frame (item_id, in_stock, visible, top_category, activity,
    optional recent_events / trend)."""
    available = item_feats.loc[item_feats["in_stock"].astype(bool) & item_feats["visible"].astype(bool)]
    pop = popular_table(available)
    return ItemTables(available=available, available_ids=np.unique(available["item_id"].to_numpy(dtype="int64")),
                      pop=pop, pop_order=pop.sort_values(["popularity", "item_id"], ascending=[False, True]))


def _norm(s: pd.Series, by: pd.Series) -> pd.Series:
    """Scale scores to (0, 1] within each user."""
    top = s.groupby(by).transform("max")
    return (s / top.where(top > 0, 1.0)).fillna(0.0)


def user_history(events: pd.DataFrame, cfg: RecallConfig) -> pd.DataFrame:
    """(user, item) -> decayed weight, last ts, last event type, bought flag."""
    ev = events[events["item_id"].notna() & (events["event_type"] != "search")].copy()
    if ev.empty:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="int64"),
                             "weight": pd.Series(dtype="float64"), "last_ts": pd.Series(dtype="datetime64[us, UTC]"),
                             "last_type": pd.Series(dtype="object"), "bought": pd.Series(dtype="bool")})
    ev["item_id"] = ev["item_id"].astype("int64")
    ev["w"] = decayed_weight(ev, cfg.as_of, cfg.weights, cfg.half_life_days, cfg.decay_from)
    ev["_p"] = ev["event_type"] == "purchase"
    sort = ["ts", "event_id"] if "event_id" in ev.columns else ["ts"]
    ev = ev.sort_values(sort, kind="stable")
    g = ev.groupby(["user_id", "item_id"], sort=True)
    hist = g.agg(weight=("w", "sum"), last_ts=("ts", "max"), last_type=("event_type", "last"), bought=("_p", "any"))
    return hist.reset_index()


def _frame(users: np.ndarray, items: np.ndarray, source: str, score: np.ndarray, anchor: object = pd.NA
           ) -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.asarray(users, dtype="int64"), "item_id": np.asarray(items, dtype="int64"),
                         "source": source, "recall_score": np.asarray(score, dtype="float64"),
                         "anchor_item_id": anchor})


def _top_per_user(df: pd.DataFrame, n: int) -> pd.DataFrame:
    """Each user's ``n`` best rows by score (ties: item id, then row order), sorted so; one lexsort."""
    u = df["user_id"].to_numpy(dtype="int64")
    order = np.lexsort((df["item_id"].to_numpy(dtype="int64"), -df["recall_score"].to_numpy(dtype="float64"), u))
    rank = np.arange(len(order)) - np.maximum.accumulate(
        np.where(np.r_[True, u[order][1:] != u[order][:-1]], np.arange(len(order)), 0)) if len(order) else order
    return df.iloc[order[rank < n]]


def itemcf_source(hist: pd.DataFrame, neighbours: pd.DataFrame, cfg: RecallConfig, n: int) -> pd.DataFrame | None:
    """Neighbours of each user's strongest items; score = sum of weight x similarity; anchor = top voter."""
    if hist.empty or neighbours.empty:
        return None
    strongest = (hist.sort_values(["user_id", "weight", "item_id"], ascending=[True, False, True])
                 .groupby("user_id").head(cfg.history_items))
    pairs = strongest[["user_id", "item_id", "weight"]].merge(
        neighbours[["item_id", "similar_item_id", "score"]], on="item_id", how="inner")
    if pairs.empty:
        return None
    pairs["contrib"] = pairs["weight"] * pairs["score"]
    pairs = pairs.sort_values(["user_id", "similar_item_id", "contrib", "item_id"],
                              ascending=[True, True, False, True])
    agg = pairs.groupby(["user_id", "similar_item_id"], sort=False).agg(
        recall_score=("contrib", "sum"), anchor_item_id=("item_id", "first")).reset_index()
    agg = agg.rename(columns={"similar_item_id": "item_id"})
    agg["recall_score"] = _norm(agg["recall_score"], agg["user_id"])
    agg["source"] = "item-cf"
    return _top_per_user(agg[CAND_COLUMNS], n)


#: Users scored per ALS product: a fixed shape (see als_source) and a bounded (block x items) score matrix.
ALS_BLOCK = 256


def seq_source(events: pd.DataFrame, followers: pd.DataFrame, cfg: RecallConfig, n: int) -> pd.DataFrame | None:
    """Followers of each user's last items; score = sum of recency weight x follower score; anchor = the item
    whose followers contributed most (the item it "often comes after")."""
    from pipeline.recall.sequential import last_items

    if events.empty or followers is None or followers.empty:
        return None
    last = last_items(events, cfg.seq_last, cfg.seq_recency)
    pairs = last.merge(followers[["item_id", "next_item_id", "score"]], on="item_id", how="inner")
    if pairs.empty:
        return None
    pairs["contrib"] = pairs["weight"] * pairs["score"]
    pairs = pairs.sort_values(["user_id", "next_item_id", "contrib", "item_id"], ascending=[True, True, False, True])
    agg = pairs.groupby(["user_id", "next_item_id"], sort=False).agg(
        recall_score=("contrib", "sum"), anchor_item_id=("item_id", "first")).reset_index()
    return _top_per_user(_frame(agg["user_id"], agg["next_item_id"], "seq", _norm(agg["recall_score"], agg["user_id"]),
                                agg["anchor_item_id"].to_numpy()), n)


def als_source(users: np.ndarray, hist: pd.DataFrame, factors: Factors, n: int) -> pd.DataFrame | None:
    """Top-``n`` items by ALS score; users unknown to the factors but with a history are folded in."""
    import torch

    from pipeline.recall.factors import fold_in

    rows, known = factors.user_rows(users)
    U = np.zeros((len(users), factors.item_factors.shape[1]), np.float32)
    U[known] = factors.user_factors[rows[known]]
    new = users[~known]
    if len(new) and len(hist):
        h = hist[hist["user_id"].isin(new)]
        cols = np.searchsorted(factors.item_ids, h["item_id"].to_numpy())
        ok = (cols < len(factors.item_ids)) & (factors.item_ids[np.minimum(cols, len(factors.item_ids) - 1)]
                                               == h["item_id"].to_numpy())
        if ok.any():
            ur = np.searchsorted(users, h["user_id"].to_numpy()[ok])
            m = sp.csr_matrix((h["weight"].to_numpy(np.float32)[ok], (ur, cols[ok])),
                              shape=(len(users), len(factors.item_ids)))
            sub = np.flatnonzero(~known)
            reg, alpha = float(factors.meta.get("regularization", 20.0)), float(factors.meta.get("alpha", 1.0))
            U[sub] = fold_in(factors.fold_in_matrix(m[sub]), factors.item_factors, reg, alpha=alpha)
    active = np.flatnonzero(np.abs(U).sum(axis=1) > 0)
    kk = min(n, len(factors.item_ids))
    if not len(active) or kk < 1:
        return None
    # the users' seen items as (position in ``active``, factor column): masked in the score blocks, so each
    # block keeps only its users' ``n`` best unseen items instead of n + the longest history
    seen = hist[hist["user_id"].isin(users[active])]
    cols = np.searchsorted(factors.item_ids, seen["item_id"].to_numpy())
    known_item = cols < len(factors.item_ids)
    known_item[known_item] = factors.item_ids[cols[known_item]] == seen["item_id"].to_numpy()[known_item]
    seen_row = pd.Index(users[active]).get_indexer(seen["user_id"].to_numpy()[known_item])
    seen_col = cols[known_item]
    frames = []
    for start in range(0, len(active), ALS_BLOCK):
        block = active[start:start + ALS_BLOCK]
        # Every product has the same shape (zero rows pad the last block): BLAS picks its kernel by shape, so a
        # user's scores are the same whether it is scored alone or among thousands. Blocks also bound memory.
        Ub = np.zeros((ALS_BLOCK, U.shape[1]), np.float32)
        Ub[: len(block)] = U[block]
        scores = (Ub @ factors.item_factors.T)[: len(block)]
        mine = (seen_row >= start) & (seen_row < start + len(block))
        scores[seen_row[mine] - start, seen_col[mine]] = -np.inf
        # every item at least as good as the kk-th (ties included): which of equal scores a top-k keeps is
        # arbitrary; _top_per_user then breaks ties by item id. torch's top-k: half of np.partition's time.
        # One more than kk: where the next score is below the kk-th, the top kk are exactly those items; only
        # rows with a tie across that line scan every item (a pass over the whole catalogue per row).
        more = kk < scores.shape[1]
        top = torch.topk(torch.from_numpy(scores), kk + more, dim=1, sorted=True)
        vals, idx = top.values.numpy(), top.indices.numpy()
        kth = vals[:, kk - 1]
        tied = vals[:, kk] >= kth if more else np.ones(len(block), dtype=bool)
        r, c = np.nonzero(~tied[:, None] & (vals[:, :kk] > 0))
        c = idx[r, c]
        if tied.any():
            rt = np.flatnonzero(tied)
            sub = scores[rt]
            r2, c2 = np.nonzero((sub >= kth[rt, None]) & (sub > 0))
            r, c = np.concatenate([r, rt[r2]]), np.concatenate([c, c2])
        frames.append(_frame(users[block][r], factors.item_ids[c], "als", scores[r, c]))
    df = pd.concat(frames, ignore_index=True)
    df = df[df["recall_score"] > 0]
    df["recall_score"] = _norm(df["recall_score"], df["user_id"])
    return _top_per_user(df, n)


def search_source(events: pd.DataFrame, text_index: TextIndex, cfg: RecallConfig, n: int) -> pd.DataFrame | None:
    """Items whose text matches the user's recent queries (best query's cosine, decayed by query age)."""
    if "query" not in events.columns:
        return None
    since = pd.Timestamp(cfg.as_of) - pd.Timedelta(days=cfg.recent_days)
    q = events[(events["event_type"] == "search") & events["query"].notna() & (events["ts"] >= since)]
    if q.empty:
        return None
    # newest first; equal timestamps (day-granular imports) by event id, newest first: not by row order
    by = ["user_id", "ts", "event_id"] if "event_id" in q.columns else ["user_id", "ts", "query"]
    q = q.sort_values(by, ascending=[True, False, False], kind="stable").groupby("user_id").head(
        cfg.search_queries)
    # a query typed by many users is vectorised and matched once
    codes, distinct = pd.factorize(q["query"].astype(str).to_numpy(dtype=object))
    # Pruned per distinct query before it is copied to each user who typed it: a score is the cosine times a
    # factor <= 1, so cosines below the floor never qualify, and a query's items below its n-th best cosine
    # (ties kept) cannot reach a user's top n through that query.
    sims = text_index.top_matches(list(distinct), n, cfg.search_min_similarity)
    sims = sims[codes].tocoo()
    age = (pd.Timestamp(cfg.as_of) - q["ts"]).dt.total_seconds().to_numpy() / 86400.0
    decay = np.exp2(-np.clip(age, 0, None) / max(cfg.recent_days, 1))
    df = pd.DataFrame({"user_id": q["user_id"].to_numpy()[sims.row], "item_id": text_index.item_ids[sims.col],
                       "recall_score": sims.data * (0.5 + 0.5 * decay[sims.row])})
    df = df[df["recall_score"] >= cfg.search_min_similarity]
    if df.empty:
        return None
    df = df.groupby(["user_id", "item_id"], as_index=False)["recall_score"].max()
    df["source"], df["anchor_item_id"] = "search", pd.NA
    return _top_per_user(df[CAND_COLUMNS], n)


def content_source(hist: pd.DataFrame, index: ContentIndex, cfg: RecallConfig, n: int) -> pd.DataFrame | None:
    from pipeline.recall.content import content_candidates

    cc = content_candidates(hist, index, n=n, history_items=cfg.history_items)
    if cc.empty:
        return None
    cc["source"] = "content"
    return cc[CAND_COLUMNS]


def _leaf_affinity(hist: pd.DataFrame, tables: ItemTables, n: int, blend: float) -> pd.DataFrame | None:
    """``category`` for users with history: the chance that the user's next item is ``i``, when a visit goes
    to one of the user's own shelves with probability ``blend`` (shelf ``c`` in proportion to its share of the
    user's decayed history) and otherwise to a shelf the way the whole shop's visits go, and then to an item
    of that shelf in proportion to its popularity there:
    ``blend * share(u, c) * pop(i) / pop(c) + (1 - blend) * pop(i) / pop(shop)``.
    Candidates: the top ``n`` of the user's shelves and the shop's top ``n``; the user's top ``n`` kept."""
    pop = tables.pop
    if not len(hist) or "category" not in pop.columns:
        return None
    h = hist.merge(pop[["item_id", "category"]], on="item_id")
    aff = h.groupby(["user_id", "category"], sort=False)["weight"].sum().reset_index()
    aff["share"] = aff["weight"] / aff.groupby("user_id")["weight"].transform("sum")
    warm = aff[["user_id", "category", "share"]].merge(tables.shelves(n), on="category")
    if warm.empty and blend >= 1.0:
        return None
    shop_top, share_of = tables.shop_shares(n)
    # a shop row's own term is 0 even on one of the user's shelves: that shelf's top n, above, outrank it there
    rows = [pd.DataFrame({"user_id": warm["user_id"].to_numpy("int64"), "item_id": warm["item_id"].to_numpy("int64"),
                          "own": (warm["share"] * warm["in_cat"]).to_numpy("float64")})]
    if blend < 1.0 and len(shop_top):
        users = aff["user_id"].unique()
        rows.append(pd.DataFrame({"user_id": np.repeat(users, len(shop_top)),
                                  "item_id": np.tile(shop_top, len(users)), "own": 0.0}))
    c = pd.concat(rows, ignore_index=True).groupby(["user_id", "item_id"], sort=False)["own"].max().reset_index()
    if not len(c):
        return None
    raw = blend * c["own"] + (1.0 - blend) * share_of.reindex(c["item_id"]).fillna(0.0).to_numpy()
    return _top_per_user(_frame(c["user_id"], c["item_id"], "category", _norm(raw, c["user_id"])), n)


def category_sources(users: np.ndarray, hist: pd.DataFrame, tables: ItemTables, cfg: RecallConfig
                     ) -> list[pd.DataFrame]:
    """``category`` (see :func:`_leaf_affinity`) and ``trending`` (trending in the user's favourite top-level
    categories) for users with history; for users without, the best of every top-level category interleaved
    (round-robin by rank), so a new user sees the whole shop."""
    out = []
    n_cat, n_tr = cfg.per_source.get("category", 100), cfg.per_source.get("trending", 50)
    cats = tables.pop[["item_id", "top_category"]]
    hc = hist.merge(cats, on="item_id") if len(hist) else hist.assign(top_category=pd.Series(dtype="object"))
    fav = (hc.groupby(["user_id", "top_category"])["weight"].sum().reset_index()
           .sort_values(["user_id", "weight", "top_category"], ascending=[True, False, True])
           .groupby("user_id").head(cfg.favourite_categories))
    fav["fav_rank"] = fav.groupby("user_id").cumcount()
    cold = np.setdiff1d(np.asarray(users, dtype="int64"), fav["user_id"].to_numpy())
    covered = np.zeros(0, dtype="int64")
    if (leaf := _leaf_affinity(hist, tables, n_cat, cfg.category_blend)) is not None:
        out.append(leaf)
        covered = leaf["user_id"].unique()
    for source, col, n in (("category", "popularity", n_cat), ("trending", "trending", n_tr)):
        per_cat, mix = tables.per_category(col, n)
        if per_cat.empty:
            continue
        warm = fav.merge(per_cat, on="top_category")
        if source == "category":  # top-level favourites only for users whose own shelves sell nothing yet
            warm = warm[~warm["user_id"].isin(covered)]
        if len(warm):
            warm["recall_score"] = warm["s"] / (1.0 + warm["fav_rank"])  # the favourite category first
            out.append(_top_per_user(_frame(warm["user_id"], warm["item_id"], source, warm["recall_score"]), n))
        if len(cold):
            score = 1.0 / (1.0 + mix["cat_rank"].to_numpy())
            # for a user without history the best-of-every-category mix is their popularity list
            label = "popularity" if source == "category" else source
            out.append(_frame(np.repeat(cold, len(mix)), np.tile(mix["item_id"].to_numpy(), len(cold)), label,
                              np.tile(score, len(cold))))
    return out


_SOURCE_CODE = {s: i for i, s in enumerate(SOURCES)}
_PRIOR = np.array([SOURCE_PRIOR[s] for s in SOURCES], dtype="float64")
_NAMES = np.array(SOURCES, dtype=object)


def _codes(source: pd.Series) -> np.ndarray:
    """Source names -> their index in SOURCES, via the few distinct names (not a string map per row)."""
    cat = pd.Categorical(source, categories=list(SOURCES))
    codes = np.asarray(cat.codes, dtype="int64")
    if (codes < 0).any():
        unknown = sorted(set(source[codes < 0].astype(str)))
        raise PipelineError(f"candidate merge: unknown recall source(s) {unknown}",
                            f"a recall source must label its rows with one of {SOURCES}")
    return codes


def prior_vector(priors: dict[str, float] | None = None) -> np.ndarray:
    """Each source's prior in SOURCES order: SOURCE_PRIOR with ``priors``' overrides."""
    if not priors:
        return _PRIOR
    return np.array([priors.get(s_, SOURCE_PRIOR[s_]) for s_ in SOURCES], dtype="float64")


def source_masks(sources: pd.Series) -> np.ndarray:
    """The merge's ``sources`` ("item-cf|als") as a bit mask per row (bit k: SOURCES[k] proposed the item),
    mapped through the few distinct strings."""
    codes, names = pd.factorize(sources.astype("object").fillna(""))
    bits = np.array([sum(1 << _SOURCE_CODE[s_] for s_ in str(n).split("|") if s_) for n in names] or [0],
                    dtype="int64")
    return bits[codes] if len(codes) else np.zeros(0, dtype="int64")


def calibrated(score: np.ndarray) -> np.ndarray:
    """A source's score in [0, 1] as the factor of its prior in P_recall: ``0.5 + 0.5 * score``."""
    return 0.5 + 0.5 * np.clip(score, 0, 1)


def _log_miss(p: np.ndarray) -> np.ndarray:
    """log(1 - p), the noisy-or's addend per proposing source (a NaN adds nothing)."""
    return np.nan_to_num(np.log1p(-np.minimum(p, 1 - 1e-9)), nan=0.0)


def source_terms(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(rows, sources), source-major in memory: ``0.5 + 0.5 * score`` where the source proposed the row, else 0.
    Times a source's prior, its calibrated probability in :func:`_merge`'s noisy-or. ``scores``: the rows'
    ``SCORE_COLUMNS``; ``masks``: :func:`source_masks`."""
    out = np.zeros((len(SOURCES), len(masks)), dtype="float32")
    for k in range(len(SOURCES)):
        present = (masks >> k) & 1 == 1
        out[k, present] = calibrated(scores[present, k])
    return out.T


def source_logs(terms: np.ndarray, prior: float) -> np.ndarray:
    """One source's addend of the noisy-or in log space (``terms``: its column of :func:`source_terms`)."""
    return _log_miss(terms.astype("float64") * prior)


def noisy_or(terms: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """p_recall of each row of :func:`source_terms` under the priors ``prior`` (the merge's formula; a NaN
    score adds nothing)."""
    total = np.zeros(len(terms))
    for k in range(terms.shape[1]):
        total += source_logs(terms[:, k], float(prior[k]))
    return 1.0 - np.exp(total)


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Positions where any of the (sorted) ``keys`` changes: the first row of each group."""
    n = len(keys[0])
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
        for k in keys:
            change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def _rank_in_group(starts: np.ndarray, n: int) -> np.ndarray:
    """0-based position of each row within its group (rows sorted by group; ``starts`` from _group_starts)."""
    return np.arange(n) - np.repeat(starts, np.diff(np.append(starts, n)))


def _first_max(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per group (rows sorted by group): the position of the first row holding the group's maximum (a NaN
    counts as the lowest value)."""
    n = len(values)
    values = np.where(np.isnan(values), -np.inf, values)
    best = np.repeat(np.maximum.reduceat(values, starts), np.diff(np.append(starts, n)))
    return np.minimum.reduceat(np.where(values == best, np.arange(n), n), starts)


def _by_group_then_desc(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Positions in order of ``group`` ascending, ``score`` descending, then position (the order of
    ``np.lexsort((np.arange(n), -score, group))``; NaN scores last in their group, as there): a stable sort of
    the scores, then a stable radix sort of the group codes when they fit 16 bits (a shard's users or
    (user, source) pairs), which is a fraction of a three-key lexsort's time."""
    by_score = np.argsort(-score, kind="stable")
    g = group[by_score]
    if len(g) and (g.min() < 0 or g.max() >= 2**15):
        g = sorted_codes(g)[1]  # dense codes, same order: 16 bits when there are few enough groups
    fits = not len(g) or g.max() < 2**15
    return by_score[np.argsort(g.astype(np.int16) if fits else g, kind="stable")]


def sorted_codes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted distinct values of ``x``, each value's position among them): a hash pass over ``x`` and a
    sort of the distinct values only, not ``np.unique``'s sort of every row."""
    codes, uniq = pd.factorize(x, sort=False)
    uniq = np.asarray(uniq)
    order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(uniq), dtype="int64")
    rank[order] = np.arange(len(uniq))
    return uniq[order], rank[codes]


def _empty_out() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in OUT_COLUMNS})


def _merge(cand: pd.DataFrame, n: int, reserve: dict[str, float] | None = None,
           priors: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per (user, item): strongest source and its anchor, all sources, per-source scores, noisy-or;
    then each user's top ``n``: every source's reserved best first, the rest by p_recall.

    Vectorised on integer codes (one radix-friendly sort on a (user, item, source) key, group maxima with
    reduceat): the refresh merges on every batch, and pandas string maps and pivots were most of its time.
    Ties: the higher probability, then the source's order in SOURCES, then the earlier row; items by id."""
    if cand.empty:
        return _empty_out()
    u = cand["user_id"].to_numpy(dtype="int64")
    i = cand["item_id"].to_numpy(dtype="int64")
    o = cand["_o"].to_numpy(dtype="int64") if "_o" in cand.columns else _codes(cand["source"])
    rs = cand["recall_score"].to_numpy(dtype="float64")
    prior = prior_vector(priors)
    p = prior[o] * calibrated(rs)
    uk = sorted_codes(u)[1]
    items, ik = sorted_codes(i)
    n_items = len(items)
    n_src = len(SOURCES)
    g = uk * n_items + ik  # (user, item) in (user id, item id) order
    # one row per (user, item, source): its most probable, the earliest of equals (the sort is stable)
    key = g * n_src + o
    by_key = np.argsort(key, kind="stable")
    rows = by_key[_first_max(p[by_key], _group_starts(key[by_key]))]
    # rows are in (user, item, source order): a group's strongest is its first maximum of p
    gk, ok, pk, rk = g[rows], o[rows], p[rows], rs[rows]
    starts = _group_starts(gk)
    n_groups = len(starts)
    strongest = rows[_first_max(pk, starts)]
    sizes = np.diff(np.append(starts, len(rows)))
    # noisy-or; a NaN score adds nothing (as a NaN-skipping sum would)
    p_recall = 1.0 - np.exp(np.add.reduceat(_log_miss(pk), starts))
    mask = np.bitwise_or.reduceat(np.left_shift(np.int64(1), ok), starts)
    wide = np.zeros((n_groups, n_src), dtype="float64")
    wide[np.repeat(np.arange(n_groups), sizes), ok] = rk
    # each source's best items per user (score desc, item id asc) are reserved up to its share of n
    limits = np.array([int(n * (reserve or {}).get(s_, 0.0)) for s_ in SOURCES], dtype="int64")
    reserved = np.zeros(len(rows), dtype=bool)
    cand_r = np.flatnonzero(limits[ok] > 0)
    if len(cand_r):
        uo = (gk[cand_r] // n_items) * n_src + ok[cand_r]
        # rows are in (user, item) order, so within a (user, source) group the items already ascend
        order = cand_r[_by_group_then_desc(uo, rk[cand_r])]
        within = _rank_in_group(_group_starts((gk[order] // n_items) * n_src + ok[order]), len(order))
        reserved[order] = within < limits[ok[order]]
    res = np.logical_or.reduceat(reserved, starts)
    # top n per user: the reserved first (best p_recall first), then the rest; listed by p_recall, item id
    gg = gk[starts]
    uu = gg // n_items
    top = _by_group_then_desc(uu, p_recall)  # gg ascends: equal p_recall by item id
    ut = uu[top]
    rt = res[top]
    ustarts = _group_starts(ut)
    usizes = np.diff(np.append(ustarts, len(top)))
    c_res = np.cumsum(rt)
    before = np.repeat(c_res[ustarts] - rt[ustarts], usizes)
    rank_res = c_res - rt - before  # 0-based rank among the user's reserved rows
    n_res = np.repeat(np.add.reduceat(rt.astype("int64"), ustarts), usizes)
    rank_rest = _rank_in_group(ustarts, len(top)) - rank_res - rt  # rank among the user's other rows
    take = np.where(rt, rank_res < n, rank_rest < n - n_res)
    top = top[take]
    masks, which = np.unique(mask[top], return_inverse=True)
    names = np.array(["|".join(s_ for k, s_ in enumerate(SOURCES) if m >> k & 1) for m in masks], dtype=object)
    first = strongest[top]
    out = pd.DataFrame({"user_id": u[first], "item_id": i[first], "source": _NAMES[o[first]],
                        "recall_score": rs[first],
                        "anchor_item_id": pd.array(pd.to_numeric(cand["anchor_item_id"]).to_numpy(
                            dtype="float64", na_value=np.nan)[first], dtype="Int64"),
                        "p_recall": p_recall[top], "sources": names[which]})
    for k, col in enumerate(SCORE_COLUMNS):
        out[col] = wide[top, k]
    return out[OUT_COLUMNS]


def generate_candidates(users: np.ndarray, events: pd.DataFrame, neighbours: pd.DataFrame,
                        item_feats: pd.DataFrame, cfg: RecallConfig, *, factors: Factors | None = None,
                        content_index: ContentIndex | None = None, text_index: TextIndex | None = None,
                        sources: tuple[str, ...] | None = None, tables: ItemTables | None = None,
                        followers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Merged, de-duplicated, filtered candidates for ``users`` (every user gets ``n_candidates`` when the
    available catalogue has that many items). Optional inputs switch on their source: ``factors`` (als),
    ``content_index`` (content), ``text_index`` (search; built from ``item_feats.title`` when absent),
    ``followers`` (seq: :data:`pipeline.recall.sequential.FOLLOWER_COLUMNS`).
    ``sources`` restricts the sources (evaluation of one source); popularity is kept only if listed.
    ``tables``: :func:`item_tables` of ``item_feats``, when the caller reuses them across calls."""
    users = np.unique(np.asarray(users, dtype="int64"))
    use = set(sources or SOURCES)
    events = events[events["user_id"].isin(users)]
    hist = user_history(events, cfg)
    tables = tables if tables is not None else item_tables(item_feats)
    available = tables.available
    if available.empty or not len(users):  # nothing can be recommended; the output gate reports empty lists
        return pd.DataFrame({c: pd.Series(dtype="object") for c in OUT_COLUMNS})
    quota = cfg.per_source
    frames: list[pd.DataFrame] = []

    if "retarget" in use:
        since = pd.Timestamp(cfg.as_of) - pd.Timedelta(days=cfg.recent_days)
        recent = hist[(hist["last_ts"] >= since) & ~hist["bought"]]
        if len(recent):
            r = _frame(recent["user_id"], recent["item_id"], "retarget", _norm(recent["weight"], recent["user_id"]),
                       recent["item_id"].to_numpy())
            frames.append(_top_per_user(r, quota.get("retarget", 50)))
    if "item-cf" in use and (f := itemcf_source(hist, neighbours, cfg, quota.get("item-cf", 150))) is not None:
        frames.append(f)
    if "seq" in use and followers is not None and (f := seq_source(events, followers, cfg,
                                                                   quota.get("seq", 100))) is not None:
        frames.append(f)
    if "als" in use and factors is not None and (f := als_source(users, hist, factors,
                                                                 quota.get("als", 150))) is not None:
        frames.append(f)
    if "search" in use:
        if text_index is None and "title" in item_feats.columns and (events["event_type"] == "search").any():
            from pipeline.recall.text import catalogue_search_index

            text_index = catalogue_search_index(available)
        if text_index is not None and (f := search_source(events, text_index, cfg,
                                                          quota.get("search", 50))) is not None:
            frames.append(f)
    if "content" in use and content_index is not None and (
            f := content_source(hist, content_index, cfg, quota.get("content", 100))) is not None:
        frames.append(f)
    if use & {"category", "trending"}:
        frames.extend(f for f in category_sources(users, hist, tables, cfg) if f["source"].iat[0] in use
                      or (f["source"].iat[0] == "popularity" and "category" in use))
    if "popularity" in use:
        # Fallback: enough popular items that every user still has a full list after exclusions.
        # Each user's depth is n_candidates plus their *own* history size: a shard-wide maximum would give a
        # user more (noisy-or) popularity rows when a heavy user shares the shard, so lists would depend on
        # the shard split, i.e. on the number of Dask workers.
        depth = cfg.n_candidates + hist.groupby("user_id").size().reindex(users, fill_value=0).to_numpy("int64")
        top = tables.pop_order.head(int(depth.max()))
        # items without any activity still fill the list (score 0), so a tiny shop gives full lists
        score = (top["popularity"] / max(float(top["popularity"].max()), 1e-9)).to_numpy()
        keep = np.tile(np.arange(len(top)), len(users)) < np.repeat(depth, len(top))
        frames.append(_frame(np.repeat(users, len(top))[keep], np.tile(top["item_id"].to_numpy(), len(users))[keep],
                             "popularity", np.tile(score, len(users))[keep]))

    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in OUT_COLUMNS})
    # every frame holds one source (each source labels its own rows): its code, not a string map per row
    # and the anchor as float64 (NaN: none), so the merge takes numbers, not a per-row string or object column
    cand = pd.concat([pd.DataFrame({"user_id": f["user_id"].to_numpy(dtype="int64"),
                                    "item_id": f["item_id"].to_numpy(dtype="int64"),
                                    "recall_score": f["recall_score"].to_numpy(dtype="float64"),
                                    "anchor_item_id": pd.to_numeric(f["anchor_item_id"]).to_numpy(
                                        dtype="float64", na_value=np.nan),
                                    "_o": _SOURCE_CODE[f["source"].iat[0]]}) for f in frames], ignore_index=True)
    u, i = cand["user_id"].to_numpy(dtype="int64"), cand["item_id"].to_numpy(dtype="int64")
    ok = np.isin(u, users) & np.isin(i, tables.available_ids)
    bought = hist.loc[hist["bought"], ["user_id", "item_id"]]
    if len(bought):
        b_item = bought["item_id"].to_numpy(dtype="int64")
        keep = ~np.isin(b_item, tables.repurchasable_ids(cfg.repurchasable))
        span = int(max(i.max(initial=0), b_item.max(initial=0))) + 1
        ok &= ~np.isin(u * span + i, bought["user_id"].to_numpy(dtype="int64")[keep] * span + b_item[keep])
    return _merge(cand[ok], cfg.n_candidates, cfg.reserve, cfg.priors)
