"""Ranking and beyond-accuracy metrics, vectorised, with Microsoft Recommenders' definitions.

Inputs are DataFrames: ``truth`` (user_id, item_id: the relevant test interactions; every row is relevant)
and ``recs`` (user_id, item_id, rank and/or score). As in ``recommenders.evaluation.python_evaluation``:

- a user's list is ordered by ``rank`` (or by ``score`` descending when there is no rank; ties keep row
  order), cut at ``k``, and positions are re-numbered 1..k;
- averages run over the users present in both ``truth`` and ``recs``;
- precision@k divides by ``k`` even when the list is shorter; recall@k by the user's relevant count;
- nDCG@k is binary with ``idcg`` over ``min(n_relevant, k)`` ideal positions;
- MAP@k is ``sum(hits_so_far / position over hits) / min(n_relevant, k)`` (MSR ``map_at_k``, current code);
- HR@k: share of users with at least one hit; MRR@k: mean of 1 / position of the first hit (0 if none).

All per-user work is done with integer codes and ``np.bincount`` instead of a groupby per user; the
benchmark compares it with a plain per-user loop.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.frames import ITEM_COL, RANK_COL, SCORE_COL, USER_COL

RANKING_METRICS = ("ndcg", "map", "precision", "recall", "hr", "mrr")


def _check_columns(df: pd.DataFrame, cols: Iterable[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")


def ordered_top_k(
    recs: pd.DataFrame,
    k: int,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_rank: str = RANK_COL,
    col_score: str = SCORE_COL,
) -> pd.DataFrame:
    """Each user's first ``k`` recommendations with positions 1..k (column ``rank``), sorted by user."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if col_rank in recs.columns:
        _check_columns(recs, [col_user, col_item], "recs")
        df = recs[[col_user, col_item, col_rank]].sort_values([col_user, col_rank], kind="stable")
    else:
        _check_columns(recs, [col_user, col_item, col_score], "recs")
        df = recs[[col_user, col_item, col_score]].sort_values(
            [col_user, col_score], ascending=[True, False], kind="stable")
    df = df.drop_duplicates([col_user, col_item])
    pos = df.groupby(col_user, sort=False).cumcount().to_numpy() + 1
    keep = pos <= k
    out = pd.DataFrame({col_user: df[col_user].to_numpy()[keep], col_item: df[col_item].to_numpy()[keep],
                        RANK_COL: pos[keep]})
    return out


def per_user_ranking(
    truth: pd.DataFrame,
    recs: pd.DataFrame,
    k: int = 10,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_rank: str = RANK_COL,
    col_score: str = SCORE_COL,
) -> pd.DataFrame:
    """One row per user in both truth and recs: n_relevant, hits and the six ranking metrics at ``k``."""
    _check_columns(truth, [col_user, col_item], "truth")
    top = ordered_top_k(recs, k, col_user=col_user, col_item=col_item, col_rank=col_rank, col_score=col_score)
    t = truth[[col_user, col_item]].drop_duplicates()
    users = np.intersect1d(pd.unique(t[col_user]), pd.unique(top[col_user]))
    cols = ["n_relevant", "hits", *RANKING_METRICS]
    if len(users) == 0:
        return pd.DataFrame(columns=[col_user, *cols])
    t = t[t[col_user].isin(users)]
    top = top[top[col_user].isin(users)]
    n_u = len(users)
    tu = np.searchsorted(users, t[col_user].to_numpy())
    ru = np.searchsorted(users, top[col_user].to_numpy())
    items, codes = np.unique(np.concatenate([t[col_item].to_numpy(), top[col_item].to_numpy()]),
                             return_inverse=True)
    n_items = len(items)
    ti, ri = codes[: len(t)], codes[len(t):]
    hit = np.isin(ru.astype(np.int64) * n_items + ri, tu.astype(np.int64) * n_items + ti)
    rank = top[RANK_COL].to_numpy().astype(np.float64)

    n_rel = np.bincount(tu, minlength=n_u).astype(np.float64)
    hits = np.bincount(ru, weights=hit, minlength=n_u)
    dcg = np.bincount(ru, weights=hit / np.log2(1.0 + rank), minlength=n_u)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(2.0 + np.arange(k)))])
    idcg = ideal[np.minimum(n_rel, k).astype(int)]
    # hits so far at each hit position: the list is sorted by (user, rank), so a running sum minus the
    # running sum at the user's first row counts hits within the user.
    csum = np.cumsum(hit)
    starts = np.r_[0, np.flatnonzero(np.diff(ru)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(ru)]))
    before = np.where(first > 0, csum[first - 1], 0)
    so_far = csum - before
    ap = np.bincount(ru, weights=np.where(hit, so_far / rank, 0.0), minlength=n_u) / np.minimum(n_rel, k)
    first_hit = np.full(n_u, np.inf)
    np.minimum.at(first_hit, ru[hit], rank[hit])
    out = pd.DataFrame({
        col_user: users, "n_relevant": n_rel.astype(int), "hits": hits.astype(int),
        "ndcg": dcg / idcg, "map": ap, "precision": hits / k, "recall": hits / n_rel,
        "hr": (hits > 0).astype(float), "mrr": np.where(np.isfinite(first_hit), 1.0 / first_hit, 0.0),
    })
    return out


