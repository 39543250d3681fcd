"""Item-item similarity from a user x item matrix: cosine (with shrink), jaccard, lift, raw co-occurrence.

Pure numpy/scipy.sparse, so the nightly recall (Dask, per item block) and the evaluation harness share it.
The product ``X^T X`` is computed one block of items at a time and each block keeps only its top-K
neighbours, so memory is bounded by ``block_size x n_items`` floats whatever the catalogue size.
The result ``S`` is a csr matrix with ``S[i, j]`` = similarity of neighbour ``j`` to item ``i``; scores
for users are then ``user_items @ S`` (each history item votes for its neighbours, as implicit's
ItemItemRecommender does).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

Method = Literal["cosine", "jaccard", "lift", "count"]
METHODS: tuple[str, ...] = ("cosine", "jaccard", "lift", "count")


def _block_rows(n_items: int, block_size: int | None) -> int:
    # ~20M floats (80 MB float32) per dense block unless told otherwise.
    return block_size or max(1, min(n_items, 20_000_000 // max(n_items, 1)))


def _topk_rows(dense: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the top-k positive entries of each row (order not guaranteed)."""
    k = min(k, dense.shape[1])
    idx = np.argpartition(-dense, kth=k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(dense, idx, axis=1)
    return idx, vals


def _prepare(user_items: sp.spmatrix, method: str,
             binary: bool) -> tuple[sp.csc_matrix, sp.csr_matrix, np.ndarray]:
    X = sp.csr_matrix(user_items, dtype=np.float32)
    X.sum_duplicates()
    if binary or method != "cosine":
        X = X.copy()
        X.data[:] = 1.0
    Xc = X.tocsc()
    if method == "cosine":
        norms = np.sqrt(np.asarray(Xc.multiply(Xc).sum(axis=0)).ravel()).astype(np.float32)
    else:
        norms = np.asarray(Xc.sum(axis=0)).ravel().astype(np.float32)  # item support C_ii
    return Xc, Xc.T.tocsr(), norms


def block_topk(XT_block: sp.csr_matrix, Xc: sp.csc_matrix, norms: np.ndarray, start: int, *, method: str,
               shrink: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of the items ``start .. start + XT_block.shape[0]`` (one block: ``B x n_items``
    dense floats at most). Pure, so it runs the same in a loop or as a Dask task."""
    stop = start + XT_block.shape[0]
    dots = (XT_block @ Xc).toarray()
    nb = norms[start:stop, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "cosine":
            sim = dots / (nb * norms[None, :] + shrink)
        elif method == "jaccard":
            sim = dots / (nb + norms[None, :] - dots)
        elif method == "lift":
            sim = dots / (nb * norms[None, :])
        else:
            sim = dots
    sim = np.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0)
    sim[np.arange(stop - start), np.arange(start, stop)] = 0.0  # an item is not its own neighbour
    idx, v = _topk_rows(sim, k)
    # best first; equal scores by lower neighbour index, so the output is deterministic
    order = np.lexsort((idx, -v), axis=1) if v.size else idx
    return np.take_along_axis(idx, order, axis=1), np.maximum(np.take_along_axis(v, order, axis=1), 0.0)


def similarity_topk_dask(
    user_items: sp.spmatrix,
    client: object,
    *,
    k: int = 100,
    method: Method = "cosine",
    shrink: float = 0.0,
    binary: bool = False,
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`similarity_topk_dense` with the item blocks spread over the workers of ``client``.

    The matrix is scattered once (broadcast); each task multiplies one block of item columns against it and
    returns only its top-``k``, so a worker holds at most ``block_size x n_items`` dense floats per thread
    and the client receives ``n_items x k``. Same output as the single-process version.
    """
    if method not in METHODS:
        raise ValueError(f"unknown similarity method {method!r}; valid: {', '.join(METHODS)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    Xc, XT, norms = _prepare(user_items, method, binary)
    n_items = Xc.shape[1]
    kk = min(k, max(n_items, 1))
    if n_items == 0:
        return np.zeros((0, kk), np.int64), np.zeros((0, kk), np.float32)
    step = _block_rows(n_items, block_size)
    starts = list(range(0, n_items, step))
    xc_f, norms_f = client.scatter([Xc, norms], broadcast=True)  # type: ignore[attr-defined]
    futures = [client.submit(block_topk, XT[s: min(s + step, n_items)], xc_f, norms_f, s,  # type: ignore[attr-defined]
                             method=method, shrink=shrink, k=kk, pure=False) for s in starts]
    parts = client.gather(futures)  # type: ignore[attr-defined]
    return (np.vstack([p[0] for p in parts]).astype(np.int64, copy=False),
            np.vstack([p[1] for p in parts]).astype(np.float32, copy=False))


def similarity_topk_dense(
    user_items: sp.spmatrix,
    *,
    k: int = 100,
    method: Method = "cosine",
    shrink: float = 0.0,
    binary: bool = False,
    block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours per item as two ``n_items x k`` arrays (indices, scores), best first.

    Slots without a positive similarity have score 0 (their index is arbitrary): filter on ``score > 0``.
    ``user_items`` holds weights (ratings, decayed counts); ``binary=True`` uses presence only.
    ``cosine`` is ``x_i . x_j / (|x_i| |x_j| + shrink)``; ``jaccard``/``lift``/``count`` use binary
    co-occurrence counts ``C = B^T B`` as SAR does: ``C_ij / (C_ii + C_jj - C_ij)``, ``C_ij / (C_ii C_jj)``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown similarity method {method!r}; valid: {', '.join(METHODS)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    Xc, XT, norms = _prepare(user_items, method, binary)
    n_items = Xc.shape[1]
    kk = min(k, max(n_items, 1))
    out_idx = np.zeros((n_items, kk), dtype=np.int64)
    out_val = np.zeros((n_items, kk), dtype=np.float32)
    step = _block_rows(n_items, block_size)
    for start in range(0, n_items, step):
        stop = min(start + step, n_items)
        out_idx[start:stop], out_val[start:stop] = block_topk(XT[start:stop], Xc, norms, start, method=method,
                                                              shrink=shrink, k=kk)
    return out_idx, out_val


def cosine_topk(user_items: sp.spmatrix, k: int = 100, *, shrink: float = 0.0,
                block_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cosine top-``k`` neighbours per item (see :func:`similarity_topk_dense`)."""
    return similarity_topk_dense(user_items, k=k, method="cosine", shrink=shrink, block_size=block_size)


def item_similarity_topk(
    user_items: sp.spmatrix,
    *,
    k: int = 100,
    method: Method = "cosine",
    shrink: float = 0.0,
    binary: bool = False,
    block_size: int | None = None,
) -> sp.csr_matrix:
    """Top-``k`` neighbours per item (self excluded) as an ``n_items x n_items`` csr matrix ``S``.

    ``S[i, j]`` is the similarity of neighbour ``j`` to item ``i``; see :func:`similarity_topk_dense`.
    """
    idx, val = similarity_topk_dense(user_items, k=k, method=method, shrink=shrink, binary=binary,
                                     block_size=block_size)
    n_items = idx.shape[0]
    keep = val > 0
    rows = np.repeat(np.arange(n_items), idx.shape[1]).reshape(idx.shape)
    S = sp.csr_matrix((val[keep], (rows[keep], idx[keep])), shape=(n_items, n_items), dtype=np.float32)
    S.sort_indices()
    return S


def score_from_similarity(history: sp.csr_matrix, similarity: sp.csr_matrix) -> np.ndarray:
    """Dense user x item scores ``history @ similarity`` (history rows are users, weights as fitted)."""
    return np.asarray((sp.csr_matrix(history, dtype=np.float32) @ similarity).todense(), dtype=np.float32)


