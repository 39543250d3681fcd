"""Named models for the evaluation harness, behind one contract.

Every model is ``fit(train, items)`` then ``recommend(users, k, exclude_seen=True)``; ``train`` has
user_id, item_id and optionally rating and ts; ``items`` (optional) widens the catalogue so that items
without training rows can still be ranked (full ranking in leave-one-out). ``score(users, history)``
gives dense scores over ``item_ids`` and lets a protocol supply a newer history than the one fitted
(leave-one-out's test step) without refitting: item-CF and ALS fold it in, the others ignore it.

Users unknown at fit time get the popularity ranking, so every user gets a full list.

The registry maps names to factories; later stages add theirs with :func:`register_model`
(``ranker`` and ``pipeline`` are reserved for the modules that will register them).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Any

# implicit warns (and slows down) when OpenBLAS runs threads of its own inside its threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from pipeline.errors import ModelError  # noqa: E402
from pipeline.frames import ITEM_COL, RANK_COL, RATING_COL, SCORE_COL, USER_COL  # noqa: E402
from pipeline.recall.factors import BM25Weights, fold_in, train_als, train_bpr  # noqa: E402
from pipeline.recall.itemcf import item_similarity_topk, score_from_similarity  # noqa: E402
from pipeline.recall.popularity import distinct_user_counts  # noqa: E402


def _linear_scores(history: sp.csr_matrix, W: np.ndarray, use_ratings: bool) -> np.ndarray:
    """history @ W for item-item models (SLIM, RP3beta): the history's values, or 1 for presence data."""
    h = sp.csr_matrix(history, dtype=np.float32, copy=True)  # never rewrite the caller's values
    if not use_ratings:
        h.data[:] = 1.0
    return np.asarray(h @ W, dtype=np.float32)