def ranking_metrics(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, **cols: str) -> dict[str, float]:
    """The six ranking metrics at ``k`` averaged over common users (all 0.0 when there are none)."""
    per = per_user_ranking(truth, recs, k, **cols)
    if per.empty:
        return {m: 0.0 for m in RANKING_METRICS}
    return {m: float(per[m].mean()) for m in RANKING_METRICS}


def ndcg_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, **cols: str) -> float:
    """Binary nDCG@k (MSR ``ndcg_at_k`` with score_type='binary')."""
    return ranking_metrics(truth, recs, k, **cols)["ndcg"]


def map_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, **cols: str) -> float:
    """MAP@k normalised by ``min(n_relevant, k)`` (MSR ``map_at_k``)."""
    return ranking_metrics(truth, recs, k, **cols)["map"]


def precision_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, **cols: str) -> float:
    """Hits in the top k divided by k."""
    return ranking_metrics(truth, recs, k, **cols)["precision"]


def recall_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, **cols: str) -> float:
    """Hits in the top k divided by the user's number of relevant items."""
    return ranking_metrics(truth, recs, k, **cols)["recall"]


def hr_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, **cols: str) -> float:
    """Share of users with at least one relevant item in the top k."""
    return ranking_metrics(truth, recs, k, **cols)["hr"]


def mrr_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10, **cols: str) -> float:
    """Mean reciprocal position of the first hit within the top k (0 when none)."""
    return ranking_metrics(truth, recs, k, **cols)["mrr"]


