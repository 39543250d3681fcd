"""Feature space and tensors of the ranker: behaviour sequences, item side features, recall features.

Everything here is a pure pandas/numpy function of frames the caller already filtered by time, plus one
explicit ``cutoff``: a sequence or an item statistic "at t" uses events with ``ts < t`` only. That single
rule is what :mod:`pipeline.rank.data` relies on for point-in-time correct training data.

Index conventions (every vocabulary): 0 = padding / absent, 1 = unknown (seen at scoring, not in training),
2.. = known values. Unseen items therefore still get their category, brand, price and embedding.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from pipeline.errors import ModelError
from pipeline.features.items import decayed_weight, top_category
from pipeline.recall.candidates import SCORE_COLUMNS, sorted_codes

#: Event types of a sequence token (searches carry no item and are left out).
SEQ_EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
#: Upper edges (seconds before the cut-off) of the time-gap buckets: 1 min .. 90 days, then "older".
GAP_EDGES: tuple[float, ...] = tuple(float(x) for x in (60, 600, 3600, 4 * 3600, 12 * 3600, 86400, 2 * 86400,
                                                       4 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
                                                       90 * 86400))
#: Numeric inputs of the first models (a saved model whose feature space lists no ``numeric`` has these).
BASE_NUMERIC: tuple[str, ...] = ("recall_score", "p_recall", "has_recall", "log_activity", "log_recent", "trend")
#: The user's share of their decayed history on the candidate's category, top category, brand and price
#: bucket, and log1p of their decayed weight on the item itself. The attention over the sequence can learn
#: these only from far more data than a shop's nightly windows hold; as explicit inputs they are what lets
#: the ranker weigh "this shopper's shelves" against global popularity.
AFFINITY_FEATURES: tuple[str, ...] = ("user_item_weight", "user_cat_share", "user_top_share", "user_brand_share",
                                      "user_price_share")
#: Similarity of the candidate to the user's recent items in the fused text+image space
#: (``item_embeddings.parquet``): cosine to the decayed-weighted mean of their ``CONTENT_HISTORY`` strongest
#: items, and the best cosine to any one of them. What lets a never-sold item that looks like or reads like
#: what the shopper just viewed rank above a popular stranger.
CONTENT_FEATURES: tuple[str, ...] = ("user_content_sim", "user_content_max")
CONTENT_HISTORY = 20
#: The user_features stage's figures (:mod:`pipeline.features.users`) per user: log1p of the days since their
#: last event (capped at :data:`RECENCY_CAP_DAYS`), of their events, purchases, spend, sessions and distinct
#: items, the share of each event type, and log(candidate price / their decayed mean price). What tells a
#: loyal buyer from a one-visit browser, which the sequence (50 items at most) and the shares above do not.
PROFILE_FEATURES: tuple[str, ...] = ("user_log_recency", "user_log_events", "user_log_purchases",
                                     "user_log_monetary", "user_share_view", "user_share_click", "user_share_cart",
                                     "user_share_purchase", "user_share_search", "user_log_sessions",
                                     "user_log_items", "user_price_ratio")
#: The columns of ``finalize_user_features`` (and so of the run's ``user_features`` parts) they read.
PROFILE_COLUMNS: tuple[str, ...] = ("user_id", "recency_days", "events", "purchases", "monetary", "n_view",
                                    "n_click", "n_add_to_cart", "n_purchase", "n_search", "sessions", "items",
                                    "price_mean")
RECENCY_CAP_DAYS = 365.0
#: Numeric per-candidate inputs of a new model, in tensor column order: every recall source's own score
#: (0 where it did not propose the item), so the ranker learns the fusion the noisy-or fixes by hand.
NUMERIC_FEATURES: tuple[str, ...] = (*BASE_NUMERIC, *SCORE_COLUMNS, *AFFINITY_FEATURES, *CONTENT_FEATURES,
                                     *PROFILE_FEATURES)
PRICE_BUCKETS = 10


def _vocab(values: pd.Series) -> list[str]:
    return sorted({str(v) for v in values.dropna().unique()})


def _lookup(vocab: list[str], values: pd.Series) -> np.ndarray:
    """Index 2.. for known strings, 1 for unknown, 0 for missing."""
    # Look up each distinct value once: a per-row map was most of the scoring overhead.
    codes, uniques = pd.factorize(pd.Series(values), use_na_sentinel=True)
    table = {v: i + 2 for i, v in enumerate(vocab)}
    mapped = np.fromiter((table.get(str(u), 1) for u in uniques), dtype=np.int64, count=len(uniques))
    return np.append(mapped, 0)[codes]  # code -1 (missing) picks the appended 0


@dataclass
class FeatureSpace:
    """Vocabularies and bucket edges fitted on training data; saved with the model (sidecar + tensors)."""

    item_ids: np.ndarray
    categories: list[str]
    top_categories: list[str]
    brands: list[str]
    price_edges: list[float]
    sources: list[str]
    seq_len: int = 50
    embedding_dim: int = 0
    gap_edges: tuple[float, ...] = GAP_EDGES
    event_types: tuple[str, ...] = SEQ_EVENT_TYPES
    extra: dict = field(default_factory=dict)
    numeric: tuple[str, ...] = NUMERIC_FEATURES

    @property
    def n_items(self) -> int:
        return len(self.item_ids) + 2

    @classmethod
    def fit(cls, items: pd.DataFrame, item_ids: np.ndarray, sources: list[str], *, seq_len: int = 50,
            embedding_dim: int = 0) -> FeatureSpace:
        """Vocabularies from the catalogue ``items`` (category, brand, price) and the trained ``item_ids``."""
        price = pd.to_numeric(items.get("price", pd.Series(dtype="float64")), errors="coerce").dropna()
        edges = (np.unique(np.quantile(price, np.linspace(0, 1, PRICE_BUCKETS + 1)[1:-1])).tolist()
                 if len(price) else [])
        cat = items.get("category", pd.Series(dtype="object"))
        return cls(item_ids=np.unique(np.asarray(item_ids, dtype=np.int64)), categories=_vocab(cat),
                   top_categories=_vocab(top_category(cat.dropna())),
                   brands=_vocab(items.get("brand", pd.Series(dtype="object"))), price_edges=edges,
                   sources=sorted(set(sources)), seq_len=seq_len, embedding_dim=embedding_dim)

    def to_json(self) -> dict:
        """Everything but ``item_ids`` (those go into the safetensors file as a tensor)."""
        return {"categories": self.categories, "top_categories": self.top_categories, "brands": self.brands,
                "price_edges": self.price_edges, "sources": self.sources, "seq_len": self.seq_len,
                "embedding_dim": self.embedding_dim, "gap_edges": list(self.gap_edges),
                "event_types": list(self.event_types), "extra": self.extra, "n_items": int(len(self.item_ids)),
                "numeric": list(self.numeric)}

    @classmethod
    def from_json(cls, d: dict, item_ids: np.ndarray) -> FeatureSpace:
        return cls(item_ids=np.asarray(item_ids, dtype=np.int64), categories=d["categories"],
                   top_categories=d["top_categories"], brands=d["brands"], price_edges=d["price_edges"],
                   sources=d["sources"], seq_len=int(d["seq_len"]), embedding_dim=int(d["embedding_dim"]),
                   gap_edges=tuple(d["gap_edges"]), event_types=tuple(d["event_types"]), extra=d.get("extra", {}),
                   numeric=tuple(d.get("numeric", BASE_NUMERIC)))

    # -- encoders -------------------------------------------------------------------------------------
    def item_index(self, item_ids: np.ndarray | pd.Series) -> np.ndarray:
        """2.. for trained items, 1 for unknown ones (they score through their side features)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if len(self.item_ids) == 0:
            return np.ones(len(ids), dtype=np.int64)
        pos = np.searchsorted(self.item_ids, ids)
        ok = (pos < len(self.item_ids)) & (self.item_ids[np.minimum(pos, len(self.item_ids) - 1)] == ids)
        return np.where(ok, pos + 2, 1).astype(np.int64)

    def side_table(self, items: pd.DataFrame) -> pd.DataFrame:
        """item_id -> category, top category, brand, price bucket indices (every catalogue item)."""
        cat = items.get("category", pd.Series(index=items.index, dtype="object"))
        price = pd.to_numeric(items.get("price", pd.Series(index=items.index, dtype="float64")), errors="coerce")
        pb = np.where(price.isna().to_numpy(), 0,
                      np.searchsorted(np.asarray(self.price_edges), price.fillna(0).to_numpy()) + 1)
        return pd.DataFrame({
            "item_id": items["item_id"].to_numpy(dtype=np.int64),
            "cat": _lookup(self.categories, cat),
            "top": _lookup(self.top_categories, top_category(cat).where(cat.notna())),
            "brand": _lookup(self.brands, items.get("brand", pd.Series(index=items.index, dtype="object"))),
            "price": pb.astype(np.int64),
        }).drop_duplicates("item_id").set_index("item_id")

    def source_index(self, source: pd.Series) -> np.ndarray:
        return _lookup(self.sources, source)

    def gap_bucket(self, seconds: np.ndarray) -> np.ndarray:
        """1.. per bucket of the time between an event and the cut-off (0 is padding)."""
        return (np.searchsorted(np.asarray(self.gap_edges), np.maximum(seconds, 0.0)) + 1).astype(np.int64)

    @property
    def n_gaps(self) -> int:
        return len(self.gap_edges) + 2

    def price_buckets(self) -> int:
        return len(self.price_edges) + 2


