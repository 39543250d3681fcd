"""Point-in-time correct training data for the ranker.

A *window* is a cut-off ``c`` and a label end ``e``: everything the model sees (sequences, item
statistics, recall candidates and their scores, neighbours) is computed from events with ``ts < c``; the
labels are the user's click / add_to_cart / purchase events in ``[c, e)`` (weighted by type). Each
positive becomes one *group*: the positive plus K negatives, drawn from the recall candidates the user
did not touch in the window and from random catalogue items. The nightly run trains on daily windows
before ``t = as_of - 1 day`` and keeps ``[t, as_of)`` as the holdout on which the gate compares models.

Big shops train on a bounded sample of users (:func:`user_sample`: the same users on every re-run), built
from those users' events only; item statistics counted over the sample are scaled back to the whole shop
(``Window.stat_scale``) so that training sees them on the scale scoring does.

``events_before`` is the only place events are cut, and every window goes through it: the leakage test
perturbs events at or after ``c`` and checks that nothing computed for the window changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

#: Label weight per event type in the label window (views are not labels: they are what recall already
#: optimises for, and far too common to mean intent).
LABEL_WEIGHTS: dict[str, float] = {"click": 1.0, "add_to_cart": 2.0, "purchase": 4.0}

CandidateFn = Callable[[np.ndarray, pd.DataFrame, datetime], pd.DataFrame]


def events_before(events: pd.DataFrame, cutoff: datetime | pd.Timestamp) -> pd.DataFrame:
    """The events a window may use for features: ``ts < cutoff``."""
    return events[events["ts"] < pd.Timestamp(cutoff)]


def labels_in(events: pd.DataFrame, start: datetime, end: datetime,
              weights: dict[str, float] | None = None) -> pd.DataFrame:
    """(user_id, item_id, weight) of the positive actions in ``[start, end)``, strongest per pair."""
    w = weights or LABEL_WEIGHTS
    ev = events[(events["ts"] >= pd.Timestamp(start)) & (events["ts"] < pd.Timestamp(end))
                & events["item_id"].notna() & events["event_type"].isin(list(w))]
    if ev.empty:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="int64"),
                             "weight": pd.Series(dtype="float64")})
    out = pd.DataFrame({"user_id": ev["user_id"].to_numpy(dtype=np.int64),
                        "item_id": ev["item_id"].to_numpy(dtype=np.int64),
                        "weight": ev["event_type"].map(w).to_numpy(dtype=np.float64)})
    return out.groupby(["user_id", "item_id"], as_index=False)["weight"].max()


def touched_in(events: pd.DataFrame, start: datetime, end: datetime) -> pd.DataFrame:
    """(user_id, item_id) of every item event in ``[start, end)``: never a negative."""
    ev = events[(events["ts"] >= pd.Timestamp(start)) & (events["ts"] < pd.Timestamp(end))
                & events["item_id"].notna()]
    return pd.DataFrame({"user_id": ev["user_id"].to_numpy(dtype=np.int64),
                         "item_id": ev["item_id"].to_numpy(dtype=np.int64)}).drop_duplicates()


#: Candidate columns the ranker never reads: windows drop them (a string and a nullable integer per row).
_NOT_RANKED = ("sources", "anchor_item_id")


def recall_candidate_fn(items: pd.DataFrame, *, n_candidates: int = 100, recent_days: int = 7,
                        weights: dict[str, float] | None = None, half_life_days: dict[str, float] | None = None,
                        neighbours_k: int = 20, decay_from: str = "as_of", als: dict | None = None,
                        priors: dict[str, float] | None = None, seq_k: int = 0,
                        chunk_users: int = 2000, itemcf_algorithm: str | None = None,
                        source_mask: bool = False, snapshot_dir: str | Path | None = None) -> CandidateFn:
    """The production recall (``generate_candidates``) at a cut-off, with neighbours, ALS factors and item
    statistics rebuilt from the events before it (the run's neighbours and factors saw the whole period, the
    labels included). ``als``: train_als' parameters and ``weighting`` (as cf_build's); None: no ALS source.
    ``seq_k``: followers per item of the ``seq`` source (as cf_build's; 0: no seq source). The item-CF
    neighbours are built as cf_build builds the run's (``itemcf_algorithm``, default the settings'): the sparse
    top-k scores only the co-occurrences there are, where the dense one costs items x items per window.

    Recall runs ``chunk_users`` users at a time (a user's candidates do not depend on the others'), so its
    working memory follows that budget, not the window's users; the frames keep the columns the ranker reads
    (not ``sources`` nor ``anchor_item_id``); with ``source_mask``, a ``source_mask`` column instead: the sources
    that proposed each row as bits (:func:`pipeline.recall.candidates.source_masks`), for the prior tuning's
    re-fusion.

    ``snapshot_dir``: the run's snapshot, whose item-content index gives the windows the ``content`` source and
    whose multilingual text vectors make ``search`` semantic, as scoring has them (item text and images, no
    events: nothing to cut at ``c``). Without it the windows have no ``content`` rows, which a ranker so trained
    meets first when it scores."""
    from pipeline.features.items import top_category
    from pipeline.rank.features import item_stats_at
    from pipeline.recall.candidates import RecallConfig, generate_candidates, item_tables, source_masks
    from pipeline.recall.matrix import build_interactions
    from pipeline.recall.neighbours import neighbours_from_interactions
    from pipeline.recall.text import catalogue_search_index
    from pipeline.settings import Settings

    defaults = Settings.model_fields
    algorithm = itemcf_algorithm or defaults["itemcf_algorithm"].default
    w = weights or defaults["event_weights"].default_factory()  # type: ignore[misc]
    hl = half_life_days or defaults["half_life_days"].default_factory()  # type: ignore[misc]
    catalogue = items.drop_duplicates("item_id").sort_values("item_id")
    item_ids = catalogue["item_id"].to_numpy(dtype=np.int64)
    content = text = None
    if snapshot_dir is not None:
        from pipeline.recall.content import content_index_for

        content = content_index_for(snapshot_dir)
    # the catalogue's columns scoring's item features carry into recall (shelves, search text), once for all windows
    side = catalogue[[c for c in ("item_id", "category", "title", "brand") if c in catalogue.columns]].assign(
        in_stock=catalogue.get("in_stock", True), visible=catalogue.get("visible", True),
        top_category=top_category(catalogue.get("category", pd.Series("", index=catalogue.index))))

    def fn(users: np.ndarray, ev: pd.DataFrame, cutoff: datetime) -> pd.DataFrame:
        nonlocal text
        stats = item_stats_at(ev, cutoff, w, hl)
        feats = side.join(stats[["activity", "recent_events", "trend"]], on="item_id")
        feats = feats.fillna({"activity": 0.0, "recent_events": 0.0, "trend": 0.1})
        inter = build_interactions(ev, cutoff, weights=w, half_life_days=hl, item_ids=item_ids,
                                   decay_from=decay_from)
        if inter.user_items.nnz:
            nb = neighbours_from_interactions(inter, k=min(neighbours_k, max(len(item_ids) - 1, 1)),
                                              algorithm=algorithm)
        else:
            nb = pd.DataFrame({"item_id": pd.Series(dtype="int64"), "similar_item_id": pd.Series(dtype="int64"),
                               "score": pd.Series(dtype="float64")})
        cfg = RecallConfig(as_of=cutoff, n_candidates=n_candidates, recent_days=recent_days, weights=w,
                           half_life_days=hl, decay_from=decay_from, priors=dict(priors or {}))
        factors, followers = _window_factors(inter, als), _window_followers(ev, item_ids, seq_k)
        users = np.unique(np.asarray(users, dtype=np.int64))
        tables = item_tables(feats)  # the window's catalogue tables, once for all its user chunks
        if text is None and "title" in feats and (ev["event_type"] == "search").any():
            # as scoring builds it (item text only: once for every window)
            text = catalogue_search_index(tables.available, None if snapshot_dir is None else str(snapshot_dir))
        step = max(int(chunk_users), 1)
        parts = []
        for lo in range(0, max(len(users), 1), step):  # no users: one empty call, the same columns
            chunk = users[lo: lo + step]
            out = generate_candidates(chunk, ev[ev["user_id"].isin(chunk)], nb, feats, cfg, factors=factors,
                                      followers=followers, tables=tables, content_index=content, text_index=text)
            if source_mask and "sources" in out.columns:
                out["source_mask"] = source_masks(out["sources"]).astype("int16")
            parts.append(out.drop(columns=[c for c in _NOT_RANKED if c in out.columns]))
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    return fn


def _window_followers(ev: pd.DataFrame, item_ids: np.ndarray, k: int) -> pd.DataFrame | None:
    """The ``seq`` source's followers of a window's events, built as cf_build builds the run's."""
    if k <= 0:
        return None
    from pipeline.recall.sequential import FollowerBuilder, SeqParams

    b = FollowerBuilder(item_ids, SeqParams(k=k))
    b.add(ev)
    return b.table()


