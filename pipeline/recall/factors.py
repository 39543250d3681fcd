"""Matrix factorisation through ``implicit``: ALS and BPR training, per-run artefacts and the ALS fold-in.

The factors of a run live under ``<run_dir>/recall/<model>/`` as ``user_factors.npy``, ``item_factors.npy``,
``user_ids.npy``, ``item_ids.npy`` and a ``meta.json`` sidecar (hyper-parameters, library versions), so the
candidate shards and the near-real-time refresh read exactly what the nightly run trained.

:func:`fold_in` recomputes one user's ALS vector from a new history row with the item factors fixed: the
same least-squares solve ALS does for every user in its user step, so a refreshed user is scored as if
the model had been trained with their newest events.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# implicit warns (and runs about 30% slower) when OpenBLAS starts threads inside its own threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from pipeline.errors import ModelError, NonFiniteWeightsError  # noqa: E402
from pipeline.files import replacing_dir  # noqa: E402

FILES = ("user_factors", "item_factors", "user_ids", "item_ids")


@dataclass
class Factors:
    """Trained factors with their id maps (rows of ``user_factors`` follow ``user_ids``)."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    meta: dict = field(default_factory=dict)
    #: the BM25 weighting the factors were trained on (None: the raw weights); a fold-in applies it too
    weighting: BM25Weights | None = None

    def fold_in_matrix(self, user_items: sp.spmatrix) -> sp.csr_matrix:
        """History rows (item order of ``item_ids``) as the model was trained on them: BM25-weighted when
        the factors were."""
        return self.weighting.transform(user_items) if self.weighting is not None else sp.csr_matrix(user_items)

    def user_rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row index per user (-1 when unknown) and the known mask."""
        users = np.asarray(users)
        if not len(self.user_ids):  # factors kept for their items only (the refresh): every user is unknown
            return np.full(len(users), -1), np.zeros(len(users), dtype=bool)
        r = np.searchsorted(self.user_ids, users)
        known = (r < len(self.user_ids)) & (self.user_ids[np.minimum(r, len(self.user_ids) - 1)] == users)
        return np.where(known, r, -1), known


def _blas_one_thread():  # noqa: ANN202 - a context manager
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, "blas")


def _check_finite(name: str, *arrays: np.ndarray) -> None:
    if not all(np.isfinite(a).all() for a in arrays):
        raise NonFiniteWeightsError(f"{name}: NaN/inf factors after training",
                                    "lower the learning rate or raise regularization; check the matrix for NaN")


def _check_matrix(user_items: sp.spmatrix) -> sp.csr_matrix:
    m = sp.csr_matrix(user_items, dtype=np.float32)
    if m.nnz == 0:
        raise ModelError("matrix factorisation on an empty interaction matrix", "the snapshot's events before as_of")
    if not np.isfinite(m.data).all() or (m.data < 0).any():
        raise ModelError("interaction matrix has negative or non-finite weights", "event_weights / half_life_days")
    return m


def _versions() -> dict:
    import implicit

    return {"implicit": implicit.__version__, "numpy": np.__version__}


@dataclass(frozen=True)
class BM25Weights:
    """Okapi BM25 weighting of an interaction matrix before ALS (as implicit's ``bm25_weight``), kept as a
    fitted transform so a fold-in weights a new history with the training statistics.

    A weight ``w`` in user row ``u`` and item column ``i`` becomes
    ``w (k1 + 1) / (k1 L_u + w) * idf_i / scale`` with ``L_u = 1 - b + b |u| / mean |u|`` (``|u|`` the row's
    weight sum) and ``idf_i = log(N) - log(1 + n_i)`` (``N`` rows, ``n_i`` rows holding ``i``; floored at a
    small positive value, as a catalogue smaller than its most popular item's audience would turn it
    negative). ``scale`` makes the training weights' mean 1 so ALS's ``alpha`` keeps its meaning. Popular
    items and long histories weigh less: on ml-100k this ALS alone ranks worse but adds more to a mix
    with EASE (research/probe_ml100k.py, sixth round).
    """

    idf: np.ndarray
    average_length: float
    scale: float
    k1: float
    b: float

    @classmethod
    def fit(cls, user_items: sp.spmatrix, *, k1: float = 10.0, b: float = 0.5) -> BM25Weights:
        """Statistics of ``user_items`` (users x items); ``k1`` > 0 and ``b`` in [0, 1]."""
        return cls.fit_transform(user_items, k1=k1, b=b)[0]

    @classmethod
    def fit_transform(cls, user_items: sp.spmatrix, *, k1: float = 10.0,
                      b: float = 0.5) -> tuple[BM25Weights, sp.csr_matrix]:
        """:meth:`fit` and the weighted ``user_items`` in one pass (the scale needs the weights anyway)."""
        if not k1 > 0 or not 0 <= b <= 1:
            raise ModelError(f"BM25 weighting needs k1 > 0 and 0 <= b <= 1, got k1={k1}, b={b}",
                             "the ALS source's bm25_k1 / bm25_b settings")
        m = _check_matrix(user_items)
        m.sum_duplicates()
        n_rows = max(m.shape[0], 1)
        idf = np.log(n_rows) - np.log1p(np.bincount(m.indices, minlength=m.shape[1]).astype(np.float64))
        lengths = np.asarray(m.sum(axis=1)).ravel()
        avg = float(lengths.mean()) if lengths.size else 1.0
        raw = cls(np.maximum(idf, 1e-3), max(avg, 1e-12), 1.0, float(k1), float(b))
        weighted = raw._weighted(m)
        scale = float(weighted.data.mean()) if weighted.nnz else 1.0
        weighted.data /= scale  # as transform() divides, in float64: bit-identical to fit(...).transform(...)
        return cls(raw.idf, raw.average_length, scale, raw.k1, raw.b), weighted.astype(np.float32)

    def transform(self, user_items: sp.spmatrix) -> sp.csr_matrix:
        """``user_items`` (any rows, the fitted item columns) weighted; float32 CSR."""
        return self._weighted(user_items).astype(np.float32)

    def _weighted(self, user_items: sp.spmatrix) -> sp.csr_matrix:
        m = sp.csr_matrix(user_items, dtype=np.float64, copy=True)
        if m.shape[1] != len(self.idf):
            raise ModelError(f"BM25 weighting fitted on {len(self.idf)} items, given {m.shape[1]} columns",
                             "build the history in the item order the model was fitted with")
        m.sum_duplicates()
        norm = 1.0 - self.b + self.b * np.asarray(m.sum(axis=1)).ravel() / self.average_length
        rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
        m.data = m.data * (self.k1 + 1.0) / (self.k1 * norm[rows] + m.data) * self.idf[m.indices] / self.scale
        return m


def train_als(user_items: sp.spmatrix, *, factors: int = 64, regularization: float = 20.0, alpha: float = 3.0,
              iterations: int = 15, seed: int = 42, num_threads: int = 0, use_gpu: bool | None = False,
              callback: object = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """implicit ALS on ``user_items`` (users x items, weights); returns (user_factors, item_factors, meta).

    ``use_gpu=None`` picks the GPU when implicit was built with CUDA and one is present.
    """
    import implicit

    m = _check_matrix(user_items)
    gpu = implicit.gpu.HAS_CUDA if use_gpu is None else use_gpu
    params = {"factors": factors, "regularization": regularization, "alpha": alpha, "iterations": iterations,
              "random_state": seed}
    with _blas_one_thread():
        model = implicit.als.AlternatingLeastSquares(**params, use_gpu=gpu,
                                                     **({} if gpu else {"num_threads": num_threads}))
        model.fit(m, show_progress=False, callback=callback)
        if gpu:  # pragma: no cover - needs a CUDA build of implicit
            model = model.to_cpu()
    uf, itf = np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)
    _check_finite("als", uf, itf)
    return uf, itf, {"model": "als", **params, "gpu": bool(gpu), "versions": _versions()}


def train_bpr(user_items: sp.spmatrix, *, factors: int = 64, learning_rate: float = 0.01,
              regularization: float = 0.01, iterations: int = 60, seed: int = 42, num_threads: int = 0,
              verify_negative_samples: bool = True,
              sample_weighting: str = "presence") -> tuple[np.ndarray, np.ndarray, dict]:
    """implicit BPR (CPU) on ``user_items``; every non-zero is a positive. Returns (user, item, meta).

    implicit's BPR appends a bias column to both factor matrices; it is kept, so ``user @ item.T`` is
    the model's score. ``sample_weighting="ratings"`` samples a positive in proportion to its weight
    (see :func:`repeat_positives`); ``"presence"`` (default) samples every positive alike.
    """
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    if sample_weighting not in ("presence", "ratings"):
        raise ModelError(f"unknown BPR sample_weighting {sample_weighting!r}", "one of: presence, ratings")
    m = _check_matrix(user_items)
    if sample_weighting == "ratings":
        m = repeat_positives(m)
    params = {"factors": factors, "learning_rate": learning_rate, "regularization": regularization,
              "iterations": iterations, "random_state": seed}
    extra = {"verify_negative_samples": verify_negative_samples, "sample_weighting": sample_weighting}
    with _blas_one_thread():
        model = BayesianPersonalizedRanking(**params, num_threads=num_threads,
                                            verify_negative_samples=verify_negative_samples)
        model.fit(m, show_progress=False)
    uf, itf = np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)
    _check_finite("bpr", uf, itf)
    return uf, itf, {"model": "bpr", **params, **extra, "versions": _versions()}


def repeat_positives(user_items: sp.csr_matrix, max_repeats: int = 20) -> sp.csr_matrix:
    """Each positive repeated ``clip(round(weight), 1, max_repeats)`` times in its row (ones as data).

    implicit's BPR draws a training pair by a uniform index into the non-zeros, so a positive stored
    ``r`` times is drawn ``r`` times as often: rating-weighted sampling without changing implicit. The
    rows stay sorted (a repeated column is adjacent), which its negative-sample check relies on.
    """
    m = sp.csr_matrix(user_items, copy=True)
    m.sum_duplicates()  # canonical: one sorted entry per (user, item), so the repeats come out sorted
    reps = np.clip(np.rint(m.data), 1, max_repeats).astype(np.int64)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    counts = np.bincount(rows, weights=reps, minlength=m.shape[0]).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.repeat(m.indices, reps)
    out = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=m.shape)
    out.has_canonical_format = False  # duplicates are the point: nothing may sum them
    return out


def fold_in(user_items_row: sp.spmatrix | np.ndarray, item_factors: np.ndarray, regularization: float, *,
            alpha: float = 1.0, gram: np.ndarray | None = None) -> np.ndarray:
    """ALS user vector(s) for new history row(s) with ``item_factors`` fixed (implicit's exact solve).

    ``user_items_row`` is ``n x n_items`` (or one dense row) of interaction weights in the item order of
    ``item_factors``; confidence ``c = alpha * weight`` as in implicit. Solves
    ``(Y'Y + Y'(C - I)Y + reg I) x = Y'C p`` per row. ``gram`` (``Y'Y``) may be passed to reuse it.
    A row with no interactions gets the zero vector (it scores every item 0: callers fall back).
    """
    Y = np.asarray(item_factors, dtype=np.float64)
    rows = sp.csr_matrix(np.atleast_2d(user_items_row) if not sp.issparse(user_items_row) else user_items_row)
    if rows.shape[1] != Y.shape[0]:
        raise ModelError(f"fold_in: history has {rows.shape[1]} item columns, the factors {Y.shape[0]} items",
                         "build the history row in the item order of the saved item_ids.npy")
    YtY = Y.T @ Y if gram is None else np.asarray(gram, dtype=np.float64)
    reg = regularization * np.eye(Y.shape[1])
    out = np.zeros((rows.shape[0], Y.shape[1]), dtype=np.float32)
    for r in range(rows.shape[0]):
        s, e = rows.indptr[r], rows.indptr[r + 1]
        if s == e:
            continue
        idx, c = rows.indices[s:e], alpha * rows.data[s:e].astype(np.float64)
        Yu = Y[idx]
        A = YtY + (Yu.T * (c - 1.0)) @ Yu + reg
        b = Yu.T @ c
        out[r] = np.linalg.solve(A, b)
    return out[0] if not sp.issparse(user_items_row) and np.ndim(user_items_row) == 1 else out


def save_factors(out_dir: str | Path, f: Factors) -> Path:
    """Write the factors and their id maps plus a meta.json sidecar; returns the directory."""
    d = Path(out_dir)
    with replacing_dir(d) as tmp:  # one consistent set: a reader never mixes two runs' factors
        for name in FILES:
            np.save(tmp / f"{name}.npy", getattr(f, name))
        meta = {**f.meta, "users": len(f.user_ids), "items": len(f.item_ids), "dim": int(f.item_factors.shape[1])}
        if f.weighting is not None:
            np.save(tmp / "bm25_idf.npy", f.weighting.idf)
            meta["weighting"] = {"kind": "bm25", "k1": f.weighting.k1, "b": f.weighting.b,
                                 "average_length": f.weighting.average_length, "scale": f.weighting.scale}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return d


def load_factors(out_dir: str | Path) -> Factors:
    """Read what :func:`save_factors` wrote; a missing file raises ModelError naming it."""
    d = Path(out_dir)
    missing = [n for n in FILES if not (d / f"{n}.npy").exists()]
    if missing:
        raise ModelError(f"factors in {d} are incomplete: missing {', '.join(missing)}",
                         "run the cf_build stage (pipeline.recall.stage.build_recall_models) for this run")
    arrays = {n: np.load(d / f"{n}.npy") for n in FILES}
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    w = meta.get("weighting")
    weighting = None
    if isinstance(w, dict) and w.get("kind") == "bm25":
        if not (d / "bm25_idf.npy").exists():
            raise ModelError(f"factors in {d} were trained on BM25 weights but bm25_idf.npy is missing",
                             "re-run the cf_build stage for this run")
        weighting = BM25Weights(np.load(d / "bm25_idf.npy"), float(w["average_length"]), float(w["scale"]),
                                float(w["k1"]), float(w["b"]))
    return Factors(**arrays, meta=meta, weighting=weighting)
