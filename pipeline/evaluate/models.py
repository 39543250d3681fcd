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
from pipeline.recall.factors import fold_in, train_als, train_bpr  # noqa: E402
from pipeline.recall.itemcf import item_similarity_topk, score_from_similarity  # noqa: E402
from pipeline.recall.popularity import distinct_user_counts  # noqa: E402


class Recommender:
    """Base class: id maps, the training matrix, batched scoring, seen-item exclusion and top-k."""

    name = "base"
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
        self.train_rows = train
        self.history_sequences = None
        self._train_sequences: dict | None = None
        self._fit(self.user_items)
        return self

    def set_validation(self, valid: pd.DataFrame | None) -> None:
        """Held-out next items (leave-one-out's item -2) that a model may use for early stopping or
        tuning before :meth:`fit`; never the test item. Models that do not tune ignore them."""
        self.valid_rows = valid

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
            idx = np.argpartition(-sc, kth=kk - 1, axis=1)[:, :kk]
            val = np.take_along_axis(sc, idx, axis=1)
            order = np.lexsort((idx, -val), axis=1)  # best first, equal scores by catalogue order
            idx = np.take_along_axis(idx, order, axis=1)
            val = np.take_along_axis(val, order, axis=1)
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
    (nDCG@10 0.249 vs 0.240-0.246 for 20-200 neighbours), and binary presence matched ratings.
    """

    name = "item-cf"
    uses_history = True

    def __init__(self, *, neighbours: int | None = None, shrink: float = 0.0, method: str = "cosine",
                 use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.neighbours, self.shrink, self.method = neighbours, shrink, method

    def _fit(self, user_items: sp.csr_matrix) -> None:
        k = self.neighbours or max(user_items.shape[1] - 1, 1)
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
    """Shared parts of the implicit (CPU) factorisation models."""

    uses_history = False

    def __init__(self, *, factors: int, regularization: float, iterations: int, num_threads: int = 0,
                 use_ratings: bool = True, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.factors, self.regularization, self.iterations = factors, regularization, iterations
        self.num_threads = num_threads

    def _train(self, user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _fit(self, user_items: sp.csr_matrix) -> None:
        # training lives in pipeline.recall.factors, shared with the nightly run (NaN checks included)
        self.user_factors, self.item_factors = self._train(user_items)

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
    """

    name = "als"
    uses_history = True  # ALS folds a new history in exactly (one least-squares solve per user)

    def __init__(self, *, factors: int = 24, regularization: float = 20.0, alpha: float = 3.0,
                 iterations: int = 15, use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(factors=factors, regularization=regularization, iterations=iterations,
                         use_ratings=use_ratings, **kw)
        self.alpha = alpha

    def _train(self, user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        uf, itf, _ = train_als(user_items, factors=self.factors, regularization=self.regularization,
                               alpha=self.alpha, iterations=self.iterations, seed=self.seed,
                               num_threads=self.num_threads)
        return uf, itf

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        return fold_in(history, self.item_factors, self.regularization, alpha=self.alpha)


class BPRModel(_ImplicitModel):
    """implicit's BayesianPersonalizedRanking (CPU); every training row is a positive.

    Defaults from the same inner split of train (factors 10-200, learning rate 0.003-0.05, regularization
    0.001-0.1, 10-300 epochs, ratings-weighted sampling, unverified negatives; benchmarks/tune_bpr_inner.py):
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

    def _train(self, user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        uf, itf, _ = train_bpr(user_items, factors=self.factors, learning_rate=self.learning_rate,
                               regularization=self.regularization, iterations=self.iterations, seed=self.seed,
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
    """EASE (Steck 2019): closed-form item-item weights ``B = I - P / diag(P)``, ``P = (X^T X + l2 I)^-1``,
    zero diagonal; score = history @ B. Dense ``n_items^2``: meant for catalogues up to ~10k items
    (refuses more than ``max_items``)."""

    name = "ease"
    uses_history = True

    def __init__(self, *, l2: float = 500.0, max_items: int = 10_000, use_ratings: bool = False, **kw: Any) -> None:
        super().__init__(use_ratings=use_ratings, **kw)
        self.l2, self.max_items = l2, max_items

    def _fit(self, user_items: sp.csr_matrix) -> None:
        n = user_items.shape[1]
        _check_dense_items(self.name, n, self.max_items)
        X = sp.csr_matrix(user_items, dtype=np.float64)
        G = (X.T @ X).toarray()
        G[np.diag_indices(n)] += self.l2
        P = np.linalg.inv(G)
        B = -P / np.diag(P)[None, :]
        B[np.diag_indices(n)] = 0.0
        self.B = B.astype(np.float32)

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        return np.asarray(sp.csr_matrix(history, dtype=np.float32) @ self.B, dtype=np.float32)


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
    (benchmarks/tune_ml100k.py; alpha 0.5-1.25 x beta 0.2-0.8 x neighbours 50-400 or all): nDCG@10 0.2647
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
        h = sp.csr_matrix(history, dtype=np.float32)
        if not self.use_ratings:
            h.data[:] = 1.0
        return np.asarray(h @ self.W, dtype=np.float32)


class UserKNNModel(Recommender):
    """User-kNN: cosine similarity (with ``shrink``) between the user's history and every training user,
    the ``neighbours`` most similar kept (raised to ``power``); score = similarities @ training matrix.
    A supplied history is compared with the training users as it is (fold-in without refitting).

    Defaults chosen on the inner 75/25 (seed 7) MSR split of ml-100k's training part
    (benchmarks/tune_ml100k.py; neighbours 20-500 x power 1-3): nDCG@10 0.2616 at 200 neighbours, power 2
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
#: Names other stages own: asking for one imports its module, which is expected to register it.
RESERVED: dict[str, str] = {"content": "pipeline.recall.content", "ranker": "pipeline.rank.evaluate",
                            "pipeline": "pipeline.rerank.evaluate"}


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
        hint = f"valid names: {', '.join(model_names())}"
        if name in RESERVED:
            hint += f"; {name!r} is provided by {RESERVED[name]}, which has not registered it yet"
        raise ModelError(f"unknown model {name!r}", hint)
    try:
        return _REGISTRY[name](**params)
    except TypeError as exc:  # an unknown or misspelt parameter name
        raise ModelError(f"model {name!r} does not take these parameters: {exc}",
                         f"the parameter names in --params against the {name!r} model's docstring") from exc


for _cls in (RandomModel, PopularityModel, ItemCFModel, SARModel, ALSModel, BPRModel, ContentModel,
             EASEModel, SequentialKNNModel, RP3betaModel, UserKNNModel):
    register_model(_cls.name, _cls)