def _window_factors(inter: object, als: dict | None) -> object | None:
    """ALS factors of a window's interactions, trained as cf_build trains the run's (same parameters and
    weighting), so the ranker learns from and is gated on the ALS candidates it will score."""
    if als is None or not inter.user_items.nnz:
        return None
    from pipeline.recall.factors import BM25Weights, Factors, train_als

    params = dict(als)
    weighting = params.pop("weighting", "none")
    bm25, matrix = (BM25Weights.fit_transform(inter.user_items) if weighting == "bm25"
                    else (None, inter.user_items))
    uf, itf, meta = train_als(matrix, **params)
    return Factors(uf, itf, inter.user_ids, inter.item_ids, meta, weighting=bm25)


@dataclass
class Window:
    """One cut-off: candidates and labels, all computed from ``events_before(cutoff)`` and the labels.
    ``stat_scale``: all users / sampled users, the factor from the history's item counts to the shop's."""

    cutoff: datetime
    end: datetime
    labels: pd.DataFrame
    touched: pd.DataFrame
    candidates: pd.DataFrame
    history: pd.DataFrame = field(repr=False)
    stat_scale: float = 1.0
    #: What the window's users were shown in ``[cutoff, end)`` (user_id, item_id, rank), None without a log.
    impressions: pd.DataFrame | None = field(default=None, repr=False)
    #: Examination propensity by rank (index r - 1), relative to rank 1 (see :func:`position_propensity`).
    propensity: np.ndarray | None = field(default=None, repr=False)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a well-spread 64-bit hash of each value (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def user_sample(user_ids: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """The ``n`` users with the smallest hash of (``seed``, user id), sorted; all of them when there are no
    more than ``n``. Deterministic and independent of input order, so a re-run (or a run one day later, with
    a few new users) trains on the same users; another seed draws another sample."""
    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    if len(ids) <= n:
        return ids
    salt = _mix64(np.array([seed], dtype=np.uint64))[0]
    key = _mix64(ids.view(np.uint64) ^ salt)
    pick = np.argpartition(key, n - 1)[:n]
    return np.sort(ids[pick])


def build_window(events: pd.DataFrame, cutoff: datetime, end: datetime, candidate_fn: CandidateFn, *,
                 max_users: int | None = None, seed: int = 0, stat_scale: float = 1.0,
                 impressions: pd.DataFrame | None = None, propensity: np.ndarray | None = None) -> Window:
    """Labels in ``[cutoff, end)`` and the recall candidates at ``cutoff`` of the labelled users.
    ``stat_scale``: see :class:`Window` (``events`` hold a sample of the shop's users). ``impressions``: the
    shop's log (``shop.impressions``); the window keeps its users' rows in ``[cutoff, end)``."""
    labels = labels_in(events, cutoff, end)
    users = np.unique(labels["user_id"].to_numpy())
    if max_users is not None and len(users) > max_users:  # big shops: a seeded sample of users per window
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        labels = labels[labels["user_id"].isin(users)]
    hist = events_before(events, cutoff)
    cand = candidate_fn(users, hist, cutoff) if len(users) else pd.DataFrame(
        columns=["user_id", "item_id", "source", "recall_score", "p_recall"])
    touched = touched_in(events, cutoff, end)
    touched = touched[touched["user_id"].isin(users)]
    shown = None
    if impressions is not None and len(impressions):
        ts = pd.to_datetime(impressions["ts"], utc=True)
        keep = (ts >= pd.Timestamp(cutoff)) & (ts < pd.Timestamp(end)) & impressions["user_id"].isin(users)
        shown = impressions.loc[keep, ["user_id", "item_id", "rank"]].astype("int64").reset_index(drop=True)
    return Window(cutoff=cutoff, end=end, labels=labels.reset_index(drop=True), touched=touched,
                  candidates=cand.reset_index(drop=True), history=hist, stat_scale=stat_scale,
                  impressions=shown, propensity=propensity)


def clicked_impressions(impressions: pd.DataFrame, events: pd.DataFrame,
                        within: timedelta = timedelta(minutes=30)) -> np.ndarray:
    """For each impression, whether the user clicked the item within ``within`` after it was shown (short:
    a later click on the same item, from search or browsing, was not earned by the placement)."""
    if not len(impressions):
        return np.zeros(0, dtype=bool)
    clicks = events.loc[(events["event_type"] == "click") & events["item_id"].notna(), ["user_id", "item_id", "ts"]]
    imp = impressions[["user_id", "item_id", "ts"]].reset_index(drop=True).assign(
        _row=lambda d: np.arange(len(d)), ts=lambda d: pd.to_datetime(d["ts"], utc=True))
    m = imp.merge(clicks.astype({"item_id": "int64"}), on=["user_id", "item_id"], suffixes=("", "_c"))
    hit = m.loc[(m["ts_c"] >= m["ts"]) & (m["ts_c"] < m["ts"] + pd.Timedelta(within)), "_row"].unique()
    out = np.zeros(len(imp), dtype=bool)
    out[hit] = True
    return out


def position_propensity(impressions: pd.DataFrame, events: pd.DataFrame, *, max_rank: int = 50,
                        floor: float = 0.05, min_shown: int = 30) -> np.ndarray:
    """Examination propensity by rank relative to rank 1 (index r - 1): the click-through rate at each rank
    over the rate at rank 1, non-increasing, in ``[floor, 1]``. It is the position bias only where the logged
    order does not follow relevance (a randomised or shuffled placement); ranks shown fewer than
    ``min_shown`` times take the rank before them's value. Without impressions: all ones."""
    p = np.ones(max_rank)
    if impressions is None or not len(impressions):
        return p
    rank = np.minimum(impressions["rank"].to_numpy(dtype=np.int64), max_rank)
    clicked = clicked_impressions(impressions, events).astype(float)
    shown = np.bincount(rank, minlength=max_rank + 1)[1:].astype(float)
    hits = np.bincount(rank, weights=clicked, minlength=max_rank + 1)[1:]
    if shown[0] < min_shown or hits[0] <= 0:
        return p
    ctr = np.where(shown >= min_shown, hits / np.maximum(shown, 1), np.nan)
    rel = pd.Series(ctr / ctr[0]).ffill().to_numpy()
    return np.clip(np.minimum.accumulate(rel), floor, 1.0)


def daily_windows(as_of: datetime, n_windows: int, *, holdout_days: int = 1) -> tuple[list[tuple[datetime,
                                                                                                 datetime]],
                                                                                      tuple[datetime, datetime]]:
    """Training windows ``[t - k days, t - k + 1 days)`` for k = 1..n and the holdout ``[t, as_of)``
    with ``t = as_of - holdout_days``."""
    t = as_of - timedelta(days=holdout_days)
    train = [(t - timedelta(days=k), t - timedelta(days=k - 1)) for k in range(n_windows, 0, -1)]
    return train, (t, as_of)


@dataclass
class Groups:
    """Training groups: row ``g * (1 + K)`` is group g's positive, the next K rows its negatives."""

    rows: pd.DataFrame          # user_id, item_id, source, recall_score, p_recall, seq (index into seq_users)
    group_weight: np.ndarray    # label weight of each group's positive
    group_user: np.ndarray
    seq_users: np.ndarray       # (user) of each sequence row
    seq_cutoff: list            # cut-off of each sequence row
    size: int                   # 1 + K


def _runs(keys: np.ndarray) -> list[tuple[int, int, int]]:
    """(key, start, end) of each run of equal values in the sorted array ``keys``."""
    if not len(keys):
        return []
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return list(zip(keys[first].tolist(), first.tolist(), np.r_[first[1:], len(keys)].tolist(), strict=True))


def _shown_negatives(win: Window, touched: set) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict]:
    """Per user: items shown in the window and never touched, with the propensity of their best rank (drawing
    weight: an item at a rank the user likely looked at is a surer negative); and (user, item) -> best rank of
    what was shown."""
    imp = win.impressions
    if imp is None or not len(imp):
        return {}, {}
    best = imp.groupby(["user_id", "item_id"], as_index=False)["rank"].min()
    p = win.propensity if win.propensity is not None else np.ones(1)
    best["p"] = p[np.minimum(best["rank"].to_numpy(), len(p)) - 1]
    rank_of = dict(zip(zip(best["user_id"].tolist(), best["item_id"].tolist(), strict=True),
                       best["rank"].tolist(), strict=True))
    neg = best[[(u, i) not in touched for u, i in zip(best["user_id"].tolist(), best["item_id"].tolist(),
                                                      strict=True)]]
    out = {}
    for u, g in neg.groupby("user_id"):
        out[int(u)] = (g["item_id"].to_numpy(dtype=np.int64), g["p"].to_numpy(dtype=np.float64))
    return out, rank_of


def sample_groups(win: Window, item_pool: np.ndarray, *, n_recall_neg: int = 12, n_random_neg: int = 4,
                  seed: int = 0, n_shown_neg: int = 0, ipw_clip: float = 10.0) -> Groups:
    """One group per positive of ``win``: the positive, recall negatives first, random ones filling up.

    With impressions in the window and ``n_shown_neg`` > 0, up to that many of the K negatives are items the
    user was shown and did not touch (drawn in proportion to the propensity of their rank), and a positive
    that was shown has its weight multiplied by the inverse propensity of its rank (capped at ``ipw_clip``):
    a click at rank 8 counts for the examinations it did not get (inverse propensity scoring). Without
    impressions the groups are exactly those of before."""
    rng = np.random.default_rng(seed)
    k = n_recall_neg + n_random_neg
    cols = ["user_id", "item_id", "source", "recall_score", "p_recall",
            *(c for c in win.candidates.columns if c.startswith("score_"))]
    cand = win.candidates[cols] if len(win.candidates) else pd.DataFrame(columns=cols)
    # Plain Python ints and numpy slices instead of per-user sub-frames: the draws (and so the groups) are
    # the same as before, the bookkeeping around them was most of the time.
    touched = set(zip(win.touched["user_id"].to_numpy().tolist(), win.touched["item_id"].to_numpy().tolist(),
                      strict=True))
    by_user: dict[int, np.ndarray] = {}
    if len(cand):
        cu = cand["user_id"].to_numpy(dtype=np.int64)
        o = np.argsort(cu, kind="stable")  # a user's candidates keep their frame order
        cu, ci = cu[o], cand["item_id"].to_numpy(dtype=np.int64)[o]
        by_user = {u: ci[s:e] for u, s, e in _runs(cu)}
    shown_neg, rank_of = _shown_negatives(win, touched) if n_shown_neg else ({}, {})
    prop = win.propensity
    lu = win.labels["user_id"].to_numpy(dtype=np.int64)
    users = np.unique(lu)
    seq_of = {u: i for i, u in enumerate(users.tolist())}
    rec_key = cand.set_index(["user_id", "item_id"]) if len(cand) else None
    lo = np.argsort(lu, kind="stable")  # users ascending, labels in frame order within a user
    l_item, l_weight = win.labels["item_id"].to_numpy()[lo], win.labels["weight"].to_numpy()[lo]
    out_item, gw, gu, gs = [], [], [], []
    for u, s, e in _runs(lu[lo]):
        pool = by_user.get(u)
        pool_items = np.array([] if pool is None else [i for i in pool.tolist() if (u, i) not in touched],
                              dtype=np.int64)
        shown_items, shown_p = shown_neg.get(u, (np.zeros(0, dtype=np.int64), np.zeros(0)))
        for it, w in zip(l_item[s:e], l_weight[s:e], strict=True):
            sn = rng.choice(shown_items, min(n_shown_neg, len(shown_items)), replace=False,
                            p=shown_p / shown_p.sum()) if len(shown_items) else np.zeros(0, dtype=np.int64)
            rest = pool_items[~np.isin(pool_items, sn)] if len(sn) else pool_items
            rn = rng.choice(rest, min(n_recall_neg - len(sn), len(rest)), replace=False) if len(rest) \
                and n_recall_neg > len(sn) else np.zeros(0, dtype=np.int64)
            rn = np.concatenate([sn, rn]).astype(np.int64)
            r = rank_of.get((u, int(it)))
            if r is not None and prop is not None:
                w = w * min(1.0 / prop[min(r, len(prop)) - 1], ipw_clip)
            need = k - len(rn)
            rand = rng.choice(item_pool, need + 8, replace=len(item_pool) < need + 8)
            taken = set(rn.tolist())
            rand = np.array([i for i in rand.tolist() if (u, i) not in touched and i not in taken],
                            dtype=np.int64)[:need]
            if len(rand) < need:  # tiny catalogues: repeat what there is rather than fail
                rand = np.resize(rand if len(rand) else rn if len(rn) else np.array([it]), need)
            out_item.append(np.concatenate([[it], rn, rand]).astype(np.int64))
            gw.append(w)
            gu.append(u)
            gs.append(seq_of[u])
    out_user = [np.repeat(np.asarray(gu, dtype=np.int64), 1 + k)] if gu else []
    out_seq = [np.repeat(np.asarray(gs, dtype=np.int64), 1 + k)] if gs else []
    if not out_user:
        rows = pd.DataFrame({c: pd.Series(dtype="float64") for c in [*cols, "seq"]})
        return Groups(rows, np.zeros(0), np.zeros(0, dtype=np.int64), users, [win.cutoff] * len(users), 1 + k)
    rows = pd.DataFrame({"user_id": np.concatenate(out_user), "item_id": np.concatenate(out_item),
                         "seq": np.concatenate(out_seq)})
    if rec_key is not None:
        feats = rec_key.reindex(pd.MultiIndex.from_arrays([rows["user_id"], rows["item_id"]]))
        rows["source"] = feats["source"].to_numpy()
        rows["recall_score"] = feats["recall_score"].to_numpy(dtype=np.float64)
        rows["p_recall"] = feats["p_recall"].to_numpy(dtype=np.float64)
        for c in cols[5:]:  # each source's own score; absent (random negatives) is 0 in the tensors
            rows[c] = feats[c].to_numpy(dtype=np.float64)
    else:
        rows["source"], rows["recall_score"], rows["p_recall"] = None, np.nan, np.nan
    return Groups(rows, np.asarray(gw, dtype=np.float64), np.asarray(gu, dtype=np.int64), users,
                  [win.cutoff] * len(users), 1 + k)
