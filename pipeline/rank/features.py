"""Feature space and tensors of the ranker: behaviour sequences, item side features, recall features.

Everything here is a pure pandas/numpy function of frames the caller already filtered by time, plus one
explicit ``cutoff``: a sequence or an item statistic "at t" uses events with ``ts < t`` only. That single
rule is what :mod:`pipeline.rank.data` relies on for point-in-time correct training data.

Index conventions (every vocabulary): 0 = padding / absent, 1 = unknown (seen at scoring, not in training),
2.. = known values. Unseen items therefore still get their category, brand, price and embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from pipeline.features.items import decayed_weight, top_category

#: Event types of a sequence token (searches carry no item and are left out).
SEQ_EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
#: Upper edges (seconds before the cut-off) of the time-gap buckets: 1 min .. 90 days, then "older".
GAP_EDGES: tuple[float, ...] = tuple(float(x) for x in (60, 600, 3600, 4 * 3600, 12 * 3600, 86400, 2 * 86400,
                                                       4 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
                                                       90 * 86400))
#: Numeric per-candidate inputs, in tensor column order.
NUMERIC_FEATURES: tuple[str, ...] = ("recall_score", "p_recall", "has_recall", "log_activity", "log_recent",
                                     "trend")
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
                "event_types": list(self.event_types), "extra": self.extra, "n_items": int(len(self.item_ids))}

    @classmethod
    def from_json(cls, d: dict, item_ids: np.ndarray) -> FeatureSpace:
        return cls(item_ids=np.asarray(item_ids, dtype=np.int64), categories=d["categories"],
                   top_categories=d["top_categories"], brands=d["brands"], price_edges=d["price_edges"],
                   sources=d["sources"], seq_len=int(d["seq_len"]), embedding_dim=int(d["embedding_dim"]),
                   gap_edges=tuple(d["gap_edges"]), event_types=tuple(d["event_types"]), extra=d.get("extra", {}))

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
                  half_life_days: dict[str, float]) -> pd.DataFrame:
    """Per-item activity / recent events / trend from events before ``cutoff`` (the same definitions as
    ``pipeline.features.items``), so training at t and scoring at as_of see the same feature."""
    ev = events[events["item_id"].notna() & (events["ts"] < pd.Timestamp(cutoff))]
    if ev.empty:
        return pd.DataFrame(columns=["activity", "recent_events", "events", "trend"],
                            index=pd.Index([], dtype="int64", name="item_id"))
    recent = (pd.Timestamp(cutoff) - ev["ts"]) <= pd.Timedelta(days=3)
    df = pd.DataFrame({"item_id": ev["item_id"].astype("int64").to_numpy(),
                       "activity": decayed_weight(ev, cutoff, weights, half_life_days).to_numpy(),
                       "events": 1, "recent_events": recent.astype("int64").to_numpy()})
    s = df.groupby("item_id").sum()
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


def load_item_embeddings(path: str | None) -> pd.DataFrame | None:
    """``item_embeddings.parquet`` (item_id, embedding list<float32>) as item_id -> float32 matrix rows."""
    if path is None:
        return None
    import os

    if not os.path.exists(path):
        return None
    emb = pd.read_parquet(path)
    if emb.empty or "embedding" not in emb.columns:
        return None
    return emb[["item_id", "embedding"]]


def embedding_matrix(emb: pd.DataFrame | None, item_ids: np.ndarray, dim: int) -> np.ndarray:
    """Rows of ``emb`` for ``item_ids`` (zeros where absent), shape ``len(item_ids) x dim``."""
    out = np.zeros((len(item_ids), dim), dtype=np.float32)
    if emb is None or dim == 0 or len(item_ids) == 0:
        return out
    e = emb.drop_duplicates("item_id").set_index("item_id")["embedding"]
    pos = pd.Index(e.index).get_indexer(np.asarray(item_ids))
    ok = np.flatnonzero(pos >= 0)
    if len(ok):
        mat = np.stack([np.asarray(v, dtype=np.float32)[:dim] for v in e.to_numpy()[pos[ok]]])
        out[ok, : mat.shape[1]] = mat
    return out


def candidate_tensors(cand: pd.DataFrame, item_side: pd.DataFrame, stats: pd.DataFrame,
                      space: FeatureSpace, emb: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Per candidate row: item, side-feature and source indices, numeric features, text/image embedding."""
    ids = cand["item_id"].to_numpy(dtype=np.int64)
    n = len(ids)
    # Item-level lookups on the distinct items, then one gather: a batch has ~100x more rows than items.
    code, uniq = pd.factorize(ids)
    uniq = np.asarray(uniq, dtype=np.int64)
    side = item_side.reindex(uniq)
    src = cand["source"] if "source" in cand.columns else pd.Series([None] * n, index=cand.index)
    rs = pd.to_numeric(cand.get("recall_score", pd.Series(0.0, index=cand.index)), errors="coerce")
    pr = pd.to_numeric(cand.get("p_recall", pd.Series(0.0, index=cand.index)), errors="coerce")
    num = np.empty((n, len(NUMERIC_FEATURES)), dtype=np.float32)
    if n:
        st = stats.reindex(uniq)
        num[:, 0] = rs.fillna(0.0).to_numpy(dtype=np.float64)
        num[:, 1] = pr.fillna(0.0).to_numpy(dtype=np.float64)
        num[:, 2] = src.notna().to_numpy(dtype=np.float64)
        num[:, 3] = np.log1p(st["activity"].fillna(0.0).to_numpy(dtype=np.float64))[code]
        num[:, 4] = np.log1p(st["recent_events"].fillna(0.0).to_numpy(dtype=np.float64))[code]
        num[:, 5] = st["trend"].fillna(0.1).to_numpy(dtype=np.float64)[code]
    out = {
        "item": space.item_index(uniq)[code],
        "cat": side["cat"].fillna(0).to_numpy(dtype=np.int64)[code],
        "top": side["top"].fillna(0).to_numpy(dtype=np.int64)[code],
        "brand": side["brand"].fillna(0).to_numpy(dtype=np.int64)[code],
        "price": side["price"].fillna(0).to_numpy(dtype=np.int64)[code],
        "source": space.source_index(src),
        "num": num,
    }
    if space.embedding_dim:
        out["emb"] = embedding_matrix(emb, uniq, space.embedding_dim)[code]
    return out
