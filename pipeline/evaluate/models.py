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

    def __init__(self, *, use_ratings: bool = True, seed: int = 42, batch_cells: int = 20_000_000) -> None:
        self.use_ratings = use_ratings
        self.seed = seed
        self.batch_cells = batch_cells
        self.user_ids: np.ndarray = np.zeros(0)
        self.item_ids: np.ndarray = np.zeros(0)
        self.user_items: sp.csr_matrix = sp.csr_matrix((0, 0))
        self.popularity: np.ndarray = np.zeros(0)

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
        self._fit(self.user_items)
        return self

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

    Defaults from the same inner split of train (factors 64-200, learning rate 0.003-0.05, regularization
    0.001-0.1, 10-300 epochs): implicit's BPR overfits fast on ml-100k (300 epochs is worse than 60),
    best inner nDCG@10 0.206 at 64 factors, lr 0.01, reg 0.01, 60 epochs.
    """

    name = "bpr"

    def __init__(self, *, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 60, use_ratings: bool = False, **kw: Any) -> None:
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
    return _REGISTRY[name](**params)


for _cls in (RandomModel, PopularityModel, ItemCFModel, SARModel, ALSModel, BPRModel, ContentModel):
    register_model(_cls.name, _cls)