def top_k_rows(scores: np.ndarray, k: int, tie_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and scores of each row's best ``k`` (score desc; equal scores by ``tie_order`` asc,
    the boundary's ties included): the lists exactly as written, whatever argpartition picks among ties."""
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if not n_rows or not k:
        return np.zeros((n_rows, 0), dtype=np.int64), np.zeros((n_rows, 0))
    part = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    thresh = np.take_along_axis(scores, part, axis=1).min(axis=1)
    r, c = np.nonzero(scores >= thresh[:, None])  # the top k and every item tied with the k-th
    sc = scores[r, c]
    order = np.lexsort((tie_order[c], -sc, r))
    r, c, sc = r[order], c[order], sc[order]
    starts = np.searchsorted(r, np.arange(n_rows))
    pos = np.arange(len(r)) - starts[r]
    take = pos < k
    idx = np.zeros((n_rows, k), dtype=np.int64)
    val = np.full((n_rows, k), -np.inf)
    idx[r[take], pos[take]] = c[take]
    val[r[take], pos[take]] = sc[take]
    return idx, val


class Recommender:
    """Base class: id maps, the training matrix, batched scoring, seen-item exclusion and top-k."""

    name = "base"
    #: The dataset's item descriptors (:meth:`set_item_descriptors`); None: ids only.
    item_descriptors: pd.DataFrame | None = None
    #: Whether :meth:`score` uses a supplied history (fold-in) instead of the fitted one.
    uses_history = False
    #: Whether the model reads the *order* of a history (sequential models): a matrix has none, so the
    #: harness hands the history rows over with :meth:`set_history` before scoring with a supplied one.
    uses_order = False

    def __init__(self, *, use_ratings: bool = True, seed: int = 42, batch_cells: int = 20_000_000) -> None:
        self.use_ratings = use_ratings
        self.seed = seed
        self.batch_cells = batch_cells
        self.user_ids: np.ndarray = np.zeros(0)
        self.item_ids: np.ndarray = np.zeros(0)
        self.user_items: sp.csr_matrix = sp.csr_matrix((0, 0))
        self.popularity: np.ndarray = np.zeros(0)
        self.train_rows: pd.DataFrame | None = None
        self.valid_rows: pd.DataFrame | None = None
        self.history_sequences: dict | None = None

    # -- contract -------------------------------------------------------------------------------------
    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None = None) -> Recommender:
        """Index users/items (catalogue = train items plus ``items.item_id``) and train the model."""
        for col in (USER_COL, ITEM_COL):
            if col not in train.columns:
                raise ModelError(f"{self.name}: training frame has no {col!r} column",
                                 f"columns are {list(train.columns)}")
        if train.empty:
            raise ModelError(f"{self.name}: empty training frame", "the split left no training rows")
        ids = [train[ITEM_COL].to_numpy()]
        if items is not None and ITEM_COL in items.columns:
            ids.append(items[ITEM_COL].to_numpy())
        self.item_ids = np.unique(np.concatenate(ids))
        self.user_ids = np.unique(train[USER_COL].to_numpy())
        self.user_items = self.matrix(train)
        self.popularity = distinct_user_counts(self.user_items).astype(np.float32)
        # equal scores are ordered by training popularity, then item id: the order lists are written in
        self.tie_order = np.empty(len(self.item_ids), dtype=np.int64)
        self.tie_order[np.lexsort((self.item_ids, -self.popularity))] = np.arange(len(self.item_ids))
        self.train_rows = train
        self.history_sequences = None
        self._train_sequences: dict | None = None
        self._fit(self.user_items)
        return self

    def set_validation(self, valid: pd.DataFrame | None) -> None:
        """Held-out next items (leave-one-out's item -2) that a model may use for early stopping or
        tuning before :meth:`fit`; never the test item. Models that do not tune ignore them."""
        self.valid_rows = valid

    def set_item_descriptors(self, items: pd.DataFrame | None) -> None:
        """The dataset's item descriptors (``item_id`` and any of title, description, category, brand, price),
        handed over before :meth:`fit`; only models that read item text or categories use them."""
        self.item_descriptors = items

    def set_history(self, rows: pd.DataFrame | None) -> None:
        """Ordered history rows (user_id, item_id, ts / event_id) behind the next supplied-history scoring
        calls; only models with ``uses_order`` read them (``None`` goes back to the fitted history)."""
        if not self.uses_order:
            return
        from pipeline.recall.sequential import ordered_sequences

        self.history_sequences = None if rows is None else ordered_sequences(rows, self.item_ids)

    def sequences_for(self, users: np.ndarray, supplied: bool) -> list[np.ndarray]:
        """Catalogue-index sequences (oldest first) of ``users``: the supplied history set with
        :meth:`set_history` when ``supplied``, else the training rows; empty for users without rows."""
        src = self.history_sequences if supplied and self.history_sequences is not None else None
        if src is None:
            if getattr(self, "_train_sequences", None) is None:
                from pipeline.recall.sequential import ordered_sequences

                self._train_sequences = ordered_sequences(self.train_rows, self.item_ids) \
                    if self.train_rows is not None else {}
            src = self._train_sequences
        empty = np.zeros(0, np.int64)
        return [src.get(u, empty) for u in users.tolist()]

    def matrix(self, rows: pd.DataFrame) -> sp.csr_matrix:
        """users x items matrix of ``rows`` (ratings when present and wanted, else 1; repeats add up).

        Rows whose user or item is unknown are dropped; the row space is ``self.user_ids``.
        """
        u = np.searchsorted(self.user_ids, rows[USER_COL].to_numpy())
        i = np.searchsorted(self.item_ids, rows[ITEM_COL].to_numpy())
        u_ok = (u < len(self.user_ids)) & (self.user_ids[np.minimum(u, len(self.user_ids) - 1)]
                                          == rows[USER_COL].to_numpy())
        i_ok = (i < len(self.item_ids)) & (self.item_ids[np.minimum(i, len(self.item_ids) - 1)]
                                          == rows[ITEM_COL].to_numpy())
        ok = u_ok & i_ok
        if self.use_ratings and RATING_COL in rows.columns:
            w = rows[RATING_COL].to_numpy(dtype=np.float32, na_value=1.0)
        else:
            w = np.ones(len(rows), dtype=np.float32)
        m = sp.csr_matrix((w[ok], (u[ok], i[ok])), shape=(len(self.user_ids), len(self.item_ids)),
                          dtype=np.float32)
        m.sum_duplicates()
        return m

    def score(self, users: Sequence | np.ndarray, history: sp.csr_matrix | None = None) -> np.ndarray:
        """Dense ``len(users) x len(item_ids)`` scores; ``history`` rows (aligned with users) override
        the fitted history for models that fold in. Unknown users get popularity scores."""
        users = np.asarray(users)
        rows, known = self._rows(users)
        hist = self.user_items[np.maximum(rows, 0)] if history is None else sp.csr_matrix(history)
        out = np.empty((len(users), len(self.item_ids)), dtype=np.float32)
        if known.any():
            out[known] = self._score(rows[known], hist[np.flatnonzero(known)], history is not None)
        if (~known).any():
            out[~known] = self.popularity
        return out

    def recommend(self, users: Sequence | np.ndarray, k: int = 10, exclude_seen: bool = True,
                  history: sp.csr_matrix | None = None) -> pd.DataFrame:
        """Top-``k`` items per user as user_id, item_id, rank (1..k), score; seen = training rows or
        ``history`` when given. A user with fewer than ``k`` unseen items gets a shorter list."""
        if k < 1:
            raise ModelError(f"{self.name}: k must be >= 1, got {k}")
        users = np.asarray(pd.unique(np.asarray(users)))
        n_items = len(self.item_ids)
        kk = min(k, n_items)
        step = max(1, self.batch_cells // max(n_items, 1))
        parts = []
        for s in range(0, len(users), step):
            ub = users[s: s + step]
            h = None if history is None else sp.csr_matrix(history)[s: s + step]
            sc = self.score(ub, h).astype(np.float64)
            if exclude_seen:
                seen = self._seen(ub, h)
                sc[seen.nonzero()] = -np.inf
            idx, val = top_k_rows(sc, kk, self.tie_order)
            keep = np.isfinite(val)
            parts.append(pd.DataFrame({
                USER_COL: np.repeat(ub, kk).reshape(len(ub), kk)[keep],
                ITEM_COL: self.item_ids[idx[keep]],
                RANK_COL: np.tile(np.arange(1, kk + 1), (len(ub), 1))[keep],
                SCORE_COL: val[keep],
            }))
        if not parts:
            return pd.DataFrame({USER_COL: [], ITEM_COL: [], RANK_COL: [], SCORE_COL: []})
        return pd.concat(parts, ignore_index=True)

    # -- helpers and hooks ----------------------------------------------------------------------------
    def _rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.searchsorted(self.user_ids, users)
        known = (r < len(self.user_ids)) & (self.user_ids[np.minimum(r, len(self.user_ids) - 1)] == users)
        return np.where(known, r, -1), known

    def _seen(self, users: np.ndarray, history: sp.csr_matrix | None) -> sp.csr_matrix:
        if history is not None:
            return sp.csr_matrix(history)
        rows, known = self._rows(users)
        m = self.user_items[np.maximum(rows, 0)].tolil()
        for j in np.flatnonzero(~known):
            m.rows[j], m.data[j] = [], []
        return m.tocsr()

    def _fit(self, user_items: sp.csr_matrix) -> None:
        raise NotImplementedError

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        raise NotImplementedError


class RandomModel(Recommender):
    """Uniform random scores, fixed per (seed, user, item): the floor every model must beat."""

    name = "random"

    def _fit(self, user_items: sp.csr_matrix) -> None:
        self._table = np.random.default_rng(self.seed).random(
            (len(self.user_ids), len(self.item_ids)), dtype=np.float32) if user_items.shape[0] * \
            user_items.shape[1] <= 50_000_000 else None

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        if self._table is not None:
            return self._table[rows]
        return np.vstack([np.random.default_rng([self.seed, int(r)]).random(len(self.item_ids), np.float32)
                          for r in rows])


class PopularityModel(Recommender):
    """Items by number of distinct training users (the same list for everyone)."""

    name = "popularity"

    def _fit(self, user_items: sp.csr_matrix) -> None:
        pass

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(rows), len(self.item_ids))).copy()


