"""The user x item interaction matrix: event-type weights with a half-life per type; repeats add up."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.features.items import decayed_weight


@dataclass
class Interactions:
    """``user_items`` (CSR, users x items) with the id <-> index maps."""

    user_items: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray

    def item_index(self) -> pd.Series:
        return pd.Series(np.arange(len(self.item_ids)), index=self.item_ids)


def build_interactions(events: pd.DataFrame, as_of: datetime, *, weights: dict[str, float],
                       half_life_days: dict[str, float], item_ids: np.ndarray | None = None,
                       decay_from: str = "as_of") -> Interactions:
    """Sum decayed weights per (user, item); ``item_ids`` fixes the column space (the catalogue);
    ``decay_from``: see :func:`pipeline.features.items.decay_factor`."""
    ev = events[events["item_id"].notna() & events["event_type"].isin(list(weights))]
    w = decayed_weight(ev, as_of, weights, half_life_days, decay_from).to_numpy()
    users = np.unique(ev["user_id"].to_numpy())
    items = np.unique(ev["item_id"].astype("int64").to_numpy()) if item_ids is None else np.asarray(item_ids)
    return Interactions(_summed(ev, w, users, items), users, items)


def _summed(ev: pd.DataFrame, w: np.ndarray, user_ids: np.ndarray, items: np.ndarray) -> sp.csr_matrix:
    """``w`` summed per (user, item) of ``ev`` as a float32 CSR over ``user_ids`` x ``items`` (other items
    left out)."""
    item = ev["item_id"].astype("int64").to_numpy()
    cols = np.searchsorted(items, item)
    ok = (cols < len(items)) & (items[np.minimum(cols, len(items) - 1)] == item)
    rows = np.searchsorted(user_ids, ev["user_id"].to_numpy(dtype="int64"))
    m = sp.csr_matrix((w[ok], (rows[ok], cols[ok])), shape=(len(user_ids), len(items)), dtype=np.float32)
    m.sum_duplicates()
    return m


def interactions_from_chunks(chunks: Callable[[], Iterable[pd.DataFrame]], as_of: datetime, *,
                             weights: dict[str, float], half_life_days: dict[str, float], item_ids: np.ndarray,
                             decay_from: str = "as_of") -> Interactions:
    """:func:`build_interactions` over events that come in chunks (a snapshot's date partitions, each call of
    ``chunks`` reading them afresh), never all at once: one pass for the users (and their latest event), one
    that adds each chunk's sums into the matrix. Memory follows the matrix (users x their items), not the
    events; the sums may differ from the one-frame build in the last float32 bits (another grouping)."""
    items = np.asarray(item_ids)
    last: pd.Series | None = None
    users: list[np.ndarray] = [np.zeros(0, "int64")]
    for ch in chunks():
        ev = ch[ch["item_id"].notna() & ch["event_type"].isin(list(weights))]
        users.append(np.unique(ev["user_id"].to_numpy(dtype="int64")))
        if decay_from == "user_last" and len(ev):
            top = ev.groupby("user_id")["ts"].max()
            last = top if last is None else pd.concat([last, top]).groupby(level=0).max()
    user_ids = np.unique(np.concatenate(users))
    m = sp.csr_matrix((len(user_ids), len(items)), dtype=np.float32)
    for ch in chunks():
        ev = ch[ch["item_id"].notna() & ch["event_type"].isin(list(weights))]
        if not len(ev):
            continue
        if "event_id" in ev:  # a fixed order within the chunk, whatever order the files hold
            ev = ev.sort_values(["ts", "event_id"], kind="stable")
        w = decayed_weight(ev, as_of, weights, half_life_days, decay_from, user_last=last).to_numpy()
        m = m + _summed(ev, w, user_ids, items)
    m.sum_duplicates()
    return Interactions(sp.csr_matrix(m, dtype=np.float32), user_ids, items)


def cap_user_history(user_items: sp.csr_matrix, max_items: int | None) -> sp.csr_matrix:
    """Keep each user's ``max_items`` strongest items (ties: lower column), so that one very active user
    (or a bot) cannot dominate ``X^T X`` or its cost: co-occurrence work grows with the square of a row."""
    m = sp.csr_matrix(user_items, dtype=np.float32)
    if not max_items or m.nnz == 0:
        return m
    if not m.has_canonical_format:  # a repeated (user, item) entry is one item of the history
        m = m.copy()
        m.sum_duplicates()
    lengths = np.diff(m.indptr)
    if lengths.max() <= max_items:
        return m
    keep = np.ones(m.nnz, dtype=bool)
    for r in np.flatnonzero(lengths > max_items):
        s, e = m.indptr[r], m.indptr[r + 1]
        order = np.lexsort((m.indices[s:e], -m.data[s:e]))
        drop = np.ones(e - s, dtype=bool)
        drop[order[:max_items]] = False
        keep[s:e] = ~drop
    # CSR straight from the kept entries (row order and in-row order unchanged): no COO triplets, whose
    # int64 row array alone is as large as the matrix
    indptr = np.concatenate([[0], np.cumsum(np.minimum(lengths, max_items))])
    out = sp.csr_matrix((m.data[keep], m.indices[keep], indptr.astype(m.indptr.dtype)), shape=m.shape)
    out.sort_indices()
    return out