def item_stats_at(events: pd.DataFrame, cutoff: datetime, weights: dict[str, float],
                  half_life_days: dict[str, float], scale: float = 1.0) -> pd.DataFrame:
    """Per-item activity / recent events / trend from events before ``cutoff`` (the same definitions as
    ``pipeline.features.items``), so training at t and scoring at as_of see the same feature. ``scale``:
    ``events`` hold a sample of the users, and the counts are scaled up to the whole shop by this factor."""
    ev = events[events["item_id"].notna() & (events["ts"] < pd.Timestamp(cutoff))]
    if ev.empty:
        return pd.DataFrame(columns=["activity", "recent_events", "events", "trend"],
                            index=pd.Index([], dtype="int64", name="item_id"))
    recent = (pd.Timestamp(cutoff) - ev["ts"]) <= pd.Timedelta(days=3)
    df = pd.DataFrame({"item_id": ev["item_id"].astype("int64").to_numpy(),
                       "activity": decayed_weight(ev, cutoff, weights, half_life_days).to_numpy(),
                       "events": 1, "recent_events": recent.astype("int64").to_numpy()})
    s = df.groupby("item_id").sum()
    if scale != 1.0:
        s = s.astype("float64")
        s[["activity", "events", "recent_events"]] *= scale
    s["trend"] = (s["recent_events"] + 1.0) / (s["events"] + 10.0)
    return s


