"""Content recall: nearest items in embedding space, so that items with no interactions can be recommended.

Item vectors come from ``snapshot/item_embeddings.parquet`` (item_id, embedding list<float32>, L2-normalised;
written by the features stage) or, when that file is absent, from hashed TF-IDF of the item text
(:func:`pipeline.recall.text.text_embeddings`). The index is faiss: exact inner product (``IndexFlatIP``)
up to ``EXACT_MAX_ITEMS`` items; above, an inverted file (``IndexIVFFlat``: ``IVF_LISTS`` lists, ``IVF_PROBE``
probed), because exact search costs the catalogue's size per user. Built with one thread and a fixed seed, so the
same input gives the same index and each query's result does not depend on the others in its batch.

A user's query vector is the weighted mean of the embeddings of their strongest items; every candidate
keeps as anchor the history item closest to it (the "because you viewed X" of a content match).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputDataError

#: Largest catalogue searched exactly: exact search costs every user the catalogue's size, the inverted file
#: a fraction of it at nearly the same items (its figures against exact search: research/RESULTS.md).
EXACT_MAX_ITEMS = 50_000
#: Inverted lists (at most; fewer for smaller catalogues) and lists probed per query.
IVF_LISTS = 1024
IVF_PROBE = 24
EMBEDDINGS_FILE = "item_embeddings.parquet"


class ContentIndex:
    """ANN index over item embeddings (inner product on L2-normalised vectors = cosine)."""

    def __init__(self, item_ids: np.ndarray, vectors: np.ndarray) -> None:
        import faiss

        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(item_ids):
            raise InputDataError(f"item embeddings have shape {vecs.shape} for {len(item_ids)} items",
                                 "item_embeddings.parquet: one fixed-length embedding per item_id")
        if not np.isfinite(vecs).all():
            raise InputDataError("item embeddings contain NaN/inf", "the features stage's item_embeddings.parquet")
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)  # never the caller's array
        order = np.argsort(item_ids, kind="stable")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)[order]
        self.vectors = vecs[order]
        faiss.omp_set_num_threads(1)  # determinism (k-means) and the 2-core budget
        dim = self.vectors.shape[1]
        if len(self.item_ids) <= EXACT_MAX_ITEMS:
            self.index = faiss.IndexFlatIP(dim)
        else:
            lists = int(min(IVF_LISTS, max(64, 4 * np.sqrt(len(self.item_ids)))))
            self._quantizer = faiss.IndexFlatIP(dim)  # the IVF index refers to it: kept alive here
            ivf = faiss.IndexIVFFlat(self._quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            # k-means on a fixed-seed sample of 64 points per list, 10 rounds: built once per process
            ivf.cp.seed, ivf.cp.niter, ivf.cp.max_points_per_centroid = 1234, 10, 64
            ivf.train(self.vectors)
            ivf.nprobe = min(IVF_PROBE, lists)
            self.index = ivf
        self.index.add(self.vectors)

    @classmethod
    def from_frame(cls, emb: pd.DataFrame) -> ContentIndex:
        if not {"item_id", "embedding"} <= set(emb.columns):
            raise InputDataError(f"item embeddings have columns {list(emb.columns)}",
                                 "expected item_id and embedding (list<float32>)")
        return cls(emb["item_id"].to_numpy(), np.vstack(emb["embedding"].to_numpy()) if len(emb) else
                   np.zeros((0, 1), np.float32))

    @classmethod
    def from_parquet(cls, path: str | Path) -> ContentIndex:
        """The index of an ``item_id, embedding`` Parquet file, read through Arrow straight into one float32
        matrix (no per-item Python arrays in between: a worker's peak stays near the index's own size)."""
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["item_id", "embedding"])
        ids = t.column("item_id").to_numpy().astype(np.int64)
        emb = t.column("embedding").combine_chunks()
        del t
        width = len(emb[0]) if len(emb) else 1
        flat = emb.flatten().to_numpy(zero_copy_only=False)
        if len(flat) != len(ids) * width:
            raise InputDataError(f"item embeddings in {path} do not all have {width} values",
                                 "item_embeddings.parquet: one fixed-length embedding per item_id")
        return cls(ids, np.asarray(flat, dtype=np.float32).reshape(len(ids), width))

    def rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.searchsorted(self.item_ids, item_ids)
        ok = (r < len(self.item_ids)) & (self.item_ids[np.minimum(r, max(len(self.item_ids) - 1, 0))] == item_ids)
        return np.where(ok, r, -1), ok

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Item rows and cosine scores of the ``n`` nearest items of each query row (-1 where none)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        scores, rows = self.index.search(q, min(n, len(self.item_ids)))
        return rows, scores

    def similar_items(self, item_ids: np.ndarray, n: int = 20) -> pd.DataFrame:
        """Content neighbours of items (item_id, similar_item_id, score, rank, method), self excluded."""
        rows, ok = self.rows(np.asarray(item_ids, dtype=np.int64))
        src = np.asarray(item_ids, dtype=np.int64)[ok]
        r, s = self.search(self.vectors[rows[ok]], n + 1)
        out = pd.DataFrame({"item_id": np.repeat(src, r.shape[1]), "similar_item_id": self.item_ids[r.ravel()],
                            "score": s.ravel().astype("float64"), "valid": r.ravel() >= 0})
        out = out[out["valid"] & (out["item_id"] != out["similar_item_id"])].drop(columns="valid")
        out = out.sort_values(["item_id", "score", "similar_item_id"], ascending=[True, False, True], kind="stable")
        out = out.groupby("item_id").head(n)
        out["rank"] = out.groupby("item_id").cumcount().astype("int32") + 1
        out["method"] = "content"
        return out.reset_index(drop=True)


def content_candidates(history: pd.DataFrame, index: ContentIndex, *, n: int = 100,
                       history_items: int = 20) -> pd.DataFrame:
    """Per user, the ``n`` items nearest to the weighted mean of their strongest items' embeddings.

    ``history`` has user_id, item_id, weight. Returns user_id, item_id, recall_score (cosine), anchor_item_id
    (the history item closest to the candidate); the user's own history items are not returned.
    """
    cols = ["user_id", "item_id", "recall_score", "anchor_item_id"]
    if history.empty or len(index.item_ids) == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c != "recall_score" else "float64") for c in cols})
    h = (history.sort_values(["user_id", "weight", "item_id"], ascending=[True, False, True])
         .groupby("user_id").head(history_items))
    rows, ok = index.rows(h["item_id"].to_numpy(dtype=np.int64))
    h = h[ok].assign(_row=rows[ok])
    if h.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c != "recall_score" else "float64") for c in cols})
    # weights relative to the user's strongest item: the query is normalised anyway, and decayed weights of
    # old histories (1e-48 and less) would round to 0 in float32 and leave an empty query
    top = h.groupby("user_id")["weight"].transform("max")
    h = h[top > 0]
    if h.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c != "recall_score" else "float64") for c in cols})
    users, inv = np.unique(h["user_id"].to_numpy(), return_inverse=True)
    w = (h["weight"] / top.loc[h.index]).to_numpy(np.float32)
    q = np.zeros((len(users), index.vectors.shape[1]), np.float32)
    np.add.at(q, inv, index.vectors[h["_row"].to_numpy()] * w[:, None])
    # a zero query (history items without an embedding, or opposite vectors) is no evidence: faiss would
    # return the first rows of the index with score 0, arbitrary items labelled as content matches
    has_q = np.linalg.norm(q, axis=1) > 0
    if not has_q.all():
        h = h[has_q[inv]]
        if h.empty:
            return pd.DataFrame({c: pd.Series(dtype="int64" if c != "recall_score" else "float64") for c in cols})
        users, q = users[has_q], q[has_q]
    r, s = index.search(q, n + int(h.groupby("user_id").size().max()))
    out = pd.DataFrame({"user_id": np.repeat(users, r.shape[1]), "_row": r.ravel(), "recall_score": s.ravel()})
    out = out[out["_row"] >= 0]
    out["item_id"] = index.item_ids[out["_row"].to_numpy()]
    own = h[["user_id", "item_id"]].assign(_own=True)
    out = out.merge(own, on=["user_id", "item_id"], how="left")
    out = out[out["_own"].isna()].drop(columns="_own")
    out = (out.sort_values(["user_id", "recall_score", "item_id"], ascending=[True, False, True], kind="stable")
           .groupby("user_id").head(n).reset_index(drop=True))
    # anchor: the history item most similar to the candidate (a small per-user dot product)
    hv = h.groupby("user_id")["_row"].apply(np.asarray)
    anchors = np.empty(len(out), dtype=np.int64)
    for u, grp in out.groupby("user_id", sort=False).indices.items():
        hrows = hv[u]
        sims = index.vectors[out["_row"].to_numpy()[grp]] @ index.vectors[hrows].T
        anchors[grp] = index.item_ids[hrows[np.argmax(sims, axis=1)]]
    out["anchor_item_id"] = anchors
    out["recall_score"] = out["recall_score"].clip(lower=0.0).astype("float64")
    return out[cols]


def load_embeddings(snapshot_dir: str | Path, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """``item_embeddings.parquet`` of the snapshot, or text embeddings of ``items`` (or items.parquet)."""
    from pipeline.recall.text import text_embeddings

    snap = Path(snapshot_dir)
    if (snap / EMBEDDINGS_FILE).exists():
        return pd.read_parquet(snap / EMBEDDINGS_FILE, columns=["item_id", "embedding"])
    if items is None:
        items = pd.read_parquet(snap / "items.parquet")
    return text_embeddings(items)


@lru_cache(maxsize=2)
def _cached_index(path: str, mtime: float) -> ContentIndex:
    f = Path(path) / EMBEDDINGS_FILE
    return ContentIndex.from_parquet(f) if f.exists() else ContentIndex.from_frame(load_embeddings(path))


def release_index() -> None:
    """Drop the content indexes this process holds (a worker after its run's scoring stage)."""
    _cached_index.cache_clear()


def content_index_for(snapshot_dir: str | Path) -> ContentIndex:
    """The snapshot's content index, built once per worker process (keyed by path and embeddings mtime)."""
    snap = Path(snapshot_dir)
    f = snap / EMBEDDINGS_FILE
    return _cached_index(str(snap), f.stat().st_mtime if f.exists() else 0.0)


CONTENT_NEIGHBOURS_FILE = "content_neighbours.parquet"
#: ``method`` of the content rows of ``recsys.similar_items``.
CONTENT_METHOD = "content-text+image"


def build_content_neighbours(snapshot_dir: str | Path, k: int = 20) -> int:
    """Each item's ``k`` nearest items in the fused text+image space -> ``content_neighbours.parquet``
    (the item features stage writes it once the fused vectors exist); returns its row count."""
    from pipeline.files import write_parquet

    snap = Path(snapshot_dir)
    if not (snap / EMBEDDINGS_FILE).exists():
        return 0
    index = ContentIndex.from_parquet(snap / EMBEDDINGS_FILE)
    parts = [index.similar_items(index.item_ids[s:s + 5_000], n=k) for s in range(0, len(index.item_ids), 5_000)]
    out = pd.concat(parts, ignore_index=True) if parts else index.similar_items(index.item_ids[:0], n=k)
    out["method"] = CONTENT_METHOD
    write_parquet(out, snap / CONTENT_NEIGHBOURS_FILE)
    return len(out)


def similar_items_table(snapshot_dir: str | Path, k: int = 20) -> pd.DataFrame:
    """What ``recsys.similar_items`` publishes: per item its behavioural neighbours (``neighbours.parquet``)
    first, then its content neighbours (fused text+image) that are not among them, ``k`` in all; an item
    nobody interacted with yet (the cold start) gets content neighbours only."""
    snap = Path(snapshot_dir)
    cols = ["item_id", "similar_item_id", "score", "rank", "method"]
    cf = pd.read_parquet(snap / "neighbours.parquet") if (snap / "neighbours.parquet").exists() else \
        pd.DataFrame({c: [] for c in cols})
    if not (snap / CONTENT_NEIGHBOURS_FILE).exists():
        return cf
    ct = pd.read_parquet(snap / CONTENT_NEIGHBOURS_FILE)
    both = pd.concat([cf[cols].assign(_tier=0), ct[cols].assign(_tier=1)], ignore_index=True)
    both = both.drop_duplicates(["item_id", "similar_item_id"], keep="first")
    both = both.sort_values(["item_id", "_tier", "rank", "similar_item_id"], kind="stable").groupby("item_id").head(k)
    both["rank"] = both.groupby("item_id").cumcount().astype("int32") + 1
    return both.drop(columns="_tier").astype({"item_id": "int64", "similar_item_id": "int64"}).reset_index(drop=True)