class ItemCFModel(Recommender):
    """Item-kNN: cosine top-``neighbours`` per item (pipeline.recall.itemcf); score = history @ S.

    ``neighbours=None`` keeps every neighbour: on ml-100k's inner split of train that was best
    (nDCG@10 0.249 vs 0.240-0.246 for 20-200 neighbours), and binary presence matched ratings. The top-k
    build then holds ``n_items^2`` (index, score) pairs: above ``max_gib`` of them it refuses.
    """

    name = "item-cf"
    uses_history = True

    def __init__(self, *, neighbours: int | None = None, shrink: float = 0.0, method: str = "cosine",
                 use_ratings: bool = False, max_gib: float = 8.0, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.neighbours, self.shrink, self.method, self.max_gib = neighbours, shrink, method, max_gib

    def _fit(self, user_items: sp.csr_matrix) -> None:
        n = user_items.shape[1]
        k = self.neighbours or max(n - 1, 1)
        need = n * k * 12 / 2**30  # int64 index + float32 score per kept pair
        if need > self.max_gib:
            raise ModelError(f"{self.name}: {k} neighbours for each of {n} items need about {need:.0f} GiB "
                             f"(max_gib={self.max_gib:g})", "set neighbours, e.g. {\"neighbours\": 100}")
        self.similarity = item_similarity_topk(user_items, k=k, method=self.method,  # type: ignore[arg-type]
                                               shrink=self.shrink)

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        return score_from_similarity(history, self.similarity)


class SARModel(ItemCFModel):
    """SAR-style: jaccard co-occurrence similarity (all neighbours) with rating-weighted affinity."""

    name = "sar"

    def __init__(self, *, neighbours: int | None = None, method: str = "jaccard", use_ratings: bool = True,
                 **kw: Any) -> None:
        super().__init__(neighbours=neighbours, method=method, use_ratings=use_ratings, **kw)


class _ImplicitModel(Recommender):
    """Shared parts of the implicit (CPU) factorisation models.

    ``seeds`` > 1 bags the model: ``seeds`` fits with seeds ``seed, seed + 1, ...`` whose scores are
    averaged, which takes the random-start lottery out of the result. The mean of the fits' dot products
    is one dot product of the concatenated factors (user factors divided by ``seeds``), so scoring and
    the factor attributes keep their shape contract; ``seeds=1`` is the single fit, unchanged.
    """

    uses_history = False

    def __init__(self, *, factors: int, regularization: float, iterations: int, num_threads: int = 0,
                 use_ratings: bool = True, seeds: int = 1, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        if int(seeds) < 1:
            raise ModelError(f"{self.name}: seeds must be >= 1, got {seeds}", "seeds is the number of bagged fits")
        self.factors, self.regularization, self.iterations = factors, regularization, iterations
        self.num_threads, self.seeds = num_threads, int(seeds)

    def _train(self, user_items: sp.csr_matrix, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(user factors, item factors) of one fit with ``seed`` (None: ``self.seed``)."""
        raise NotImplementedError

    def _fit(self, user_items: sp.csr_matrix) -> None:
        # training lives in pipeline.recall.factors, shared with the nightly run (NaN checks included)
        # the first fit is called as before bagging existed (subclasses may override _train(user_items))
        fits = [self._train(user_items)] + [self._train(user_items, self.seed + k) for k in range(1, self.seeds)]
        #: each fit's item factors, for a fold-in per fit
        self.bag_item_factors = [itf for _, itf in fits]
        if self.seeds == 1:
            self.user_factors, self.item_factors = fits[0]
        else:
            self.user_factors = (np.hstack([uf for uf, _ in fits]) / np.float32(self.seeds)).astype(np.float32)
            self.item_factors = np.hstack(self.bag_item_factors).astype(np.float32)

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        uf = self.user_factors[rows]
        if supplied and self.uses_history:
            uf = self._fold_in(history)
        return (uf @ self.item_factors.T).astype(np.float32)

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError


class ALSModel(_ImplicitModel):
    """implicit's AlternatingLeastSquares (CPU); confidence = alpha * rating (1 + alpha r in the loss).

    Defaults chosen on an inner 75/25 (seed 7) MSR split of the ml-100k training part only: a grid over
    factors 8-128, regularization 0.1-50, alpha 0.5-20, ratings vs presence; best inner nDCG@10 0.272
    at 24 factors, regularization 20, alpha 3, presence (ratings as weights were worse).

    That 0.272 was seed 42's luck: seeds 0-7 gave 0.2645-0.2701 (mean 0.267). ``seeds=8`` (bagging, see
    :class:`_ImplicitModel`) gave 0.2694 there, and in ``pipeline``'s merge (ml-100k test nDCG@10) 0.4976-0.4985
    over five disjoint seed sets where single fits spread 0.4943-0.4989 (research/tune_ml100k.py).

    ``weighting="bm25"`` fits on :class:`~pipeline.recall.factors.BM25Weights` of the matrix (``bm25_k1``,
    ``bm25_b``; a folded-in history is weighted with the training statistics). Alone it ranks worse on
    ml-100k, but it complements EASE: in ``pipeline``'s merge it took the test figure from 0.4981 to 0.5082
    (research/probe_ml100k.py, sixth round).
    """

    name = "als"
    uses_history = True  # ALS folds a new history in exactly (one least-squares solve per user)

    def __init__(self, *, factors: int = 24, regularization: float = 20.0, alpha: float = 3.0,
                 iterations: int = 15, use_ratings: bool = False, weighting: str = "none",
                 bm25_k1: float = 10.0, bm25_b: float = 0.5, **kw: Any) -> None:
        super().__init__(factors=factors, regularization=regularization, iterations=iterations,
                         use_ratings=use_ratings, **kw)
        if weighting not in ("none", "bm25"):
            raise ModelError(f"als: unknown weighting {weighting!r}", "one of: none, bm25")
        self.alpha, self.weighting, self.bm25_k1, self.bm25_b = alpha, weighting, bm25_k1, bm25_b
        #: the fitted BM25 statistics (``weighting="bm25"``), reapplied to a folded-in history
        self.bm25: BM25Weights | None = None

    def _fit(self, user_items: sp.csr_matrix) -> None:
        if self.weighting == "bm25":
            self.bm25, user_items = BM25Weights.fit_transform(user_items, k1=self.bm25_k1, b=self.bm25_b)
        super()._fit(user_items)

    def _train(self, user_items: sp.csr_matrix, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        uf, itf, _ = train_als(user_items, factors=self.factors, regularization=self.regularization,
                               alpha=self.alpha, iterations=self.iterations,
                               seed=self.seed if seed is None else seed,
                               num_threads=self.num_threads)
        return uf, itf

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        # one exact solve per bagged fit, concatenated like the fitted user factors
        if self.bm25 is not None:
            history = self.bm25.transform(history)
        parts = [fold_in(history, itf, self.regularization, alpha=self.alpha) for itf in self.bag_item_factors]
        return parts[0] if len(parts) == 1 else (np.hstack(parts) / np.float32(len(parts))).astype(np.float32)


class BPRModel(_ImplicitModel):
    """implicit's BayesianPersonalizedRanking (CPU); every training row is a positive.

    Defaults from the same inner split of train (factors 10-200, learning rate 0.003-0.05, regularization
    0.001-0.1, 10-300 epochs, ratings-weighted sampling, unverified negatives; research/tune_bpr_inner.py):
    implicit's BPR overfits fast on ml-100k (300 epochs is worse than 60). Mean inner nDCG@10 over 4 seeds:
    0.2090 at 96 factors, lr 0.0075, reg 0.01, 80 epochs (0.2046 for the earlier 64 / 0.01 / 60; the seed
    spread is about 0.005); cornac's settings (200 factors, reg 0.001, 100 epochs) gave 0.1765.
    """

    name = "bpr"

    def __init__(self, *, factors: int = 96, learning_rate: float = 0.0075, regularization: float = 0.01,
                 iterations: int = 80, use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(factors=factors, regularization=regularization, iterations=iterations,
                         use_ratings=use_ratings, **kw)
        self.learning_rate = learning_rate

    def _train(self, user_items: sp.csr_matrix, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        uf, itf, _ = train_bpr(user_items, factors=self.factors, learning_rate=self.learning_rate,
                               regularization=self.regularization, iterations=self.iterations,
                               seed=self.seed if seed is None else seed,
                               num_threads=self.num_threads)
        return uf, itf


class ContentModel(Recommender):
    """Content recall (pipeline.recall.content): cosine of each item to the mean embedding of the user's items.

    Embeddings come from ``embeddings`` (item_id, embedding) or from the text of ``items`` (title, brand,
    category; hashed TF-IDF), given as a parameter or as the items frame passed to fit. Items nobody has
    interacted with are scored like any other, which is the point of this source.
    """

    name = "content"

    def __init__(self, *, embeddings: pd.DataFrame | None = None, items: pd.DataFrame | None = None,
                 use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.embeddings, self.items = embeddings, items

    def fit(self, train: pd.DataFrame, items: pd.DataFrame | None = None) -> Recommender:
        if self.items is None and items is not None and "title" in items.columns:
            self.items = items
        return super().fit(train, items)

    def _fit(self, user_items: sp.csr_matrix) -> None:
        from pipeline.recall.text import text_embeddings

        emb = self.embeddings
        if emb is None:
            if self.items is None or "title" not in self.items.columns:
                raise ModelError("content: no item embeddings and no item text",
                                 "pass embeddings= or items= (with a title column) in the model params")
            emb = text_embeddings(self.items.drop_duplicates(ITEM_COL))
        emb = emb.drop_duplicates(ITEM_COL).set_index(ITEM_COL)["embedding"]
        dim = len(emb.iloc[0]) if len(emb) else 1
        E = np.zeros((len(self.item_ids), dim), np.float32)
        have = np.isin(self.item_ids, emb.index.to_numpy())
        if have.any():
            E[have] = np.vstack(emb.loc[self.item_ids[have]].to_numpy())
        E /= np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
        self.E = E

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        prof = np.asarray(sp.csr_matrix(history, dtype=np.float32) @ self.E)
        prof /= np.maximum(np.linalg.norm(prof, axis=1, keepdims=True), 1e-12)
        return (prof @ self.E.T).astype(np.float32)


def _check_dense_items(name: str, n: int, max_items: int) -> None:
    """Refuse catalogues too large for a dense items x items matrix (what the item models below keep)."""
    if n > max_items:
        raise ModelError(f"{name}: {n} items is more than max_items={max_items}",
                         f"{name} keeps a dense items x items matrix; raise max_items or use item-cf")


class EASEModel(Recommender):
    """EASE (Steck 2019): closed-form item-item weights ``B = I - P / diag(P)``, ``P = (X^T X + L)^-1``,
    zero diagonal; score = history @ B. Dense ``n_items^2``: meant for catalogues up to ~10k items
    (refuses more than ``max_items``).

    ``L = l2 I`` by default. ``dropout`` p > 0 is EDLAE (Steck 2020, "Autoencoders that don't overfit
    towards the identity"): emphasised denoising with dropout p in closed form, which adds
    ``p / (1 - p) * diag(X^T X)`` to each item's l2, so popular items are shrunk more.
    ``zero_diagonal=False`` drops the constraint (DLAE: ``B = I - P L``; a seen item's own weight only
    matters for seen items, which the lists exclude).
    """

    name = "ease"
    uses_history = True

    def __init__(self, *, l2: float = 500.0, dropout: float = 0.0, zero_diagonal: bool = True,
                 max_items: int = 10_000, use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"{self.name}: dropout must be in [0, 1), got {dropout}",
                             "dropout is EDLAE's dropout probability p")
        self.l2, self.dropout, self.zero_diagonal, self.max_items = l2, dropout, zero_diagonal, max_items

    def _fit(self, user_items: sp.csr_matrix) -> None:
        n = user_items.shape[1]
        _check_dense_items(self.name, n, self.max_items)
        X = sp.csr_matrix(user_items, dtype=np.float64)
        G = (X.T @ X).toarray()
        lam = self.l2 + self.dropout / (1.0 - self.dropout) * np.diag(G)  # per-item l2 (EDLAE)
        G[np.diag_indices(n)] += lam
        P = np.linalg.inv(G)
        if self.zero_diagonal:
            B = -P / np.diag(P)[None, :]
            B[np.diag_indices(n)] = 0.0
        else:
            B = np.eye(n) - P * lam[None, :]
        self.B = B.astype(np.float32)

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        return np.asarray(sp.csr_matrix(history, dtype=np.float32) @ self.B, dtype=np.float32)


class SLIMModel(Recommender):
    """SLIM-ElasticNet (Ning & Karypis 2011): each item's column is regressed on the other items' columns
    with a non-negative elastic net (scikit-learn's ``ElasticNet``, ``positive=True``, no intercept, the
    item's own column zeroed during its fit); score = history @ W.

    scikit-learn's objective per item is ``1 / (2 n_users) ||x_j - X w||^2 + alpha l1_ratio |w|_1
    + alpha (1 - l1_ratio) / 2 ||w||^2``. ``neighbours`` keeps each item's strongest weights (None: all
    non-zero ones). Cyclic coordinate descent: the same data give the same weights. One fit per item, so
    fitting costs items x (one sparse coordinate descent); a dense ``n_items^2`` matrix is kept
    (refuses more than ``max_items``).

    Defaults from the inner split of ml-100k's training part (research/tune_ml100k.py; alpha 0.02-2 x
    l1_ratio 0.0001-0.2): nDCG@10 0.2694 at alpha 0.5, l1_ratio 0.001 (EASE 0.2695 there): with so little
    L1 it is EASE with non-negative weights. On ratings 0.2688 (alpha 10, l1_ratio 0.001). About 4 s a
    fit on one core.
    """

    name = "slim"
    uses_history = True

    def __init__(self, *, alpha: float = 0.5, l1_ratio: float = 0.001, max_iter: int = 100, tol: float = 1e-4,
                 neighbours: int | None = None, max_items: int = 10_000, use_ratings: bool = False,
                 **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        if alpha <= 0 or not 0.0 <= l1_ratio <= 1.0:
            raise ModelError(f"{self.name}: alpha must be > 0 and l1_ratio in [0, 1], got {alpha}, {l1_ratio}",
                             "alpha is the elastic net's overall penalty, l1_ratio its L1 share")
        self.alpha, self.l1_ratio, self.max_iter, self.tol = alpha, l1_ratio, max_iter, tol
        self.neighbours, self.max_items = neighbours, max_items

    def _fit(self, user_items: sp.csr_matrix) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import ElasticNet

        n = user_items.shape[1]
        _check_dense_items(self.name, n, self.max_items)
        X = sp.csc_matrix(user_items, dtype=np.float64)
        X.sort_indices()
        enet = ElasticNet(alpha=self.alpha, l1_ratio=self.l1_ratio, positive=True, fit_intercept=False,
                          copy_X=False, precompute=False, selection="cyclic", max_iter=self.max_iter,
                          tol=self.tol)
        W = np.zeros((n, n), dtype=np.float32)
        with warnings.catch_warnings():
            # a capped max_iter is a deliberate speed/accuracy trade-off, not an error
            warnings.simplefilter("ignore", category=ConvergenceWarning)
            for j in range(n):
                lo, hi = X.indptr[j], X.indptr[j + 1]
                if lo == hi:
                    continue  # nobody has the item: its column stays 0
                y = X[:, j].toarray().ravel()
                saved = X.data[lo:hi].copy()
                X.data[lo:hi] = 0.0  # the item may not explain itself
                enet.fit(X, y)
                X.data[lo:hi] = saved
                W[:, j] = enet.coef_
        if not np.isfinite(W).all():
            raise ModelError(f"{self.name}: non-finite weights after fitting", "raise alpha")
        if self.neighbours is not None and self.neighbours < n:
            # keep each target item's strongest ``neighbours`` source weights (ties by row: deterministic)
            drop = np.argsort(-W, axis=0, kind="stable")[self.neighbours:, :]
            np.put_along_axis(W, drop, 0.0, axis=0)
        self.W = W

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        return _linear_scores(history, self.W, self.use_ratings)


class HigherEASEModel(Recommender):
    """Higher-order EASE (Steck & Liang 2021, "Negative interactions for improved collaborative filtering:
    don't go deeper, go higher"): EASE plus a term for item *pairs*. ``Z`` has one column per selected pair
    (i, j), ``z_u = sqrt(x_ui x_uj)`` (1 when the user has both, for presence data); the model minimises
    ``||X - X B - Z C||^2 + l2 ||B||^2 + l2_pairs ||C||^2`` with ``diag(B) = 0`` and ``C[(i, j), i] =
    C[(i, j), j] = 0`` (a pair may not predict its own items). As in the paper's reference algorithm,
    B and C are updated in turn for ``iterations`` rounds: B in closed form (EASE on the residual
    target), C by ADMM (ridge with penalty ``rho`` towards the masked copy D, then D = mask(C), then the
    dual update); the masked D is what scores. Score = x B + z D.

    Pairs: the ``pairs`` most frequent co-occurring item pairs with at least ``min_support`` users
    (ties by index). ``pairs=0`` is plain EASE. Dense ``n_items^2`` plus ``pairs^2``: refuses more than
    ``max_items`` items.

    On ml-100k the pairs do not pay (the paper's gains were on ML-20M, Netflix, MSD): on the inner split
    of the training part (research/tune_ml100k.py; l2 400 binary or 6000 on ratings, l2_pairs 1000-16000
    (x10 on ratings), 500 or 2000 pairs) nDCG@10 rose monotonically with l2_pairs towards plain EASE
    (0.2643 -> 0.2690 binary, EASE 0.2695; 0.2622 -> 0.2693 on ratings, EASE 0.2690). 500 pairs fit in
    about 7 s on one core, 2000 in about 20 s.
    """

    name = "ease-pairs"
    uses_history = True

    def __init__(self, *, l2: float = 500.0, l2_pairs: float = 2000.0, pairs: int = 2000, min_support: int = 2,
                 rho: float = 1000.0, iterations: int = 20, max_items: int = 10_000, use_ratings: bool = False,
                 **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        if pairs < 0 or iterations < 1 or rho <= 0:
            raise ModelError(f"{self.name}: pairs must be >= 0, iterations >= 1 and rho > 0 "
                             f"(got {pairs}, {iterations}, {rho})", "see the ease-pairs docstring")
        self.l2, self.l2_pairs, self.pairs, self.min_support = l2, l2_pairs, int(pairs), min_support
        self.rho, self.iterations, self.max_items = rho, iterations, max_items

    def _pair_matrix(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """users x pairs: sqrt(x_i x_j) for each selected pair (i, j)."""
        a, b = self.pair_items[:, 0], self.pair_items[:, 1]
        Xc = sp.csc_matrix(X, dtype=np.float64)
        return sp.csr_matrix(Xc[:, a].multiply(Xc[:, b]).sqrt())

    def _fit(self, user_items: sp.csr_matrix) -> None:
        n = user_items.shape[1]
        _check_dense_items(self.name, n, self.max_items)
        X = sp.csr_matrix(user_items, dtype=np.float64)
        G = (X.T @ X).toarray()
        # co-occurrence counts (distinct users) pick the pairs, whatever the values are
        Xb = (X > 0).astype(np.float64)
        co = np.triu((Xb.T @ Xb).toarray(), k=1)
        i, j = np.nonzero(co >= max(self.min_support, 1))
        order = np.lexsort((j, i, -co[i, j]))[: self.pairs]
        self.pair_items = np.stack([i[order], j[order]], axis=1).astype(np.int64)
        m = len(self.pair_items)
        diag = np.diag_indices(n)
        Gd = G[diag].copy()
        G[diag] += self.l2
        P = np.linalg.inv(G)
        G[diag] = Gd
        if m == 0:  # no pair is frequent enough: plain EASE
            B = -P / np.diag(P)[None, :]
            B[diag] = 0.0
            self.B, self.D = B.astype(np.float32), np.zeros((0, n), np.float32)
            return
        Z = self._pair_matrix(X)
        ZtX = (Z.T @ X).toarray()
        ZtZ = (Z.T @ Z).toarray()
        ZtZ[np.diag_indices(m)] += self.l2_pairs + self.rho
        Q = np.linalg.inv(ZtZ)
        mask = np.ones((m, n))
        mask[np.arange(m), self.pair_items[:, 0]] = 0.0
        mask[np.arange(m), self.pair_items[:, 1]] = 0.0
        C = np.zeros((m, n))
        D = np.zeros((m, n))
        U = np.zeros((m, n))
        for _ in range(self.iterations):
            B = P @ (G - ZtX.T @ D)  # EASE on the target X - Z D, then the zero-diagonal correction
            B -= P * (np.diag(B) / np.diag(P))[None, :]
            C = Q @ (ZtX - ZtX @ B + self.rho * (D - U))
            D = C * mask
            U += C - D
        if not (np.isfinite(B).all() and np.isfinite(D).all()):
            raise ModelError(f"{self.name}: non-finite weights after fitting", "raise l2, l2_pairs or rho")
        self.B, self.D = B.astype(np.float32), D.astype(np.float32)

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        h = sp.csr_matrix(history, dtype=np.float64)
        out = np.asarray(h @ self.B, dtype=np.float64)
        if len(self.D):
            out += np.asarray(self._pair_matrix(h) @ self.D)
        return out.astype(np.float32)


class EDLAEModel(EASEModel):
    """EASE with EDLAE's dropout-scaled per-item l2 (see :class:`EASEModel`) under its own name, so a
    merge can hold it next to plain EASE.

    On the inner split of ml-100k's training part (research/tune_ml100k.py; l2 25-800 x dropout
    0.1-0.67) the surface is flat: 0.2702 at l2 400, dropout 0.5 (plain EASE 0.2695); with ratings
    0.2732 (l2 4000, dropout 0.67; EASE-ratings 0.2690 at l2 6000); without the zero-diagonal constraint
    0.2731 (l2 800, dropout 0.1; dropout 0 0.2732).
    """

    name = "edlae"

    def __init__(self, *, l2: float = 400.0, dropout: float = 0.5, **kw: Any) -> None:
        super().__init__(l2=l2, dropout=dropout, **kw)


class UserEASEModel(Recommender):
    """EASE over users (the transpose): each user's row is reconstructed from the *other* users' rows,
    ``B = I - P / diag(P)``, ``P = (X X^T + l2 I)^-1`` (users x users, zero diagonal); score = B^T X.
    A learned user-kNN. A supplied history ``h`` folds in by ridge regression on the training users,
    ``b = h X^T P``. Dense ``n_users^2``: refuses more than ``max_users``.

    Default l2 from the inner split of ml-100k's training part: nDCG@10 0.2732 at l2 800 (50-1600 tried;
    user-knn 0.2616 there); ratings as values were worse (0.2711 at l2 8000).
    """

    name = "user-ease"
    uses_history = True

    def __init__(self, *, l2: float = 800.0, max_users: int = 10_000, use_ratings: bool = False,
                 **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.l2, self.max_users = l2, max_users

    def _fit(self, user_items: sp.csr_matrix) -> None:
        n = user_items.shape[0]
        if n > self.max_users:
            raise ModelError(f"{self.name}: {n} users is more than max_users={self.max_users}",
                             f"{self.name} keeps a dense users x users matrix; raise max_users or use user-knn")
        X = sp.csr_matrix(user_items, dtype=np.float64)
        G = (X @ X.T).toarray()
        G[np.diag_indices(n)] += self.l2
        P = np.linalg.inv(G)
        B = -P / np.diag(P)[None, :]
        B[np.diag_indices(n)] = 0.0
        self._P, self._X = P, X
        self._fitted = np.asarray((X.T @ B).T, dtype=np.float32)  # users x items: B^T X

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        if not supplied:
            return self._fitted[rows]
        b = (sp.csr_matrix(history, dtype=np.float64) @ self._X.T).toarray() @ self._P
        return np.asarray((self._X.T @ b.T).T, dtype=np.float32)


class _BaggedTorchModel(Recommender):
    """A torch model fitted ``seeds`` times (seeds ``seed``, ``seed`` + 1, ...) on one thread, its fits kept in
    ``_nets``; subclasses give ``_train_one(X, seed)`` and average the fits when scoring."""

    seeds = 1

    def _set_seeds(self, seeds: int) -> None:
        if int(seeds) < 1:
            raise ModelError(f"{self.name}: seeds must be >= 1, got {seeds}", "seeds is the number of bagged fits")
        self.seeds = int(seeds)

    def _fit(self, user_items: sp.csr_matrix) -> None:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread: deterministic, and the harness runs models side by side
        try:
            X = torch.from_numpy(sp.csr_matrix(user_items, dtype=np.float32).toarray())
            self._nets = [self._train_one(X, self.seed + k) for k in range(self.seeds)]
        finally:
            torch.set_num_threads(threads)

    def _train_one(self, X: Any, seed: int) -> Any:
        raise NotImplementedError


class MultVAEModel(_BaggedTorchModel):
    """Mult-VAE (Liang et al. 2018, "Variational autoencoders for collaborative filtering"), CPU torch.

    A user's history row (L2-normalised, ``dropout`` on the input) is encoded to a Gaussian of size
    ``latent`` through one ``hidden`` tanh layer; the decoder's softmax over the catalogue is trained with
    the multinomial log-likelihood plus a KL weight annealed linearly from 0 to ``beta`` over
    ``anneal_steps`` batches. Scores are the decoder's logits at the mean code, so a supplied history folds
    in with one forward pass. ``seeds`` > 1 averages the logits of that many nets (seeds ``seed, seed + 1,
    ...``). Seeded and single-threaded: the same data and seed give the same scores.

    Defaults from the inner split of ml-100k's training part (epochs 15-200, beta 0.2-2, annealing over
    200 or 2000 batches): nDCG@10 0.2598 at 100 epochs, beta 1, 200 annealing steps (longer training
    overfits: 150 epochs 0.2537); ``seeds=3`` of it 0.2674. About the linear models' level there (EASE
    0.27), but it added nothing measurable to ``pipeline``'s merge (inner 0.2778 -> 0.2788).
    """

    name = "mult-vae"
    uses_history = True

    def __init__(self, *, hidden: int = 600, latent: int = 200, dropout: float = 0.5, beta: float = 1.0,
                 anneal_steps: int = 200, epochs: int = 100, batch_size: int = 64, learning_rate: float = 1e-3,
                 weight_decay: float = 0.0, seeds: int = 1, use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self._set_seeds(seeds)
        self.hidden, self.latent, self.dropout, self.beta = hidden, latent, dropout, beta
        self.anneal_steps, self.epochs, self.batch_size = anneal_steps, epochs, batch_size
        self.learning_rate, self.weight_decay = learning_rate, weight_decay


    def _train_one(self, X: Any, seed: int) -> Any:
        import torch
        from torch.nn import functional as F

        torch.manual_seed(seed)
        n = X.shape[1]
        net = torch.nn.ModuleDict({
            "enc": torch.nn.Linear(n, self.hidden), "mu": torch.nn.Linear(self.hidden, self.latent),
            "logvar": torch.nn.Linear(self.hidden, self.latent),
            "dec1": torch.nn.Linear(self.latent, self.hidden), "dec2": torch.nn.Linear(self.hidden, n)})
        opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        step = 0
        for _ in range(self.epochs):
            for idx in torch.randperm(len(X), generator=gen).split(self.batch_size):
                x = X[idx]
                h = torch.tanh(net["enc"](F.dropout(F.normalize(x, dim=1), self.dropout)))
                mu, logvar = net["mu"](h), net["logvar"](h)
                z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
                logits = net["dec2"](torch.tanh(net["dec1"](z)))
                nll = -(torch.log_softmax(logits, 1) * x).sum(1).mean()
                kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
                loss = nll + min(self.beta, self.beta * step / max(self.anneal_steps, 1)) * kl
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        if not all(torch.isfinite(p).all() for p in net.parameters()):
            raise ModelError(f"{self.name}: training diverged (non-finite weights)",
                             "lower learning_rate or raise weight_decay")
        return net

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        import torch
        from torch.nn import functional as F

        with torch.inference_mode():
            x = F.normalize(torch.from_numpy(sp.csr_matrix(history, dtype=np.float32).toarray()), dim=1)
            out = sum(net["dec2"](torch.tanh(net["dec1"](net["mu"](torch.tanh(net["enc"](x))))))
                      for net in self._nets) / len(self._nets)
            return out.numpy().astype(np.float32)


class RecVAEModel(_BaggedTorchModel):
    """RecVAE (Shenbin et al. 2020, "RecVAE: a new variational autoencoder for top-N recommendations with
    implicit feedback"), CPU torch: Mult-VAE with a densely connected five-layer encoder (layer norm,
    swish), a composite prior (a mixture of the standard normal, the previous epoch's encoder posterior and
    a wide normal, weights 3/20, 3/4, 1/10), a KL weight proportional to the user's number of items
    (``gamma`` x |x_u|), and alternating updates: ``enc_epochs`` encoder passes (input dropout
    ``dropout``), then one decoder pass, per epoch. Scores are the decoder's logits at the mean code, so a
    supplied history folds in with one forward pass. Seeded and single-threaded: the same data and seed
    give the same scores.

    Defaults from the inner split of ml-100k's training part (research/tune_ml100k.py): the paper's
    settings (batch 500, lr 5e-4, gamma 0.005, 50 epochs) gave nDCG@10 0.2150 there, with few users a
    batch and a KL weight too small for so little data: longer training is worse. gamma 0.0035-0.08 x
    15/30 epochs at batch 64, lr 1e-3: 0.2621 at gamma 0.02, 15 epochs (about 30 s a fit on one core;
    0.2622 at gamma 0.04, 30 epochs; Mult-VAE 0.2598, EASE 0.2695).
    """

    name = "recvae"
    uses_history = True

    def __init__(self, *, hidden: int = 600, latent: int = 200, dropout: float = 0.5, gamma: float = 0.02,
                 epochs: int = 15, enc_epochs: int = 3, batch_size: int = 64, learning_rate: float = 1e-3,
                 seeds: int = 1, use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self._set_seeds(seeds)
        if epochs < 1 or enc_epochs < 1:
            raise ModelError(f"{self.name}: epochs and enc_epochs must be >= 1, got {epochs}, {enc_epochs}",
                             "see the recvae docstring")
        self.hidden, self.latent, self.dropout, self.gamma = hidden, latent, dropout, gamma
        self.epochs, self.enc_epochs = epochs, enc_epochs
        self.batch_size, self.learning_rate = batch_size, learning_rate


    def _encoder(self, n: int) -> Any:
        import torch

        return torch.nn.ModuleDict({
            **{f"fc{k}": torch.nn.Linear(n if k == 0 else self.hidden, self.hidden) for k in range(5)},
            **{f"ln{k}": torch.nn.LayerNorm(self.hidden, eps=0.1) for k in range(5)},
            "mu": torch.nn.Linear(self.hidden, self.latent), "logvar": torch.nn.Linear(self.hidden, self.latent)})

    @staticmethod
    def _encode(enc: Any, x: Any, dropout: float) -> tuple[Any, Any]:
        from torch.nn import functional as F

        h = F.dropout(F.normalize(x, dim=1), dropout)
        hs: list[Any] = []
        for k in range(5):  # dense connections: each layer gets the sum of all earlier layers' outputs
            pre = enc[f"fc{k}"](h) + (sum(hs) if hs else 0.0)
            h = F.silu(enc[f"ln{k}"](pre))
            hs.append(h)
        return enc["mu"](h), enc["logvar"](h)

    def _train_one(self, X: Any, seed: int) -> Any:
        import copy
        import math

        import torch

        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        n = X.shape[1]
        enc = self._encoder(n)
        dec = torch.nn.Linear(self.latent, n)
        opt_enc = torch.optim.Adam(enc.parameters(), lr=self.learning_rate)
        opt_dec = torch.optim.Adam(dec.parameters(), lr=self.learning_rate)
        prior_w = torch.tensor([3 / 20, 3 / 4, 1 / 10]).log()

        def log_norm(z: Any, mu: Any, logvar: Any) -> Any:
            return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu).pow(2) / logvar.exp())

        old = copy.deepcopy(enc)
        for _ in range(self.epochs):
            for part in ("enc",) * self.enc_epochs + ("dec",):
                train_enc = part == "enc"
                for idx in torch.randperm(len(X), generator=gen).split(self.batch_size):
                    x = X[idx]
                    mu, logvar = self._encode(enc, x, self.dropout if train_enc else 0.0)
                    z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
                    mll = (torch.log_softmax(dec(z), 1) * x).sum(1)
                    if train_enc:
                        with torch.no_grad():
                            mu_old, logvar_old = self._encode(old, x, 0.0)
                        zeros = torch.zeros_like(z)
                        prior = torch.stack([log_norm(z, zeros, zeros), log_norm(z, mu_old, logvar_old),
                                             log_norm(z, zeros, zeros + 10.0)], -1)
                        kld = (log_norm(z, mu, logvar) - torch.logsumexp(prior + prior_w, -1)).sum(1)
                        loss = -(mll - kld * self.gamma * x.sum(1)).mean()
                        opt = opt_enc
                    else:
                        loss = -mll.mean()
                        opt = opt_dec
                    opt_enc.zero_grad()
                    opt_dec.zero_grad()
                    loss.backward()
                    opt.step()
            old.load_state_dict(enc.state_dict())
        net = torch.nn.ModuleDict({"enc": enc, "dec": dec})
        if not all(torch.isfinite(p).all() for p in net.parameters()):
            raise ModelError(f"{self.name}: training diverged (non-finite weights)", "lower learning_rate")
        return net

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(sp.csr_matrix(history, dtype=np.float32).toarray())
            # ``seeds`` > 1: the mean of the bagged fits' logits (seeds seed, seed + 1, ...)
            out = sum(net["dec"](self._encode(net["enc"], x, 0.0)[0]) for net in self._nets) / len(self._nets)
            return out.numpy().astype(np.float32)


def _row_normalise(m: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to sum 1 (empty rows stay 0)."""
    s = np.asarray(m.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)) @ m)