def _sort_key(col: pd.Series) -> np.ndarray:
    """An integer/float array that sorts like ``col`` under pandas' ``sort_values`` (missing values last)."""
    if isinstance(col.dtype, pd.DatetimeTZDtype) or (isinstance(col.dtype, np.dtype) and col.dtype.kind == "M"):
        v = col.array.asi8  # epoch integers in the column's unit, same order; NaT is the smallest int64
        nat = np.iinfo(np.int64).min
        return np.where(v == nat, np.iinfo(np.int64).max, v) if (v == nat).any() else v
    if isinstance(col.dtype, np.dtype) and col.dtype.kind in "iub":
        return col.to_numpy()
    if isinstance(col.dtype, np.dtype) and col.dtype.kind == "f" and not np.isnan(col.to_numpy()).any():
        return col.to_numpy()
    codes, uniques = pd.factorize(col, sort=True)  # ranks of the values: same order, NA -> -1
    return np.where(codes < 0, len(uniques), codes)


def user_sequences(events: pd.DataFrame, users: np.ndarray, cutoff: datetime | pd.Timestamp | None,
                   space: FeatureSpace) -> dict[str, np.ndarray]:
    """Each user's last ``seq_len`` item events before ``cutoff`` as left-padded index arrays.

    Returns ``items``, ``types``, ``gaps`` (``len(users) x seq_len``, most recent last). ``cutoff=None``
    means "no time information": gaps are padding (e.g. datasets without timestamps). Events are ordered by
    user, then ``ts``, ``event_id``, ``_order`` (those present), ties in frame order.
    """
    n, L = len(users), space.seq_len
    out = {k: np.zeros((n, L), dtype=np.int64) for k in ("items", "types", "gaps")}
    if n == 0 or events.empty:
        return out
    # numpy on row positions instead of filtered/sorted/grouped frames: this ran on every scoring call and
    # its pandas sort + groupby + tail was a large share of what scoring spent outside the forward pass.
    codes, uniques = pd.factorize(events["event_type"])
    tmap = {t: i + 1 for i, t in enumerate(space.event_types)}
    tcode = np.append(np.fromiter((tmap.get(u, 0) for u in uniques), dtype=np.int64, count=len(uniques)), 0)
    types = tcode[codes]  # 0: not a sequence event type (or missing)
    keep = (types > 0) & events["item_id"].notna().to_numpy()
    if cutoff is not None:
        keep &= (events["ts"] < pd.Timestamp(cutoff)).to_numpy()
    keep &= events["user_id"].isin(users).to_numpy()
    sel = np.flatnonzero(keep)
    if not len(sel):
        return out
    keys = ["user_id"] + [c for c in ("ts", "event_id", "_order") if c in events.columns]
    # np.lexsort is stable and sorts by its last key first, like a stable multi-column sort_values.
    srt = np.lexsort([_sort_key(events[c])[sel] for c in reversed(keys)])
    sel = sel[srt]
    uid = events["user_id"].to_numpy()[sel]
    new_user = np.r_[True, uid[1:] != uid[:-1]]
    ends = np.r_[np.flatnonzero(new_user)[1:], len(uid)]
    back = ends[np.cumsum(new_user) - 1] - 1 - np.arange(len(uid))  # 0 = a user's most recent event
    last = back < L
    sel, uid, back = sel[last], uid[last], back[last]
    order = np.argsort(users, kind="stable")
    row = order[np.searchsorted(users, uid, sorter=order)]
    col = L - 1 - back
    out["items"][row, col] = space.item_index(events["item_id"].to_numpy(dtype=np.int64, na_value=0)[sel])
    out["types"][row, col] = types[sel]
    if cutoff is not None and "ts" in events.columns:
        secs = (pd.Timestamp(cutoff) - events["ts"].array[sel]).total_seconds()
        out["gaps"][row, col] = space.gap_bucket(np.asarray(secs, dtype=np.float64))
    return out


