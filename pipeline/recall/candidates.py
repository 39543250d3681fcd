"""Candidate generation and merge for one shard of users (pure pandas/numpy; runs on a Dask worker).

Sources, each with a score in [0, 1] and, where one exists, the anchor item that caused it:

- ``retarget``: viewed or carted recently, not bought;
- ``item-cf``: neighbours of the user's strongest items (``neighbours.parquet``);
- ``als``: the user's ALS factors against every item (folded in from the history when the user is new to
  the factors);
- ``content``: nearest items in embedding space to the user's strongest items (reaches cold items);
- ``search``: items whose text matches the user's recent search queries;
- ``category`` / ``trending``: popular and trending in the user's favourite top-level categories (a new
  user gets the best of every category and the trending of every category, interleaved; the first is
  labelled ``popularity`` for them);
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

from pipeline.features.items import decayed_weight
from pipeline.recall.popularity import popular_table, top_per_category

if TYPE_CHECKING:
    from pipeline.recall.content import ContentIndex
    from pipeline.recall.factors import Factors
    from pipeline.recall.text import TextIndex

SOURCES: tuple[str, ...] = ("retarget", "item-cf", "als", "search", "content", "category", "trending", "popularity")
# All-time popularity above trending: on short histories "trending" is mostly noise from a few recent events.
SOURCE_PRIOR = {"retarget": 1.0, "item-cf": 0.8, "als": 0.7, "search": 0.6, "content": 0.5, "category": 0.35,
                "trending": 0.2, "popularity": 0.25}
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
    #: Top-level categories whose items may be recommended again after a purchase (consumables).
    repurchasable: tuple[str, ...] = ("Grocery", "Beauty")
    #: Most candidates one source may contribute per user (popularity fills up to ``n_candidates``).
    per_source: dict[str, int] = field(default_factory=lambda: {
        "retarget": 50, "item-cf": 150, "als": 150, "search": 50, "content": 100, "category": 100, "trending": 50})
    #: Recent search queries per user used by search-intent recall; lowest text similarity kept.
    search_queries: int = 5
    search_min_similarity: float = 0.1
    #: Favourite top-level categories used by ``category`` and ``trending``.
    favourite_categories: int = 2
    #: Share of ``n_candidates`` each source's best items are guaranteed in the merge, whatever their
    #: p_recall (so content keeps cold items in the list and no single strong source crowds out the rest).
    reserve: dict[str, float] = field(default_factory=lambda: {
        "retarget": 0.1, "item-cf": 0.15, "als": 0.15, "search": 0.05, "content": 0.1, "category": 0.05,
        "trending": 0.05})


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
    ev["w"] = decayed_weight(ev, cfg.as_of, cfg.weights, cfg.half_life_days)
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
    return (df.sort_values(["user_id", "recall_score", "item_id"], ascending=[True, False, True], kind="stable")
            .groupby("user_id").head(n))


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


def als_source(users: np.ndarray, hist: pd.DataFrame, factors: Factors, n: int) -> pd.DataFrame | None:
    """Top-``n`` items by ALS score; users unknown to the factors but with a history are folded in."""
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
            import scipy.sparse as sp

            ur = np.searchsorted(users, h["user_id"].to_numpy()[ok])
            m = sp.csr_matrix((h["weight"].to_numpy(np.float32)[ok], (ur, cols[ok])),
                              shape=(len(users), len(factors.item_ids)))
            sub = np.flatnonzero(~known)
            U[sub] = fold_in(m[sub], factors.item_factors, float(factors.meta.get("regularization", 20.0)),
                             alpha=float(factors.meta.get("alpha", 1.0)))
    active = np.flatnonzero(np.abs(U).sum(axis=1) > 0)
    if not len(active):
        return None
    scores = U[active] @ factors.item_factors.T
    seen = hist[hist["user_id"].isin(users[active])]
    kk = min(n + (int(seen.groupby("user_id").size().max()) if len(seen) else 0), scores.shape[1])
    idx = np.argpartition(-scores, kth=kk - 1, axis=1)[:, :kk]
    val = np.take_along_axis(scores, idx, axis=1)
    df = _frame(np.repeat(users[active], kk), factors.item_ids[idx.ravel()], "als", val.ravel())
    if len(seen):
        df = df.merge(seen[["user_id", "item_id"]].assign(_s=True), on=["user_id", "item_id"], how="left")
        df = df[df["_s"].isna()].drop(columns="_s")
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
    q = q.sort_values(["user_id", "ts"], ascending=[True, False], kind="stable").groupby("user_id").head(
        cfg.search_queries)
    sims = text_index.query(q["query"].astype(str).tolist()).tocoo()
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


def category_sources(users: np.ndarray, hist: pd.DataFrame, pop: pd.DataFrame, cfg: RecallConfig) -> list[pd.DataFrame]:
    """``category`` and ``trending``: the favourite categories of users with history; for users without,
    the best of every category interleaved (round-robin by rank), so a new user sees the whole shop."""
    out = []
    n_cat, n_tr = cfg.per_source.get("category", 100), cfg.per_source.get("trending", 50)
    cats = pop[["item_id", "top_category"]]
    hc = hist.merge(cats, on="item_id") if len(hist) else hist.assign(top_category=pd.Series(dtype="object"))
    fav = (hc.groupby(["user_id", "top_category"])["weight"].sum().reset_index()
           .sort_values(["user_id", "weight", "top_category"], ascending=[True, False, True])
           .groupby("user_id").head(cfg.favourite_categories))
    fav["fav_rank"] = fav.groupby("user_id").cumcount()
    cold = np.setdiff1d(np.asarray(users, dtype="int64"), fav["user_id"].to_numpy())
    for source, col, n in (("category", "popularity", n_cat), ("trending", "trending", n_tr)):
        per_cat = top_per_category(pop, col, n)
        if per_cat.empty:
            continue
        mx = per_cat.groupby("top_category")[col].transform("max")
        per_cat = per_cat.assign(s=per_cat[col] / mx.where(mx > 0, 1.0))
        warm = fav.merge(per_cat, on="top_category")
        if len(warm):
            warm["recall_score"] = warm["s"] / (1.0 + warm["fav_rank"])  # the favourite category first
            out.append(_top_per_user(_frame(warm["user_id"], warm["item_id"], source, warm["recall_score"]), n))
        if len(cold):
            mix = per_cat.sort_values(["cat_rank", col, "item_id"], ascending=[True, False, True]).head(n)
            score = 1.0 / (1.0 + mix["cat_rank"].to_numpy())
            # for a user without history the best-of-every-category mix is their popularity list
            label = "popularity" if source == "category" else source
            out.append(_frame(np.repeat(cold, len(mix)), np.tile(mix["item_id"].to_numpy(), len(cold)), label,
                              np.tile(score, len(cold))))
    return out


def _merge(cand: pd.DataFrame, n: int, reserve: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per (user, item): strongest source and its anchor, all sources, per-source scores, noisy-or;
    then each user's top ``n``: every source's reserved best first, the rest by p_recall."""
    order = {s: i for i, s in enumerate(SOURCES)}
    cand = cand.assign(_o=cand["source"].map(order).astype("int64"))
    cand["_p"] = cand["source"].map(SOURCE_PRIOR) * (0.5 + 0.5 * cand["recall_score"].astype("float64").clip(0, 1))
    cand = cand.sort_values(["user_id", "item_id", "_p", "_o"], ascending=[True, True, False, True], kind="stable")
    cand = cand.drop_duplicates(["user_id", "item_id", "source"], keep="first")
    key = ["user_id", "item_id"]
    within = (cand.sort_values(["user_id", "_o", "recall_score", "item_id"], ascending=[True, True, False, True],
                               kind="stable").groupby(["user_id", "_o"]).cumcount())
    limit = cand["source"].map({s: int(n * f) for s, f in (reserve or {}).items()}).fillna(0).to_numpy()
    reserved = pd.Series(within.reindex(cand.index).to_numpy() < limit, index=cand.index)
    first = cand.drop_duplicates(key, keep="first").set_index(key)
    log_miss = np.log1p(-cand["_p"].clip(upper=1 - 1e-9))
    first["p_recall"] = 1.0 - np.exp(log_miss.groupby([cand["user_id"], cand["item_id"]], sort=False).sum())
    mask = (np.int64(1) << cand["_o"]).groupby([cand["user_id"], cand["item_id"]], sort=False).sum()
    names = {m: "|".join(s for i, s in enumerate(SOURCES) if m >> i & 1) for m in np.unique(mask.to_numpy())}
    first["sources"] = mask.map(names)
    wide = cand.pivot_table(index=key, columns="source", values="recall_score", aggfunc="max", fill_value=0.0)
    for s, col in zip(SOURCES, SCORE_COLUMNS, strict=True):
        first[col] = wide[s].reindex(first.index).fillna(0.0).astype("float64") if s in wide.columns else 0.0
    first["_r"] = reserved.groupby([cand["user_id"], cand["item_id"]], sort=False).any()
    out = first.reset_index()
    out = (out.sort_values(["user_id", "_r", "p_recall", "item_id"], ascending=[True, False, False, True],
                           kind="stable").groupby("user_id").head(n))
    out = out.sort_values(["user_id", "p_recall", "item_id"], ascending=[True, False, True],
                          kind="stable").reset_index(drop=True)
    out["anchor_item_id"] = out["anchor_item_id"].astype("Int64")
    out["recall_score"] = out["recall_score"].astype("float64")
    return out[OUT_COLUMNS]