def expected_rank(target_score: np.ndarray, scores: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Rank of each row's target among its candidates, ties at their expected position.

    ``scores``/``candidate`` are users x items; ``candidate`` is False for excluded items (history). The
    target itself must be a candidate. Rank = 1 + #higher + #tied_others / 2, so a model that scores
    everything equal gets the middle of the list, not the top.
    """
    t = np.asarray(target_score, dtype=np.float64)[:, None]
    higher = ((scores > t) & candidate).sum(axis=1)
    tied = ((scores == t) & candidate).sum(axis=1) - 1
    return 1.0 + higher + np.maximum(tied, 0) / 2.0


def written_rank(target_score: np.ndarray, scores: np.ndarray, candidate: np.ndarray, tie_order: np.ndarray,
                 target: np.ndarray) -> np.ndarray:
    """Rank of each row's target in the list as written: 1 + #higher + #equal candidates that ``tie_order``
    (the lists' second key, lower first) puts before it. ``target``: the target's column per row."""
    t = np.asarray(target_score, dtype=np.float64)[:, None]
    higher = ((scores > t) & candidate).sum(axis=1)
    before = ((scores == t) & candidate & (tie_order[None, :] < tie_order[np.asarray(target)][:, None])).sum(axis=1)
    return 1.0 + higher + before


def single_target_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """Metrics when each user has exactly one relevant item at (possibly fractional) ``ranks``.

    With one relevant item MAP@k equals MRR@k, recall@k equals HR@k and precision@k is HR@k / k.
    """
    r = np.asarray(ranks, dtype=np.float64)
    if r.size == 0:
        return {m: 0.0 for m in RANKING_METRICS}
    inside = r <= k
    hr = inside.astype(float)
    mrr = np.where(inside, 1.0 / r, 0.0)
    ndcg = np.where(inside, 1.0 / np.log2(1.0 + r), 0.0)
    return {"ndcg": float(ndcg.mean()), "map": float(mrr.mean()), "precision": float(hr.mean() / k),
            "recall": float(hr.mean()), "hr": float(hr.mean()), "mrr": float(mrr.mean())}


# ---------------------------------------------------------------------------------------------------------
# Beyond accuracy


def catalog_coverage(recs: pd.DataFrame, catalog: Iterable | int, k: int | None = None, *,
                     col_user: str = USER_COL, col_item: str = ITEM_COL) -> float:
    """Distinct recommended items (top ``k``) over the catalogue size (MSR: items in train)."""
    n = catalog if isinstance(catalog, int | np.integer) else len(pd.unique(pd.Series(list(catalog))))
    if n == 0:
        return 0.0
    top = recs if k is None else ordered_top_k(recs, k, col_user=col_user, col_item=col_item)
    return float(top[col_item].nunique() / n)


def item_popularity(train: pd.DataFrame, *, col_user: str = USER_COL, col_item: str = ITEM_COL) -> pd.Series:
    """Share of training users who interacted with each item."""
    n_users = train[col_user].nunique()
    return train.drop_duplicates([col_user, col_item]).groupby(col_item).size() / max(n_users, 1)


def novelty(recs: pd.DataFrame, train: pd.DataFrame, k: int = 10, *,
            col_user: str = USER_COL, col_item: str = ITEM_COL) -> float:
    """Mean ``-log2(share of train users who had the item)`` over recommended items (MSR novelty).

    Items never seen in training carry no estimate and are skipped, as in MSR.
    """
    top = ordered_top_k(recs, k, col_user=col_user, col_item=col_item)
    pop = item_popularity(train, col_user=col_user, col_item=col_item)
    p = top[col_item].map(pop).dropna().to_numpy(dtype=float)
    return float(np.mean(-np.log2(p))) if p.size else 0.0


def popularity_bias(recs: pd.DataFrame, train: pd.DataFrame, k: int = 10, *,
                    col_user: str = USER_COL, col_item: str = ITEM_COL) -> float:
    """Average recommendation popularity (ARP): mean over users of the mean train popularity of their list.

    Popularity is the share of training users who had the item, so 1.0 would mean every list is made of
    items that every user already had; compare with the same figure for the popularity baseline.
    """
    top = ordered_top_k(recs, k, col_user=col_user, col_item=col_item)
    if top.empty:
        return 0.0
    pop = item_popularity(train, col_user=col_user, col_item=col_item)
    p = top[col_item].map(pop).fillna(0.0).to_numpy(dtype=float)
    return float(pd.Series(p).groupby(top[col_user].to_numpy()).mean().mean())


def popularity_curve(recs: pd.DataFrame, train: pd.DataFrame, k: int = 10, *, bins: int = 10,
                     col_user: str = USER_COL, col_item: str = ITEM_COL) -> pd.DataFrame:
    """Share of train interactions and of recommendations per item-popularity bin (most popular first).

    Items are ordered by train popularity and cut into ``bins`` equal-size groups; a list that follows
    the head closely has a popularity bias.
    """
    counts = train.groupby(col_item).size().sort_values(ascending=False, kind="stable")
    n = len(counts)
    if n == 0:
        return pd.DataFrame(columns=["bin", "train_share", "rec_share"])
    bin_of = pd.Series(np.minimum(np.arange(n) * bins // n, bins - 1), index=counts.index)
    train_share = counts.groupby(bin_of).sum() / counts.sum()
    top = ordered_top_k(recs, k, col_user=col_user, col_item=col_item)
    rb = top[col_item].map(bin_of).dropna().astype(int)
    rec_share = rb.value_counts().reindex(range(bins), fill_value=0) / max(len(top), 1)
    return pd.DataFrame({"bin": range(bins), "train_share": train_share.reindex(range(bins), fill_value=0.0)
                         .to_numpy(), "rec_share": rec_share.to_numpy()})


def _mean_pairwise_cosine(top: pd.DataFrame, vectors: sp.csr_matrix, row_of: pd.Series,
                          col_user: str, col_item: str) -> float:
    """1 - mean over users of the mean pairwise cosine similarity of their listed items' vectors.

    Uses ``sum_{i<j} v_i.v_j = (|sum v|^2 - sum |v|^2) / 2`` on unit vectors, so no pairs are materialised.
    """
    rows = top[col_item].map(row_of)
    ok = rows.notna().to_numpy()
    sub = top[ok]
    r = rows[ok].astype(int).to_numpy()
    if len(sub) == 0:
        return float("nan")
    V = sp.csr_matrix(vectors, dtype=np.float64)
    norms = np.sqrt(np.asarray(V.multiply(V).sum(axis=1)).ravel())
    V = sp.diags(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)) @ V
    users, uc = np.unique(sub[col_user].to_numpy(), return_inverse=True)
    R = sp.csr_matrix((np.ones(len(r)), (uc, r)), shape=(len(users), V.shape[0]))
    S = R @ V
    sq = np.asarray(S.multiply(S).sum(axis=1)).ravel()
    self_sq = np.bincount(uc, weights=(norms[r] > 0).astype(float), minlength=len(users))
    n = np.bincount(uc, minlength=len(users)).astype(float)
    pairs = n * (n - 1) / 2
    valid = pairs > 0
    if not valid.any():
        return float("nan")
    mean_sim = ((sq - self_sq) / 2)[valid] / pairs[valid]
    return float(1.0 - mean_sim.mean())


def intra_list_diversity(
    recs: pd.DataFrame,
    k: int = 10,
    *,
    item_categories: pd.Series | None = None,
    item_embeddings: tuple[np.ndarray, np.ndarray | sp.spmatrix] | None = None,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    sep: str = "|",
) -> float:
    """Intra-list diversity: 1 - mean pairwise cosine similarity within each user's top ``k``.

    Categories (``item_categories``: item_id -> "A|B" label string) become one-hot vectors, so two items
    with one shared label out of one each are identical (distance 0) and disjoint labels give 1.
    ``item_embeddings`` is ``(item_ids, matrix)``. Users with fewer than two items are skipped; NaN when
    no user has two.
    """
    if (item_categories is None) == (item_embeddings is None):
        raise ValueError("give exactly one of item_categories or item_embeddings")
    top = ordered_top_k(recs, k, col_user=col_user, col_item=col_item)
    if item_categories is not None:
        labels = item_categories.dropna().astype(str).str.split(sep, regex=False).explode().str.strip()
        labels = labels[labels != ""]
        ids = pd.unique(item_categories.index.to_numpy())
        row_of = pd.Series(np.arange(len(ids)), index=ids)
        lab, lab_codes = np.unique(labels.to_numpy(), return_inverse=True)
        V = sp.csr_matrix((np.ones(len(labels)), (row_of[labels.index].to_numpy(), lab_codes)),
                          shape=(len(ids), len(lab)))
        V.data[:] = 1.0  # a label repeated on one item still counts once
    else:
        ids, mat = item_embeddings
        # only the listed items' rows: the gate calls this per part, and converting every item's vector
        # (100k x 512 at tier L) per part made its cost follow the catalogue
        used = np.flatnonzero(pd.Index(np.asarray(ids)).isin(top[col_item].unique()))
        ids, mat = np.asarray(ids)[used], mat[used]
        row_of = pd.Series(np.arange(len(ids)), index=ids)
        V = sp.csr_matrix(mat, dtype=np.float64) if sp.issparse(mat) else sp.csr_matrix(
            np.asarray(mat, dtype=np.float64))
    return _mean_pairwise_cosine(top, V, row_of, col_user, col_item)


def cooccurrence_embeddings(train: pd.DataFrame, *, col_user: str = USER_COL,
                            col_item: str = ITEM_COL) -> tuple[np.ndarray, sp.csr_matrix]:
    """Items as their binary user columns (item x user), for diversity when items have no categories.

    Cosine of these vectors is MSR's default ``item_cooccurrence_count`` similarity (normalised).
    """
    t = train[[col_user, col_item]].drop_duplicates()
    items, ic = np.unique(t[col_item].to_numpy(), return_inverse=True)
    _, uc = np.unique(t[col_user].to_numpy(), return_inverse=True)
    n_users = int(uc.max()) + 1 if len(uc) else 0
    return items, sp.csr_matrix((np.ones(len(t)), (ic, uc)), shape=(len(items), n_users))


def segment_metrics(
    truth: pd.DataFrame,
    recs: pd.DataFrame,
    train: pd.DataFrame,
    k: int = 10,
    *,
    cold_item_max: int = 5,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
) -> pd.DataFrame:
    """Ranking metrics per segment: all, new / returning users, light / heavy users, cold / warm items.

    New users have no training rows; light users have at most the median training history; the item
    segments keep only test rows whose item had at most ``cold_item_max`` training interactions (cold) or
    more (warm), so "cold items" says how well a model finds the long tail a user actually went to.
    """
    per = per_user_ranking(truth, recs, k, col_user=col_user, col_item=col_item)
    hist = train.groupby(col_user).size()
    rows = []

    def add(name: str, p: pd.DataFrame) -> None:
        rows.append({"segment": name, "users": len(p), **{m: float(p[m].mean()) if len(p) else float("nan")
                                                           for m in RANKING_METRICS}})

    add("all users", per)
    n_hist = per[col_user].map(hist).fillna(0)
    add("new users", per[n_hist == 0])
    add("returning users", per[n_hist > 0])
    med = float(hist.median()) if len(hist) else 0.0
    add(f"light users (<= {med:g} train rows)", per[(n_hist > 0) & (n_hist <= med)])
    add(f"heavy users (> {med:g} train rows)", per[n_hist > med])
    icount = train.groupby(col_item).size()
    tc = truth[col_item].map(icount).fillna(0)
    for name, mask in ((f"cold items (<= {cold_item_max} train rows)", tc <= cold_item_max),
                       (f"warm items (> {cold_item_max} train rows)", tc > cold_item_max)):
        add(name, per_user_ranking(truth[mask.to_numpy()], recs, k, col_user=col_user, col_item=col_item))
    return pd.DataFrame(rows)


def paired_lower_bound(a: pd.Series, b: pd.Series, *, confidence: float, resamples: int = 2000,
                       seed: int = 0) -> float:
    """One-sided lower bound at ``confidence`` of mean(a - b) over the same users (paired bootstrap)."""
    d = (a - b.reindex(a.index, fill_value=0.0)).to_numpy(dtype="float64")
    if not len(d):
        return 0.0
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    return float(np.quantile(means, 1.0 - confidence))