#: Width of the item vectors the ranker reads: wider ones (the fused text+image vector is 640) are projected
#: down, so a shard's per-candidate tensors stay within the worker's memory (2000 users x 300 candidates x 640
#: floats is 1.5 GB per copy; a nightly's worker died of it).
RANK_EMB_DIM = 64


def project(mat: np.ndarray, dim: int = RANK_EMB_DIM, seed: int = 0) -> np.ndarray:
    """``mat``'s rows through a fixed Gaussian projection to ``dim`` columns (cosines kept approximately,
    Johnson-Lindenstrauss); the same matrix for a given input width in every process, training and scoring."""
    if mat.shape[1] <= dim:
        return mat.astype(np.float32, copy=False)
    r = np.random.default_rng(seed).standard_normal((mat.shape[1], dim)).astype(np.float32) / np.sqrt(dim)
    return mat.astype(np.float32, copy=False) @ r


def load_item_embeddings(path: str | None) -> pd.DataFrame | None:
    """``item_embeddings.parquet`` (item_id, embedding list<float32>) as item_id -> float32 rows, at most
    :data:`RANK_EMB_DIM` wide (:func:`project`)."""
    if path is None:
        return None
    import os

    if not os.path.exists(path):
        return None
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    if t.num_rows == 0 or "embedding" not in t.column_names:
        return None
    ids = t.column("item_id").to_numpy()
    col = t.column("embedding").combine_chunks()
    del t
    # Arrow straight into one float32 matrix: no per-item Python arrays at full width
    mat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(ids), -1)
    del col
    if mat.shape[1] > RANK_EMB_DIM:
        mat = project(mat)
    return pd.DataFrame({"item_id": ids, "embedding": list(mat)})


#: (a weak reference to the last embeddings frame read, its item index, its rows as one matrix): a worker
#: scores many shards against the run's one cached frame, and stacking its per-item arrays cost the catalogue's
#: size per call. Weak: the entry never keeps a run's frame alive, and a new frame is never taken for it.
_STACKED: list[tuple[weakref.ref, pd.Index, np.ndarray] | None] = [None]


def _stacked(emb: pd.DataFrame) -> tuple[pd.Index, np.ndarray]:
    last = _STACKED[0]
    if last is not None and last[0]() is emb:
        return last[1], last[2]
    e = emb.drop_duplicates("item_id")
    width = max((len(v) for v in e["embedding"]), default=0)
    mat = np.zeros((len(e), width), dtype=np.float32)
    for r, v in enumerate(e["embedding"].to_numpy()):
        mat[r, : len(v)] = v
    index = pd.Index(e["item_id"].to_numpy())

    def forget(ref: weakref.ref) -> None:  # the frame is gone (a released run): so is its matrix
        if _STACKED[0] is not None and _STACKED[0][0] is ref:
            _STACKED[0] = None

    _STACKED[0] = (weakref.ref(emb, forget), index, mat)
    return index, mat