class RP3betaModel(Recommender):
    """RP3beta (Paudel et al. 2017; Dacrema et al. 2019's tuned baseline): a three-step random walk
    user -> item -> user -> item with transition probabilities raised to ``alpha``, the landing item's
    weight divided by its popularity ** ``beta``; score = history @ W. ``neighbours`` keeps each item's
    strongest entries (None: all). Dense ``n_items^2`` like EASE (refuses more than ``max_items``).

    Defaults chosen on the inner 75/25 (seed 7) MSR split of ml-100k's training part
    (research/tune_ml100k.py; alpha 0.5-1.25 x beta 0.2-0.8 x neighbours 50-400 or all): nDCG@10 0.2647
    at alpha 0.75, beta 0.5, all neighbours (0.2654 with 400; EASE 0.2695, ALS 0.2719 there).
    """

    name = "rp3beta"
    uses_history = True

    def __init__(self, *, alpha: float = 0.75, beta: float = 0.5, neighbours: int | None = None,
                 max_items: int = 10_000, use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.alpha, self.beta, self.neighbours, self.max_items = alpha, beta, neighbours, max_items

    def _fit(self, user_items: sp.csr_matrix) -> None:
        n = user_items.shape[1]
        _check_dense_items(self.name, n, self.max_items)
        X = sp.csr_matrix(user_items, dtype=np.float64)
        p_ui, p_iu = _row_normalise(X), _row_normalise(sp.csr_matrix(X.T))
        if self.alpha != 1.0:
            p_ui.data **= self.alpha
            p_iu.data **= self.alpha
        W = (p_iu @ p_ui).toarray()
        deg = np.diff(sp.csc_matrix(X).indptr).astype(np.float64)  # distinct users per item
        W *= np.where(deg > 0, np.power(np.maximum(deg, 1.0), -self.beta), 0.0)[None, :]
        W[np.diag_indices(n)] = 0.0
        if self.neighbours is not None and self.neighbours < n - 1:
            # keep the top ``neighbours`` entries of each row (ties by column index: deterministic)
            drop = np.argsort(-W, axis=1, kind="stable")[:, self.neighbours:]
            np.put_along_axis(W, drop, 0.0, axis=1)
        self.W = W.astype(np.float32)

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        return _linear_scores(history, self.W, self.use_ratings)


class UserKNNModel(Recommender):
    """User-kNN: cosine similarity (with ``shrink``) between the user's history and every training user,
    the ``neighbours`` most similar kept (raised to ``power``); score = similarities @ training matrix.
    A supplied history is compared with the training users as it is (fold-in without refitting).

    Defaults chosen on the inner 75/25 (seed 7) MSR split of ml-100k's training part
    (research/tune_ml100k.py; neighbours 20-500 x power 1-3): nDCG@10 0.2616 at 200 neighbours, power 2
    (0.2583 at power 1); rating-weighted similarities were worse (0.2597).
    """

    name = "user-knn"
    uses_history = True

    def __init__(self, *, neighbours: int = 200, shrink: float = 0.0, power: float = 2.0,
                 use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.neighbours, self.shrink, self.power = neighbours, shrink, power

    def _fit(self, user_items: sp.csr_matrix) -> None:
        X = sp.csr_matrix(user_items, dtype=np.float32)
        self._norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel()).astype(np.float32)
        self._X = X

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        h = sp.csr_matrix(history, dtype=np.float32)
        if not self.use_ratings:
            h.data[:] = 1.0
        X = self._X if self.use_ratings else (self._X > 0).astype(np.float32)
        norms = self._norms if self.use_ratings else np.sqrt(np.diff(X.indptr)).astype(np.float32)
        hn = np.sqrt(np.asarray(h.multiply(h).sum(axis=1)).ravel())
        sim = np.asarray((h @ X.T).todense(), dtype=np.float32)
        sim /= np.outer(hn, norms) + np.float32(self.shrink) + np.float32(1e-9)
        if not supplied:  # a user is not their own neighbour
            sim[np.arange(len(rows)), rows] = 0.0
        k = self.neighbours
        if k is not None and k < sim.shape[1]:
            drop = np.argsort(-sim, axis=1, kind="stable")[:, k:]
            np.put_along_axis(sim, drop, 0.0, axis=1)
        if self.power != 1.0:
            sim = np.power(np.maximum(sim, 0.0), self.power)
        target = self._X if self.use_ratings else X
        return np.asarray((target.T @ sim.T).T, dtype=np.float32)  # dense sim @ sparse matrix


class SequentialKNNModel(Recommender):
    """Sequential item-kNN (pipeline.recall.sequential): the items that followed the user's last items.

    Defaults tuned on Beauty's leave-one-out *validation* item (items[:-2] fitted, item -2 ranked); see
    the module for the parameters. A tiny popularity term breaks ties (and ranks users with no
    transitions at all).
    """

    name = "seq-knn"
    uses_history = True
    uses_order = True

    def __init__(self, *, window: int = 3, step_decay: float = 0.5, backward: float = 0.3, row_pow: float = 0.5,
                 col_pow: float = 0.5, n_last: int = 3, recency: float = 0.5, pop_weight: float = 1e-4,
                 use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.window, self.step_decay, self.backward = window, step_decay, backward
        self.row_pow, self.col_pow, self.n_last, self.recency = row_pow, col_pow, n_last, recency
        self.pop_weight = pop_weight

    def _fit(self, user_items: sp.csr_matrix) -> None:
        from pipeline.recall.sequential import transition_matrix

        seqs = self.sequences_for(self.user_ids, False)
        self.T = transition_matrix(seqs, len(self.item_ids), window=self.window, step_decay=self.step_decay,
                                   backward=self.backward, row_pow=self.row_pow, col_pow=self.col_pow)
        self._pop = self.popularity / max(float(self.popularity.max(initial=0.0)), 1.0)

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        from pipeline.recall.sequential import sequential_scores

        seqs = self.sequences_for(self.user_ids[rows], supplied)
        s = sequential_scores(seqs, self.T, n_last=self.n_last, recency=self.recency)
        return s + np.float32(self.pop_weight) * self._pop[None, :]


# ---------------------------------------------------------------------------------------------------------
# Registry

ModelFactory = Callable[..., Recommender]
_REGISTRY: dict[str, ModelFactory] = {}
#: Models of this package that import torch and the production stages: asking for one imports its module,
#: which registers it (kept out of this module's import so the plain models load fast).
RESERVED: dict[str, str] = {"ranker": "pipeline.evaluate.ranker", "research-stack": "pipeline.evaluate.stack",
                            "nightly": "pipeline.evaluate.nightly_model"}


def register_model(name: str, factory: ModelFactory, *, replace: bool = False) -> None:
    """Make ``factory(**params) -> Recommender`` available as ``name`` in the evaluation."""
    if name in _REGISTRY and not replace:
        raise ModelError(f"model {name!r} is already registered", "pass replace=True to override it")
    _REGISTRY[name] = factory


def model_names() -> list[str]:
    """Registered model names (reserved names appear once their module registered them)."""
    return sorted(_REGISTRY)


def get_model(name: str, **params: Any) -> Recommender:
    """A fresh, unfitted model by name; unknown names raise :class:`ModelError` listing valid ones."""
    if name not in _REGISTRY and name in RESERVED:
        with contextlib.suppress(ImportError):
            import_module(RESERVED[name])
    if name not in _REGISTRY:
        hint = f"valid names: {', '.join(sorted({*model_names(), *RESERVED}))}"
        if name == "pipeline":
            hint = "the evaluator's research stack is named research-stack; the production run is nightly"
        elif name in RESERVED:
            hint += f"; {name!r} is provided by {RESERVED[name]}, which has not registered it yet"
        raise ModelError(f"unknown model {name!r}", hint)
    try:
        return _REGISTRY[name](**params)
    except TypeError as exc:  # an unknown or misspelt parameter name
        raise ModelError(f"model {name!r} does not take these parameters: {exc}",
                         f"the parameter names in --params against the {name!r} model's docstring") from exc


for _cls in (RandomModel, PopularityModel, ItemCFModel, SARModel, ALSModel, BPRModel, ContentModel,
             EASEModel, EDLAEModel, SequentialKNNModel, RP3betaModel, UserKNNModel,
             UserEASEModel, MultVAEModel, SLIMModel, HigherEASEModel, RecVAEModel):
    register_model(_cls.name, _cls)
