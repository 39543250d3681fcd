"""Item-item similarity from a user x item matrix: cosine (with shrink), jaccard, lift, raw co-occurrence.

Pure numpy/scipy.sparse, so the nightly recall (Dask, per item block) and the evaluation harness share it.
The product ``X^T X`` is computed one block of items at a time (the Dask task), each block in row chunks of
about :data:`CHUNK_CELLS` cells, and only each row's top-K is kept, so the working memory is a few
chunk-sized arrays plus two copies of ``X`` whatever the catalogue size. Two top-K paths give the same
scores (:data:`ALGORITHMS`): ``dense`` (the original) and ``sparse`` (large, sparse catalogues).
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
#: ``dense``: each chunk of rows densified and ``argpartition``-ed (the original path); ``sparse``: only the
#: non-zero co-occurrences scored and sorted. Same scores; they differ only in which of several equal scores
#: at the k-th place is kept and in the index of zero-score slots.
ALGORITHMS: tuple[str, ...] = ("dense", "sparse")


def _block_rows(n_items: int, block_size: int | None) -> int:
    # ~20M floats (80 MB float32) per dense block unless told otherwise.
    return block_size or max(1, min(n_items, 20_000_000 // max(n_items, 1)))


def _prepare(user_items: sp.spmatrix, method: str,
             binary: bool) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """``(X, X^T, norms)``: both operands as CSR, so that each block product is CSR @ CSR (scipy converts a
    CSC right operand to CSR on every call: one full copy of the matrix per block)."""
    X = sp.csr_matrix(user_items, dtype=np.float32, copy=True)  # never mutate the caller's matrix
    X.sum_duplicates()
    if binary or method != "cosine":
        X.data[:] = 1.0
    Xc = X.tocsc()
    if method == "cosine":
        norms = np.sqrt(np.asarray(Xc.multiply(Xc).sum(axis=0)).ravel()).astype(np.float32)
    else:
        norms = np.asarray(Xc.sum(axis=0)).ravel().astype(np.float32)  # item support C_ii
    XT = Xc.T.tocsr()  # the transpose of a CSC matrix is CSR: no copy
    X.sort_indices()  # the same operand, entry order included, as scipy's conversion of Xc gave: same sums
    return X, XT, norms


#: Dense cells (float32) one row chunk of a block may hold: 2M cells = 8 MiB per temporary array.
CHUNK_CELLS = 2_000_000


def _chunk_topk(dots: np.ndarray, nb: np.ndarray, norms: np.ndarray, first: int, *, method: str, shrink: float,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarity and top-``k`` of one dense chunk of co-occurrence rows, in place (``dots`` is overwritten).

    The arithmetic is the expression ``dots / (nb * norms + shrink)`` (etc.) evaluated step by step into
    preallocated arrays, so the values are bit-for-bit those of the one-line form without its temporaries.
    """
    rows = dots.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if method in ("cosine", "lift"):
            denom = np.multiply(nb, norms[None, :])
            if method == "cosine":
                denom += np.float32(shrink)
            np.divide(dots, denom, out=dots)
            del denom
        elif method == "jaccard":
            denom = np.add(nb, norms[None, :])
            denom -= dots
            np.divide(dots, denom, out=dots)
            del denom
    np.nan_to_num(dots, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    dots[np.arange(rows), np.arange(first, first + rows)] = 0.0  # an item is not its own neighbour
    np.negative(dots, out=dots)  # argpartition takes the smallest: the negated row, as -dense did
    idx = np.argpartition(dots, kth=k - 1, axis=1)[:, :k]
    v = -np.take_along_axis(dots, idx, axis=1)
    # best first; equal scores by lower neighbour index, so the output is deterministic
    order = np.lexsort((idx, -v), axis=1) if v.size else idx
    return np.take_along_axis(idx, order, axis=1), np.maximum(np.take_along_axis(v, order, axis=1), 0.0)


#: Rows of one sparse chunk: the row must fit the 12 top bits of the sort key of :func:`_sparse_chunk_topk`.
_SPARSE_MAX_ROWS = 1 << 12
_COL_BITS = 21  # columns (items) that fit the key's low bits: 2M items
_INV = np.uint64(0x7FFFFFFF)  # a positive float32's bits are below this, in the same order as the values


_BUCKET_SHIFT = 18  # a positive float32's bits >> 18: 8,158 order-preserving buckets (exponent + 5 bits)


def _above_kth_bucket(sim: np.ndarray, rows: np.ndarray, r: int, k: int) -> np.ndarray:
    """Mask of the entries whose coarse value bucket is at least that of their row's k-th largest value.

    Exact pre-filter before the sort: the k-th largest value of a row lies in the highest bucket ``b``
    with ``k`` or more entries at ``b`` or above (more than ``k`` entries strictly above ``b`` would
    all be larger than it), so every top-``k`` entry and every entry tied with the k-th survives.
    ``rows`` must be ascending (CSR order); the per-row histograms are built a group of rows at a time.
    """
    n_buckets = (0x7F800000 >> _BUCKET_SHIFT) + 1
    group = max(1, 2_000_000 // n_buckets)  # rows per histogram: 2M counters
    # reversed buckets (0 = largest values), so each row's histogram runs top-down, contiguous for cumsum
    rev = (n_buckets - 1) - (sim.view(np.uint32) >> np.uint32(_BUCKET_SHIFT)).astype(np.int64)
    keep = np.ones(len(sim), dtype=bool)
    bounds = np.searchsorted(rows, np.arange(0, r + group, group))
    for g, (s, e) in enumerate(zip(bounds[:-1], bounds[1:], strict=False)):
        if e - s <= k:
            continue
        g_rows = rows[s:e] - g * group
        hist = np.bincount(g_rows * n_buckets + rev[s:e], minlength=group * n_buckets).reshape(group, n_buckets)
        enough = np.cumsum(hist, axis=1) >= k
        # the first (largest-value) bucket with k entries at or above it; rows with fewer than k keep all
        last = np.where(enough.any(axis=1), np.argmax(enough, axis=1), n_buckets - 1)
        keep[s:e] = rev[s:e] <= last[g_rows]
    return keep


def _sparse_chunk_topk(P: sp.csr_matrix, nb: np.ndarray, norms: np.ndarray, first: int, *, method: str,
                       shrink: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one chunk of co-occurrence rows ``P`` without densifying it (the ``algorithm="sparse"``
    path): only the non-zero co-occurrences are scored and sorted.

    Similarities are computed per stored entry with the same float32 operations as the dense path (same
    values bit for bit); rows are ordered by (score desc, item asc), so where equal scores straddle the
    k-th place the lower item indices are kept (the dense path keeps whichever ``argpartition`` leaves).
    Slots past a row's positive neighbours have score 0 and index 0.
    """
    r = P.shape[0]
    rows = np.repeat(np.arange(r, dtype=np.int32), np.diff(P.indptr))  # int32: half the bytes per entry
    cols = P.indices
    dots = P.data
    with np.errstate(divide="ignore", invalid="ignore"):
        if method in ("cosine", "lift"):
            denom = nb[rows] * norms[cols]
            if method == "cosine":
                denom += np.float32(shrink)
            sim = dots / denom
        elif method == "jaccard":
            denom = nb[rows] + norms[cols]
            denom -= dots
            sim = dots / denom
        else:
            sim = dots
    keep = (sim > 0) & np.isfinite(sim) & (cols != rows + first)  # the dense path zeroes NaN/inf and self
    sim, rows, cols = sim[keep], rows[keep], cols[keep]
    if len(sim) > 2 * r * k:
        keep = _above_kth_bucket(sim, rows, r, k)
        sim, rows, cols = sim[keep], rows[keep], cols[keep]
    if r <= _SPARSE_MAX_ROWS and int(norms.shape[0]) <= 1 << _COL_BITS:
        # one uint64 key per entry (row | inverted score bits | column), one plain sort: much faster
        # than a three-key lexsort
        key = rows.astype(np.uint64) << np.uint64(52)
        key |= (_INV - sim.view(np.uint32).astype(np.uint64)) << np.uint64(_COL_BITS)
        key |= cols.astype(np.uint64)
        key.sort()
        rows = (key >> np.uint64(52)).astype(np.int64)
        cols = (key & np.uint64((1 << _COL_BITS) - 1)).astype(np.int64)
        sim = (_INV - ((key >> np.uint64(_COL_BITS)) & _INV)).astype(np.uint32).view(np.float32)
    else:
        order = np.lexsort((cols, -sim, rows))
        rows, cols, sim = rows[order], cols[order], sim[order]
    counts = np.bincount(rows, minlength=r)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    sel = rank < k
    out_idx = np.zeros((r, k), dtype=np.int64)
    out_val = np.zeros((r, k), dtype=np.float32)
    out_idx[rows[sel], rank[sel]] = cols[sel]
    out_val[rows[sel], rank[sel]] = sim[sel]
    return out_idx, out_val


def _chunks(XT_block: sp.csr_matrix, X: sp.csr_matrix, chunk_cells: int, algorithm: str) -> list[tuple[int, int]]:
    """Row ranges of a block: ``chunk_cells`` dense cells each (dense), or about ``chunk_cells / 4``
    co-occurrence entries each (sparse; ~60 bytes per entry in flight), estimated per item as the sum of its
    users' history lengths (an upper bound on its non-zero co-occurrences) capped at the catalogue size."""
    n_rows, n_items = XT_block.shape[0], X.shape[1]
    if algorithm == "dense":
        step = max(1, min(n_rows, chunk_cells // max(n_items, 1)))
        return [(r0, min(r0 + step, n_rows)) for r0 in range(0, n_rows, step)]
    user_len = np.diff(X.indptr).astype(np.float64)
    rows = np.repeat(np.arange(n_rows), np.diff(XT_block.indptr))
    est = np.minimum(np.bincount(rows, weights=user_len[XT_block.indices], minlength=n_rows), n_items)
    cum = np.cumsum(est)
    out, r0, budget = [], 0, max(chunk_cells // 4, 1)
    while r0 < n_rows:
        base = cum[r0 - 1] if r0 else 0.0
        r1 = int(np.searchsorted(cum, base + budget, side="right"))
        r1 = min(max(r1, r0 + 1), r0 + _SPARSE_MAX_ROWS, n_rows)
        out.append((r0, r1))
        r0 = r1
    return out


def block_topk(XT_block: sp.csr_matrix, X: sp.csr_matrix, norms: np.ndarray, start: int, *, method: str,
               shrink: float, k: int, chunk_cells: int = CHUNK_CELLS,
               algorithm: str = "dense") -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of the items ``start .. start + XT_block.shape[0]``. Pure, so it runs the same in
    a loop or as a Dask task.

    ``X`` is the users x items matrix (CSR). The block is worked through in row chunks of about
    ``chunk_cells`` dense cells, so peak memory is a few chunk-sized arrays (not ``B x n_items`` times the
    five temporaries a one-shot form needs); every row's result is independent of the chunking.
    ``algorithm="sparse"`` scores and sorts only the non-zero co-occurrences (see
    :func:`_sparse_chunk_topk`): the same scores, far less work when co-occurrence is sparse.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown top-k algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    n_rows, n_items = XT_block.shape[0], X.shape[1]
    k = min(k, n_items)
    out_idx = np.empty((n_rows, k), dtype=np.int64)
    out_val = np.empty((n_rows, k), dtype=np.float32)
    for r0, r1 in _chunks(XT_block, X, chunk_cells, algorithm):
        prod = XT_block[r0:r1] @ X
        nb = norms[start + r0: start + r1]
        if algorithm == "sparse":
            out_idx[r0:r1], out_val[r0:r1] = _sparse_chunk_topk(prod, nb, norms, start + r0, method=method,
                                                                shrink=shrink, k=k)
        else:
            out_idx[r0:r1], out_val[r0:r1] = _chunk_topk(prod.toarray(), nb[:, None], norms, start + r0,
                                                         method=method, shrink=shrink, k=k)
        del prod
    return out_idx, out_val


def _check_args(method: str, k: int, algorithm: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown similarity method {method!r}; valid: {', '.join(METHODS)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown top-k algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")


def similarity_topk_dask(
    user_items: sp.spmatrix,
    client: object,
    *,
    k: int = 100,
    method: Method = "cosine",
    shrink: float = 0.0,
    binary: bool = False,
    block_size: int | None = None,
    algorithm: str = "dense",
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`similarity_topk_dense` with the item blocks spread over the workers of ``client``.

    The matrix is scattered once (broadcast); each task multiplies one block of item columns against it and
    returns only its top-``k``, so a worker holds at most ``block_size x n_items`` dense floats per thread
    and the client receives ``n_items x k``. Same output as the single-process version.
    """
    _check_args(method, k, algorithm)
    X, XT, norms = _prepare(user_items, method, binary)
    n_items = X.shape[1]
    kk = min(k, max(n_items, 1))
    if n_items == 0:
        return np.zeros((0, kk), np.int64), np.zeros((0, kk), np.float32)
    step = _block_rows(n_items, block_size)
    starts = list(range(0, n_items, step))
    x_f, norms_f = client.scatter([X, norms], broadcast=True)  # type: ignore[attr-defined]
    futures = [client.submit(block_topk, XT[s: min(s + step, n_items)], x_f, norms_f, s,  # type: ignore[attr-defined]
                             method=method, shrink=shrink, k=kk, algorithm=algorithm, pure=False)
               for s in starts]
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
    algorithm: str = "dense",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours per item as two ``n_items x k`` arrays (indices, scores), best first.

    Slots without a positive similarity have score 0 (their index is arbitrary): filter on ``score > 0``.
    ``user_items`` holds weights (ratings, decayed counts); ``binary=True`` uses presence only.
    ``cosine`` is ``x_i . x_j / (|x_i| |x_j| + shrink)``; ``jaccard``/``lift``/``count`` use binary
    co-occurrence counts ``C = B^T B`` as SAR does: ``C_ij / (C_ii + C_jj - C_ij)``, ``C_ij / (C_ii C_jj)``.
    ``algorithm`` (see :data:`ALGORITHMS`): ``sparse`` gives the same scores, and the same neighbours except
    which of several equal scores at the k-th place is kept (the lower item index), in far less time when
    co-occurrence is sparse (large catalogues); ``dense`` is the original path.
    """
    _check_args(method, k, algorithm)
    X, XT, norms = _prepare(user_items, method, binary)
    n_items = X.shape[1]
    kk = min(k, max(n_items, 1))
    out_idx = np.zeros((n_items, kk), dtype=np.int64)
    out_val = np.zeros((n_items, kk), dtype=np.float32)
    step = _block_rows(n_items, block_size)
    for start in range(0, n_items, step):
        stop = min(start + step, n_items)
        out_idx[start:stop], out_val[start:stop] = block_topk(XT[start:stop], X, norms, start, method=method,
                                                              shrink=shrink, k=kk, algorithm=algorithm)
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
    algorithm: str = "dense",
) -> sp.csr_matrix:
    """Top-``k`` neighbours per item (self excluded) as an ``n_items x n_items`` csr matrix ``S``.

    ``S[i, j]`` is the similarity of neighbour ``j`` to item ``i``; see :func:`similarity_topk_dense`.
    """
    idx, val = similarity_topk_dense(user_items, k=k, method=method, shrink=shrink, binary=binary,
                                     block_size=block_size, algorithm=algorithm)
    n_items = idx.shape[0]
    keep = val > 0
    rows = np.repeat(np.arange(n_items), idx.shape[1]).reshape(idx.shape)
    S = sp.csr_matrix((val[keep], (rows[keep], idx[keep])), shape=(n_items, n_items), dtype=np.float32)
    S.sort_indices()
    return S


def score_from_similarity(history: sp.csr_matrix, similarity: sp.csr_matrix) -> np.ndarray:
    """Dense user x item scores ``history @ similarity`` (history rows are users, weights as fitted)."""
    return np.asarray((sp.csr_matrix(history, dtype=np.float32) @ similarity).todense(), dtype=np.float32)