def generate_candidates(users: np.ndarray, events: pd.DataFrame, neighbours: pd.DataFrame,
                        item_feats: pd.DataFrame, cfg: RecallConfig, *, factors: Factors | None = None,
                        content_index: ContentIndex | None = None, text_index: TextIndex | None = None,
                        sources: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Merged, de-duplicated, filtered candidates for ``users`` (every user gets ``n_candidates`` when the
    available catalogue has that many items). Optional inputs switch on their source: ``factors`` (als),
    ``content_index`` (content), ``text_index`` (search; built from ``item_feats.title`` when absent).
    ``sources`` restricts the sources (evaluation of one source); popularity is kept only if listed."""
    users = np.unique(np.asarray(users, dtype="int64"))
    use = set(sources or SOURCES)
    events = events[events["user_id"].isin(users)]
    hist = user_history(events, cfg)
    available = item_feats.loc[item_feats["in_stock"].astype(bool) & item_feats["visible"].astype(bool)]
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
    if "als" in use and factors is not None and (f := als_source(users, hist, factors,
                                                                 quota.get("als", 150))) is not None:
        frames.append(f)
    if "search" in use:
        if text_index is None and "title" in item_feats.columns and (events["event_type"] == "search").any():
            from pipeline.recall.text import TextIndex, item_texts

            text_index = TextIndex(available["item_id"].to_numpy(), item_texts(available).tolist())
        if text_index is not None and (f := search_source(events, text_index, cfg,
                                                          quota.get("search", 50))) is not None:
            frames.append(f)
    if "content" in use and content_index is not None and (
            f := content_source(hist, content_index, cfg, quota.get("content", 100))) is not None:
        frames.append(f)
    pop = popular_table(available)
    if use & {"category", "trending"}:
        frames.extend(f for f in category_sources(users, hist, pop, cfg) if f["source"].iat[0] in use
                      or (f["source"].iat[0] == "popularity" and "category" in use))
    if "popularity" in use:
        # Fallback: enough popular items that every user still has a full list after exclusions.
        n_pop = cfg.n_candidates + (int(hist.groupby("user_id").size().max()) if len(hist) else 0)
        top = pop.sort_values(["popularity", "item_id"], ascending=[False, True]).head(n_pop)
        # items without any activity still fill the list (score 0), so a tiny shop gives full lists
        score = (top["popularity"] / max(float(top["popularity"].max()), 1e-9)).to_numpy()
        frames.append(_frame(np.repeat(users, len(top)), np.tile(top["item_id"].to_numpy(), len(users)),
                             "popularity", np.tile(score, len(users))))

    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in OUT_COLUMNS})
    cand = pd.concat(frames, ignore_index=True)
    cand = cand[cand["user_id"].isin(users) & cand["item_id"].isin(available["item_id"])]
    bought = hist.loc[hist["bought"], ["user_id", "item_id"]]
    if len(bought):
        repurchasable = available.loc[available["top_category"].isin(cfg.repurchasable), "item_id"]
        bought = bought[~bought["item_id"].isin(repurchasable)]
        cand = cand.merge(bought.assign(_b=True), on=["user_id", "item_id"], how="left")
        cand = cand[cand["_b"].isna()].drop(columns="_b")
    return _merge(cand, cfg.n_candidates, cfg.reserve)