def embedding_matrix(emb: pd.DataFrame | None, item_ids: np.ndarray, dim: int) -> np.ndarray:
    """Rows of ``emb`` for ``item_ids`` (zeros where absent), shape ``len(item_ids) x dim``."""
    out = np.zeros((len(item_ids), dim), dtype=np.float32)
    if emb is None or dim == 0 or len(item_ids) == 0 or not len(emb):
        return out
    index, mat = _stacked(emb)
    pos = index.get_indexer(np.asarray(item_ids))
    ok = np.flatnonzero(pos >= 0)
    if len(ok):
        w = min(dim, mat.shape[1])
        out[ok, :w] = mat[pos[ok], :w]
    return out


#: Largest users x codes table :class:`UserAffinity` keeps dense (a gather per row); above it, sorted keys.
DENSE_AFFINITY_CELLS = 4_000_000


def _positions(sorted_values: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position of each query in ``sorted_values``, whether it is there), searching each distinct query once."""
    if not len(sorted_values):
        return np.zeros(len(queries), dtype=np.int64), np.zeros(len(queries), dtype=bool)
    codes, uniq = pd.factorize(queries, sort=False)
    uniq = np.asarray(uniq)
    pos = np.minimum(np.searchsorted(sorted_values, uniq), len(sorted_values) - 1)
    return pos[codes], (sorted_values[pos] == uniq)[codes]


@dataclass
class UserAffinity:
    """Each user's decayed event weight before a cut-off, summed per item and per category, top category,
    brand and price bucket (the side table's codes), as a share of the user's total: what
    :data:`AFFINITY_FEATURES` look up for a candidate. Built once per call from the users' own events."""

    users: np.ndarray
    items: np.ndarray
    #: sorted (user position * len(items) + item position) keys and their summed weight
    item_keys: np.ndarray
    item_weight: np.ndarray
    #: per side column: a dense ``users x base`` share table, or (sorted keys, shares)
    shares: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]]
    bases: dict[str, int]

    @classmethod
    def of(cls, events: pd.DataFrame, cutoff: datetime | pd.Timestamp | None, item_side: pd.DataFrame,
           weights: dict[str, float], half_life_days: dict[str, float]) -> UserAffinity:
        keep = events["item_id"].notna().to_numpy() & events["event_type"].isin(SEQ_EVENT_TYPES).to_numpy()
        if cutoff is not None:
            keep &= (events["ts"] < pd.Timestamp(cutoff)).to_numpy()
        # only the columns the weights need, not a copy of every column of the users' events
        ev = events[["event_type", "ts"]][keep]
        at = pd.Timestamp(cutoff) if cutoff is not None else (ev["ts"].max() if len(ev) else pd.Timestamp.now("UTC"))
        w = decayed_weight(ev, at, weights, half_life_days).to_numpy(dtype=np.float64) if len(ev) else np.zeros(0)
        users, upos = sorted_codes(events["user_id"].to_numpy(dtype=np.int64)[keep])
        items, ipos = sorted_codes(events["item_id"].to_numpy(dtype=np.int64, na_value=0)[keep])
        total = np.bincount(upos, weights=w, minlength=len(users))
        total = np.where(total > 0, total, 1.0)
        item_keys, kpos = sorted_codes(upos * max(len(items), 1) + ipos)
        item_weight = np.bincount(kpos, weights=w, minlength=len(item_keys))
        side = item_side.reindex(items)  # the side codes of the distinct history items, then a gather per event
        shares: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]] = {}
        bases = {}
        for col in ("cat", "top", "brand", "price"):
            code = (side[col].fillna(0).to_numpy(dtype=np.int64)[ipos] if col in side
                    else np.zeros(len(ipos), np.int64))
            base = int(item_side[col].max()) + 1 if col in item_side and len(item_side) else 1
            if len(users) * base <= DENSE_AFFINITY_CELLS:
                dense = np.bincount(upos * base + code, weights=w, minlength=len(users) * base)
                shares[col] = dense.reshape(len(users), base) / total[:, None]
            else:
                uk, kp = sorted_codes(upos * base + code)
                shares[col] = (uk, np.bincount(kp, weights=w, minlength=len(uk)) / total[uk // base])
            bases[col] = base
        return cls(users, items, item_keys, item_weight, shares, bases)

    def features(self, users: np.ndarray, items: np.ndarray, codes: dict[str, np.ndarray]) -> np.ndarray:
        """``len(users) x 5`` in :data:`AFFINITY_FEATURES` order (0 for users or items without history)."""
        out = np.zeros((len(users), len(AFFINITY_FEATURES)), dtype=np.float64)
        if not len(users) or not len(self.users):
            return out
        up, known = _positions(self.users, users)
        ip, hit = _positions(self.items, items)
        hit = np.flatnonzero(known & hit)
        if len(hit):
            key = up[hit] * len(self.items) + ip[hit]
            pos = np.minimum(np.searchsorted(self.item_keys, key), len(self.item_keys) - 1)
            out[hit, 0] = np.log1p(np.where(self.item_keys[pos] == key, self.item_weight[pos], 0.0))
        for j, col in enumerate(("cat", "top", "brand", "price"), start=1):
            base, table = self.bases[col], self.shares[col]
            code = codes[col]
            ok = known & (code > 0) & (code < base)
            c = np.where(ok, code, 0)
            if isinstance(table, np.ndarray):
                out[:, j] = np.where(ok, table[up, c], 0.0)
            else:
                uk, vals = table
                k = up * base + c
                pos = np.minimum(np.searchsorted(uk, k), len(uk) - 1)
                out[:, j] = np.where(ok & (uk[pos] == k), vals[pos], 0.0)
        return out


    def content_features(self, users: np.ndarray, item_vec: np.ndarray, history_vec: np.ndarray,
                         k: int = CONTENT_HISTORY, *, chunk_rows: int = 16_384) -> np.ndarray:
        """``len(users) x 2`` in :data:`CONTENT_FEATURES` order: cosine of each candidate's vector
        (``item_vec``, one row per candidate) to the user's profile and the best cosine to one of the user's
        ``k`` strongest items (``history_vec``: one row per ``self.items``); 0 without history or vectors.
        The best match is taken ``chunk_rows`` candidates at a time against each user's padded ``k`` history
        vectors, so memory follows the chunk, not the shard."""
        out = np.zeros((len(users), len(CONTENT_FEATURES)), dtype=np.float64)
        if not len(users) or not len(self.item_keys) or history_vec.size == 0:
            return out
        n_items = max(len(self.items), 1)
        hu, hi, w = self.item_keys // n_items, self.item_keys % n_items, self.item_weight
        order = np.lexsort((-w, hu))  # per user, strongest first
        first = np.searchsorted(hu[order], hu[order], side="left")
        slot = np.arange(len(order)) - first
        keep = order[slot < k]
        slot = slot[slot < k]
        hu, hi, w = hu[keep], hi[keep], w[keep]
        hv = _unit(history_vec)[hi]
        prof = np.zeros((len(self.users), hv.shape[1]), np.float32)
        np.add.at(prof, hu, hv * (w / np.maximum(w.max(), 1e-300))[:, None])
        prof = _unit(prof)
        # each user's k strongest history vectors, padded (a padded slot never wins the max)
        hist = np.zeros((len(self.users), k, hv.shape[1]), np.float32)
        hist[hu, slot] = hv
        filled = np.zeros((len(self.users), k), dtype=bool)
        filled[hu, slot] = True
        up, known = _positions(self.users, users)
        rows = np.flatnonzero(known & filled[np.minimum(up, len(self.users) - 1), 0])
        # candidates grouped by user as padded G x W blocks: one batched matmul against each user's k vectors
        rows = rows[np.argsort(up[rows], kind="stable")]
        starts = np.flatnonzero(np.r_[True, np.diff(up[rows]) != 0]) if len(rows) else np.zeros(0, int)
        counts = np.diff(np.append(starts, len(rows)))
        width = int(counts.max()) if len(rows) else 0
        step = max(1, chunk_rows // max(width, 1))
        for g0 in range(0, len(starts), step):
            g1 = min(g0 + step, len(starts))
            lo, hi = starts[g0], (starts[g1] if g1 < len(starts) else len(rows))
            r = rows[lo:hi]
            cv = _unit(item_vec[r])
            u = up[r]
            out[r, 0] = np.einsum("ij,ij->i", cv, prof[u])
            grp = np.repeat(np.arange(g1 - g0), counts[g0:g1])
            slot_in = np.arange(len(r)) - np.repeat(starts[g0:g1] - lo, counts[g0:g1])
            block = np.zeros((g1 - g0, width, cv.shape[1]), np.float32)
            block[grp, slot_in] = cv
            gu = up[r[starts[g0:g1] - lo]]
            sims = np.matmul(block, hist[gu].transpose(0, 2, 1))  # G x W x k
            sims = np.where(filled[gu][:, None, :], sims, -np.inf).max(axis=2)
            out[r, 1] = sims[grp, slot_in]
        return out


def user_profile_at(events: pd.DataFrame, users: np.ndarray, cutoff: datetime | pd.Timestamp | None,
                    items: pd.DataFrame, weights: dict[str, float],
                    half_life_days: dict[str, float]) -> pd.DataFrame:
    """:data:`PROFILE_COLUMNS` of ``users`` from their events before ``cutoff``, computed by the user_features
    stage's own functions (``user_partials`` + ``finalize_user_features``): one definition for the nightly's
    parts, the training windows and any scoring call without parts. ``cutoff=None``: every event, ages counted
    from the latest one. ``items``: item_id with price, category and brand where known."""
    from pipeline.features.users import finalize_user_features, user_partials
    from pipeline.frames import EVENT_COLUMNS

    users = np.unique(np.asarray(users, dtype=np.int64))
    ev = events[events["user_id"].isin(users)]
    if cutoff is not None:
        ev = ev[ev["ts"] < pd.Timestamp(cutoff)]
    at = (pd.Timestamp(cutoff) if cutoff is not None
          else (ev["ts"].max() if len(ev) else pd.Timestamp.now("UTC")))
    fill = {"event_id": np.arange(len(ev)), "item_id": np.nan, "query": None, "session_id": None, "quantity": 1}
    ev = ev.assign(**{c: v for c, v in fill.items() if c not in ev.columns})[EVENT_COLUMNS]
    cat = items.reindex(columns=["item_id", "price", "category", "brand"]).drop_duplicates("item_id")
    cat = cat.assign(price=pd.to_numeric(cat["price"], errors="coerce").astype("float64"))
    # seq_len=1: the sequence columns are not read here (the ranker encodes its own sequence)
    partial = user_partials(ev, cat, at, weights, half_life_days, 1)
    frame = pd.DataFrame({"user_id": users, "created_at": pd.NaT})
    return finalize_user_features(frame, partial, cat, at)[list(PROFILE_COLUMNS)]


@dataclass
class UserProfile:
    """:data:`PROFILE_FEATURES` of a set of users (from their :data:`PROFILE_COLUMNS`) and the catalogue prices
    the price ratio needs; :meth:`features` looks them up per candidate (0 for users it does not hold)."""

    users: np.ndarray
    table: np.ndarray  # len(users) x (len(PROFILE_FEATURES) - 1): every feature but the price ratio
    price_mean: np.ndarray
    prices: pd.Series  # item_id -> price

    @classmethod
    def of(cls, feats: pd.DataFrame, items: pd.DataFrame) -> UserProfile:
        """From a frame with :data:`PROFILE_COLUMNS` (one row per user) and items with item_id, price."""
        f = feats.drop_duplicates("user_id").sort_values("user_id")

        def col(name: str) -> np.ndarray:
            return pd.to_numeric(f[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

        n = np.nan_to_num(col("events"))
        per = np.where(n > 0, n, 1.0)
        rec = np.clip(col("recency_days"), 0.0, RECENCY_CAP_DAYS)
        table = np.column_stack([
            np.log1p(np.where(np.isnan(rec), RECENCY_CAP_DAYS, rec)), np.log1p(n),
            np.log1p(np.nan_to_num(col("purchases"))), np.log1p(np.maximum(np.nan_to_num(col("monetary")), 0.0)),
            *(np.nan_to_num(col(f"n_{t}")) / per for t in ("view", "click", "add_to_cart", "purchase", "search")),
            np.log1p(np.nan_to_num(col("sessions"))), np.log1p(np.nan_to_num(col("items")))])
        price = pd.to_numeric(items.get("price", pd.Series(dtype="float64")), errors="coerce")
        prices = pd.Series(price.to_numpy(dtype=np.float64), index=items["item_id"].to_numpy(dtype=np.int64))
        return cls(f["user_id"].to_numpy(dtype=np.int64), table, col("price_mean"),
                   prices[~prices.index.duplicated()])

    def features(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``len(users) x len(PROFILE_FEATURES)`` in that order, per candidate (``users[i]``, ``items[i]``)."""
        out = np.zeros((len(users), len(PROFILE_FEATURES)), dtype=np.float64)
        if not len(users) or not len(self.users):
            return out
        up, known = _positions(self.users, users)
        rows = np.flatnonzero(known)
        out[rows, :-1] = self.table[up[rows]]
        code, uniq = pd.factorize(np.asarray(items, dtype=np.int64))
        price = self.prices.reindex(np.asarray(uniq)).to_numpy(dtype=np.float64)[code]
        pm = np.where(known, self.price_mean[up], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log(price / pm)
        out[:, -1] = np.where(np.isfinite(ratio), np.clip(ratio, -5.0, 5.0), 0.0)
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, np.float32(1.0))


def candidate_tensors(cand: pd.DataFrame, item_side: pd.DataFrame, stats: pd.DataFrame,
                      space: FeatureSpace, emb: pd.DataFrame | None = None,
                      affinity: UserAffinity | None = None,
                      profile: UserProfile | None = None) -> dict[str, np.ndarray]:
    """Per candidate row: item, side-feature and source indices, numeric features (``space.numeric``, in
    that order; the affinity ones are 0 without ``affinity``, the profile ones without ``profile``),
    text/image embedding."""
    ids = cand["item_id"].to_numpy(dtype=np.int64)
    n = len(ids)
    # Item-level lookups on the distinct items, then one gather: a batch has ~100x more rows than items.
    code, uniq = pd.factorize(ids)
    uniq = np.asarray(uniq, dtype=np.int64)
    side = item_side.reindex(uniq)
    src = cand["source"] if "source" in cand.columns else pd.Series([None] * n, index=cand.index)
    index = {c: side[c].fillna(0).to_numpy(dtype=np.int64)[code] for c in ("cat", "top", "brand", "price")}
    # column-major while the columns are filled one by one (contiguous writes), row-major for torch at the end
    num = np.zeros((n, len(space.numeric)), dtype=np.float32, order="F")
    if n:
        st = stats.reindex(uniq)
        aff = content = prof = None
        for j, name in enumerate(space.numeric):
            if name in ("recall_score", "p_recall") or name in SCORE_COLUMNS:
                if name in cand.columns:
                    col = cand[name]
                    v = (col.to_numpy(dtype=np.float64, na_value=np.nan) if pd.api.types.is_numeric_dtype(col)
                         else pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64))
                    num[:, j] = np.where(np.isnan(v), 0.0, v)  # inf stays: training must fail loudly on it
            elif name == "has_recall":
                num[:, j] = src.notna().to_numpy(dtype=np.float64)
            elif name == "log_activity":
                num[:, j] = np.log1p(st["activity"].fillna(0.0).to_numpy(dtype=np.float64))[code]
            elif name == "log_recent":
                num[:, j] = np.log1p(st["recent_events"].fillna(0.0).to_numpy(dtype=np.float64))[code]
            elif name == "trend":
                num[:, j] = st["trend"].fillna(0.1).to_numpy(dtype=np.float64)[code]
            elif name in CONTENT_FEATURES:
                if affinity is not None and emb is not None and len(emb):
                    if content is None:
                        dim = int(len(np.asarray(emb["embedding"].iloc[0])))
                        uv = embedding_matrix(emb, uniq, dim)[code]
                        content = affinity.content_features(cand["user_id"].to_numpy(dtype=np.int64), uv,
                                                            embedding_matrix(emb, affinity.items, dim))
                    num[:, j] = content[:, CONTENT_FEATURES.index(name)]
            elif name in AFFINITY_FEATURES:
                if affinity is not None:
                    if aff is None:
                        aff = affinity.features(cand["user_id"].to_numpy(dtype=np.int64), ids, index)
                    num[:, j] = aff[:, AFFINITY_FEATURES.index(name)]
            elif name in PROFILE_FEATURES:
                if profile is not None:
                    if prof is None:
                        prof = profile.features(cand["user_id"].to_numpy(dtype=np.int64), ids)
                    num[:, j] = prof[:, PROFILE_FEATURES.index(name)]
            else:
                raise ModelError(f"ranker: unknown numeric feature {name!r} in the model's feature space",
                                 "the model was saved by a newer build: score it with that build")
    out = {
        "item": space.item_index(uniq)[code],
        **index,
        "source": space.source_index(src),
        "num": np.ascontiguousarray(num),
    }
    if space.embedding_dim:
        out["emb"] = embedding_matrix(emb, uniq, space.embedding_dim)[code]
    return out
