"""Sequential item-kNN recall: the neighbours of the items that *followed* the user's last items.

Plain item-kNN ignores order; on purchase sequences (Amazon) what comes next after an item is a much
better signal than what co-occurs anywhere in a history. ``T[i, j]`` counts how often ``j`` followed
``i`` within ``window`` steps in the training sequences (step ``d`` weighted ``step_decay ** (d - 1)``;
``backward`` > 0 also counts ``j`` *before* ``i`` at that share), damped by item popularity
(``T[i, j] / (n_i ** row_pow * n_j ** col_pow)``). A user's scores are the rows of their last ``n_last``
items, the most recent weighted 1 and each older one ``recency ** m``.

Pure numpy/scipy; sequences are arrays of item *indices* (into a catalogue), oldest first.

The production ``seq`` recall source (:func:`pipeline.recall.candidates.seq_source`) reads a top-K table of
each item's followers (``followers.parquet``, built by the nightly's cf_build with :class:`FollowerBuilder`):
the builder takes the snapshot's events in time-ordered chunks (its date partitions) and carries only each
user's last ``window`` items from one chunk to the next, so its memory is the sparse counts, one chunk and
those tails, whatever the number of events. Consecutive repeats of an item (a view, then its cart and its
purchase) are one step of a sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def transition_counts(flat: np.ndarray, owner: np.ndarray, n_items: int, *, window: int = 3,
                      step_decay: float = 0.5, backward: float = 0.0, counted: np.ndarray | None = None
                      ) -> sp.csr_matrix:
    """Raw ``n_items x n_items`` "followed-by" weights of sequences laid end to end: ``flat`` item indices,
    ``owner`` the sequence of each position (equal owners contiguous, oldest first). ``counted``: positions
    whose pairs count when they are the *later* item (a streamed chunk's new rows after the carried tails of
    the previous chunks); all when None. Duplicates summed, the diagonal kept (see :func:`damped`)."""
    flat = np.asarray(flat, dtype=np.int64)
    owner = np.asarray(owner)
    rows, cols, vals = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for d in range(1, max(1, window) + 1):
        same = owner[:-d] == owner[d:] if len(flat) > d else np.zeros(0, bool)
        if counted is not None and len(same):
            same &= counted[d:]
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
    return T


def damped(counts: sp.csr_matrix, n: np.ndarray, *, row_pow: float = 0.5, col_pow: float = 0.5) -> sp.csr_matrix:
    """:func:`transition_counts` without the diagonal, divided by ``n_i ** row_pow * n_j ** col_pow`` (``n``:
    each item's occurrences in the sequences)."""
    T = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    T.setdiag(0)  # a repeat of the same item is not a neighbour
    T.eliminate_zeros()
    n = np.maximum(np.asarray(n, dtype=np.float32), 1.0)
    T = sp.diags(1.0 / n ** row_pow) @ T @ sp.diags(1.0 / n ** col_pow)
    return sp.csr_matrix(T, dtype=np.float32)


def transition_matrix(sequences: Sequence[np.ndarray], n_items: int, *, window: int = 3, step_decay: float = 0.5,
                      backward: float = 0.0, row_pow: float = 0.5, col_pow: float = 0.5) -> sp.csr_matrix:
    """``n_items x n_items`` popularity-damped "followed-by" weights (see module docstring)."""
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s)]
    if not seqs:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    flat = np.concatenate(seqs)
    owner = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    T = transition_counts(flat, owner, n_items, window=window, step_decay=step_decay, backward=backward)
    return damped(T, np.bincount(flat, minlength=n_items), row_pow=row_pow, col_pow=col_pow)


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


#: Columns of ``followers.parquet``: each item's best followers, rank 1 = best.
FOLLOWER_COLUMNS = ["item_id", "next_item_id", "score", "rank"]


@dataclass(frozen=True)
class SeqParams:
    """Parameters of the production ``seq`` source: the evaluator's ``seq-knn`` defaults (tuned on Amazon
    Beauty's leave-one-out validation item). ``k``: followers kept per item."""

    k: int = 50
    window: int = 3
    step_decay: float = 0.5
    backward: float = 0.3
    row_pow: float = 0.5
    col_pow: float = 0.5
    n_last: int = 3
    recency: float = 0.5


def _item_rows(events: pd.DataFrame) -> pd.DataFrame:
    """The events that carry an item (no searches), as int64 ids."""
    ev = events[events[ITEM_COL].notna()]
    if "event_type" in ev.columns:
        ev = ev[ev["event_type"] != "search"]
    return ev.assign(**{ITEM_COL: ev[ITEM_COL].astype("int64")})


def _ordered(ev: pd.DataFrame) -> pd.DataFrame:
    """``ev`` sorted by user, ts, event_id, input order."""
    keys = [USER_COL] + [c for c in (TS_COL, "event_id") if c in ev.columns]
    return ev.sort_values(keys, kind="stable")


