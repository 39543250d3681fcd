"""Sequential item-kNN recall: the neighbours of the items that *followed* the user's last items.

Plain item-kNN ignores order; on purchase sequences (Amazon) what comes next after an item is a much
better signal than what co-occurs anywhere in a history. ``T[i, j]`` counts how often ``j`` followed
``i`` within ``window`` steps in the training sequences (step ``d`` weighted ``step_decay ** (d - 1)``;
``backward`` > 0 also counts ``j`` *before* ``i`` at that share), damped by item popularity
(``T[i, j] / (n_i ** row_pow * n_j ** col_pow)``). A user's scores are the rows of their last ``n_last``
items, the most recent weighted 1 and each older one ``recency ** m``.

Pure numpy/scipy; sequences are arrays of item *indices* (into a catalogue), oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.frames import ITEM_COL, TS_COL, USER_COL


def ordered_sequences(rows: pd.DataFrame, item_ids: np.ndarray) -> dict[object, np.ndarray]:
    """user_id -> catalogue indices of the user's items, oldest first (ts, then event_id, then input order).

    Items outside ``item_ids`` (sorted) are dropped.
    """
    if rows.empty:
        return {}
    keys = [USER_COL] + [c for c in (TS_COL, "event_id") if c in rows.columns]
    data = rows.assign(_pos=np.arange(len(rows))).sort_values([*keys, "_pos"], kind="stable")
    items = data[ITEM_COL].to_numpy()
    idx = np.searchsorted(item_ids, items)
    ok = (idx < len(item_ids)) & (item_ids[np.minimum(idx, len(item_ids) - 1)] == items)
    users = data[USER_COL].to_numpy()[ok]
    idx = idx[ok]
    if len(users) == 0:
        return {}
    cut = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], cut])
    return {users[s]: part for s, part in zip(starts, np.split(idx, cut), strict=True)}


def transition_matrix(sequences: Sequence[np.ndarray], n_items: int, *, window: int = 3, step_decay: float = 0.5,
                      backward: float = 0.0, row_pow: float = 0.5, col_pow: float = 0.5) -> sp.csr_matrix:
    """``n_items x n_items`` popularity-damped "followed-by" weights (see module docstring)."""
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s)]
    if not seqs:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    flat = np.concatenate(seqs)
    owner = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    rows, cols, vals = [], [], []
    for d in range(1, max(1, window) + 1):
        same = owner[:-d] == owner[d:] if len(flat) > d else np.zeros(0, bool)
        a, b = flat[:-d][same], flat[d:][same]
        w = np.float32(step_decay ** (d - 1))
        rows.append(a)
        cols.append(b)
        vals.append(np.full(len(a), w, np.float32))
        if backward > 0:
            rows.append(b)
            cols.append(a)
            vals.append(np.full(len(a), w * backward, np.float32))
    T = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_items, n_items), dtype=np.float32)
    T.sum_duplicates()
    T.setdiag(0)  # a repeat of the same item is not a neighbour
    T.eliminate_zeros()
    n = np.bincount(flat, minlength=n_items).astype(np.float32)
    n = np.maximum(n, 1.0)
    T = sp.diags(1.0 / n ** row_pow) @ T @ sp.diags(1.0 / n ** col_pow)
    return sp.csr_matrix(T, dtype=np.float32)


def recent_profile(sequences: Sequence[np.ndarray], n_items: int, *, n_last: int = 3,
                   recency: float = 0.5) -> sp.csr_matrix:
    """``len(sequences) x n_items``: the last ``n_last`` items of each sequence, weights ``recency ** m``."""
    rows, cols, vals = [], [], []
    for r, s in enumerate(sequences):
        tail = np.asarray(s, dtype=np.int64)[-n_last:][::-1]  # most recent first
        rows.append(np.full(len(tail), r))
        cols.append(tail)
        vals.append((recency ** np.arange(len(tail))).astype(np.float32))
    if not rows:
        return sp.csr_matrix((0, n_items), dtype=np.float32)
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(sequences), n_items), dtype=np.float32)
    m.sum_duplicates()
    return m


def sequential_scores(sequences: Sequence[np.ndarray], T: sp.csr_matrix, *, n_last: int = 3,
                      recency: float = 0.5) -> np.ndarray:
    """Dense ``len(sequences) x n_items`` scores: the recent profile times ``T``."""
    prof = recent_profile(sequences, T.shape[0], n_last=n_last, recency=recency)
    return np.asarray((prof @ T).toarray(), dtype=np.float32)