def _collapse(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Mask of the rows that are not a repeat of the same user's previous item (rows in sequence order)."""
    keep = np.ones(len(users), dtype=bool)
    if len(users) > 1:
        keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    return keep


class FollowerBuilder:
    """Raw "followed-by" counts streamed from time-ordered chunks of events (see the module docstring)."""

    def __init__(self, item_ids: np.ndarray, params: SeqParams | None = None) -> None:
        self.item_ids = np.sort(np.asarray(item_ids, dtype=np.int64))
        self.params = params or SeqParams()
        n = len(self.item_ids)
        self.counts = sp.csr_matrix((n, n), dtype=np.float32)
        self.occurrences = np.zeros(n, dtype=np.float64)
        self._tail_u = np.zeros(0, dtype=np.int64)
        self._tail_i = np.zeros(0, dtype=np.int64)
        self.events = 0

    def add(self, events: pd.DataFrame) -> None:
        """Count one chunk: events no older than any of the previous chunks' (user_id, item_id[, event_type,
        ts, event_id])."""
        ev = _item_rows(events)
        if ev.empty or not len(self.item_ids):
            return
        ev = _ordered(ev)
        items = ev[ITEM_COL].to_numpy()
        idx = np.searchsorted(self.item_ids, items)
        ok = (idx < len(self.item_ids)) & (self.item_ids[np.minimum(idx, len(self.item_ids) - 1)] == items)
        u, it = ev[USER_COL].to_numpy(dtype=np.int64)[ok], idx[ok]
        if not len(u):
            return
        carried = np.isin(self._tail_u, u)
        users = np.concatenate([self._tail_u[carried], u])
        items = np.concatenate([self._tail_i[carried], it])
        new = np.concatenate([np.zeros(int(carried.sum()), bool), np.ones(len(u), bool)])
        o = np.argsort(users, kind="stable")  # a user's carried tail stays before their new rows
        users, items, new = users[o], items[o], new[o]
        keep = _collapse(users, items)
        users, items, new = users[keep], items[keep], new[keep]
        p = self.params
        self.counts = self.counts + transition_counts(items, users, len(self.item_ids), window=p.window,
                                                      step_decay=p.step_decay, backward=p.backward, counted=new)
        self.occurrences += np.bincount(items[new], minlength=len(self.item_ids))
        self.events += int(new.sum())
        # each user's last `window` items go on to the next chunk
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        sizes = np.diff(np.append(starts, len(users)))
        back = np.repeat(starts + sizes, sizes) - np.arange(len(users))  # 1 = the user's last item
        last = back <= max(1, p.window)
        tu = np.concatenate([self._tail_u[~carried], users[last]])
        ti = np.concatenate([self._tail_i[~carried], items[last]])
        o = np.argsort(tu, kind="stable")
        self._tail_u, self._tail_i = tu[o], ti[o]

    def matrix(self) -> sp.csr_matrix:
        """The popularity-damped transition matrix of everything added so far."""
        return damped(self.counts, self.occurrences, row_pow=self.params.row_pow, col_pow=self.params.col_pow)

    def table(self) -> pd.DataFrame:
        """Each item's ``params.k`` best followers (:data:`FOLLOWER_COLUMNS`)."""
        return followers_frame(self.matrix(), self.item_ids, self.params.k)


def followers_frame(T: sp.csr_matrix, item_ids: np.ndarray, k: int) -> pd.DataFrame:
    """Top-``k`` columns of each row of ``T`` (score desc, then item id) as a long table; zeros dropped."""
    coo = sp.coo_matrix(T)
    keep = coo.data > 0
    r, c, v = coo.row[keep], coo.col[keep], coo.data[keep]
    order = np.lexsort((c, -v, r))
    r, c, v = r[order], c[order], v[order]
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]]) if len(r) else np.zeros(0, dtype=np.int64)
    rank = np.arange(len(r)) - np.repeat(starts, np.diff(np.append(starts, len(r)))) + 1
    top = rank <= k
    ids = np.asarray(item_ids, dtype=np.int64)
    return pd.DataFrame({"item_id": ids[r[top]], "next_item_id": ids[c[top]],
                         "score": v[top].astype("float64"), "rank": rank[top].astype("int32")})[FOLLOWER_COLUMNS]


def last_items(events: pd.DataFrame, n_last: int = 3, recency: float = 0.5) -> pd.DataFrame:
    """Each user's last ``n_last`` items (consecutive repeats collapsed), the most recent weighted 1 and each
    older one ``recency ** m``; an item twice among them sums its weights. Columns user_id, item_id, weight."""
    ev = _item_rows(events)
    if ev.empty:
        return pd.DataFrame({USER_COL: pd.Series(dtype="int64"), ITEM_COL: pd.Series(dtype="int64"),
                             "weight": pd.Series(dtype="float64")})
    ev = _ordered(ev)
    u = ev[USER_COL].to_numpy(dtype=np.int64)
    it = ev[ITEM_COL].to_numpy(dtype=np.int64)
    keep = _collapse(u, it)
    u, it = u[keep], it[keep]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    sizes = np.diff(np.append(starts, len(u)))
    back = np.repeat(starts + sizes, sizes) - np.arange(len(u)) - 1  # 0 = the user's last item
    last = back < n_last
    out = pd.DataFrame({USER_COL: u[last], ITEM_COL: it[last], "weight": recency ** back[last].astype("float64")})
    return out.groupby([USER_COL, ITEM_COL], as_index=False, sort=True)["weight"].sum()
