"""Text vectors without a model download: hashed word + character n-gram TF-IDF (pure numpy/scipy).

Search-intent recall matches a user's recent queries to item text (title, brand, category); titles may be
in any language (Chinese has no spaces), so besides lower-cased word tokens every text also contributes its
character bigrams and trigrams. Hashing keeps the vocabulary fixed-size, so a query vector is computed on a
Dask worker without a fitted vocabulary; IDF comes from the item texts.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

N_FEATURES = 1 << 18
_WORD = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    t = text.lower()
    words = _WORD.findall(t)
    grams = []
    for w in words:
        padded = f" {w} "
        for n in (2, 3):
            grams.extend(padded[i: i + n] for i in range(max(len(padded) - n + 1, 0)))
    return [f"w:{w}" for w in words] + [f"c:{g}" for g in grams]


def hashed_counts(texts: Iterable[str], n_features: int = N_FEATURES) -> sp.csr_matrix:
    """``len(texts) x n_features`` token counts (crc32 hash: stable across processes, unlike ``hash``)."""
    texts = list(texts)
    rows, cols = [], []
    for r, text in enumerate(texts):
        toks = _tokens(text if isinstance(text, str) else "")
        rows.extend([r] * len(toks))
        cols.extend(zlib.crc32(t.encode("utf-8")) % n_features for t in toks)
    m = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(texts), n_features),
                      dtype=np.float32)
    m.sum_duplicates()
    return m


def _l2(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32) @ m


class TextIndex:
    """TF-IDF over item texts; ``query(texts)`` gives cosine scores of each text against every item."""

    def __init__(self, item_ids: np.ndarray, texts: Iterable[str], n_features: int = N_FEATURES) -> None:
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.n_features = n_features
        counts = hashed_counts(texts, n_features)
        df = np.bincount(counts.indices, minlength=n_features)
        self.idf = np.log((1.0 + counts.shape[0]) / (1.0 + df)).astype(np.float32) + 1.0
        tf = counts.copy()
        tf.data = 1.0 + np.log(tf.data)
        self.matrix = _l2(tf @ sp.diags(self.idf)).tocsr()
        #: (text, n, floor) -> a pruned row's (item positions, scores): see :meth:`top_matches`.
        self._top_cache: dict[tuple[str, int, float], tuple[np.ndarray, np.ndarray]] = {}

    def vectors(self, texts: Iterable[str]) -> sp.csr_matrix:
        q = hashed_counts(texts, self.n_features)
        q.data = 1.0 + np.log(q.data)
        return _l2(q @ sp.diags(self.idf)).tocsr()

    def query(self, texts: Iterable[str]) -> sp.csr_matrix:
        """Sparse ``len(texts) x n_items`` cosine similarities."""
        return (self.vectors(texts) @ self.matrix.T).tocsr()

    def top_matches(self, texts: list[str], n: int, floor: float) -> sp.csr_matrix:
        """:meth:`query` of ``texts``, each row pruned to its entries >= ``floor`` and >= its ``n``-th largest
        (ties kept). Rows are cached per (text, n, floor) on the index, which a worker keeps for the run: the
        same few hundred queries recur in every shard, and the semantic index matches each against every item
        vector (at 100k items that was a fifth of a shard's time)."""
        cache = self._top_cache
        missing = [t for t in dict.fromkeys(texts) if (t, n, floor) not in cache]
        if missing:
            m = rows_top_n(self.query(missing).tocsr(), n, floor=floor)
            for r, t in enumerate(missing):
                lo, hi = m.indptr[r], m.indptr[r + 1]
                cache[(t, n, floor)] = (m.indices[lo:hi].copy(), m.data[lo:hi].copy())
            while len(cache) > TOP_CACHE:  # oldest first (dicts keep insertion order)
                del cache[next(iter(cache))]
        rows = [cache[(t, n, floor)] for t in texts]
        sizes = np.array([len(i) for i, _ in rows], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(sizes)])
        indices = np.concatenate([i for i, _ in rows]) if rows else np.zeros(0, np.int32)
        data = np.concatenate([d for _, d in rows]) if rows else np.zeros(0, np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(texts), len(self.item_ids)))


#: Distinct (query, n, floor) rows a search index keeps (a few hundred values each at most).
TOP_CACHE = 50_000


def rows_top_n(m: sp.csr_matrix, n: int, *, floor: float) -> sp.csr_matrix:
    """Each row's entries >= ``floor`` and at least as large as its n-th largest (ties kept)."""
    m = m.copy()
    m.data[m.data < floor] = 0
    m.eliminate_zeros()
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        if hi - lo > n:
            row = m.data[lo:hi]
            kth = np.partition(row, hi - lo - n)[hi - lo - n]
            row[row < kth] = 0
    m.eliminate_zeros()
    return m


def item_texts(items: pd.DataFrame) -> pd.Series:
    """The text an item is found by: title, brand and the category path's words."""
    parts = [items[c].fillna("").astype(str) for c in ("title", "brand", "category") if c in items.columns]
    if not parts:
        return pd.Series([""] * len(items), index=items.index)
    out = parts[0]
    for p in parts[1:]:
        out = out + " " + p.str.replace(">", " ", regex=False)
    return out


def text_embeddings(items: pd.DataFrame, dim: int = 128, seed: int = 42) -> pd.DataFrame:
    """Dense L2-normalised item vectors (item_id, embedding) from hashed TF-IDF by a seeded random
    projection: the stand-in for ``item_embeddings.parquet`` when the features stage wrote none."""
    idx = TextIndex(items["item_id"].to_numpy(), item_texts(items).tolist())
    used = np.unique(idx.matrix.indices)
    proj = np.random.default_rng(seed).standard_normal((len(used), dim)).astype(np.float32)
    sub = idx.matrix[:, used]
    emb = np.asarray(sub @ proj, dtype=np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)
    return pd.DataFrame({"item_id": idx.item_ids, "embedding": list(emb)})


#: Semantic matches kept per query (the search source keeps fewer) and the cosine below which a multilingual
#: match is noise (unrelated product titles score 0.0-0.3 against a query, related ones 0.3-0.7).
SEMANTIC_TOP = 200
SEMANTIC_FLOOR = 0.25


class SemanticTextIndex(TextIndex):
    """Lexical TF-IDF plus multilingual sentence vectors: a query's score for an item is the larger of the
    two cosines, so "蓝牙耳机" finds English-titled earbuds and an exact brand word still matches lexically.

    ``vectors``: the items' L2-normalised multilingual text vectors (rows in ``item_ids`` order); queries are
    encoded with the same model (:func:`pipeline.features.encoders.encode_texts`)."""

    def __init__(self, item_ids: np.ndarray, texts: Iterable[str], vectors: np.ndarray,
                 n_features: int = N_FEATURES, *, top: int = SEMANTIC_TOP, floor: float = SEMANTIC_FLOOR) -> None:
        super().__init__(item_ids, texts, n_features)
        self.semantic = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.semantic.shape[0] != len(self.item_ids):
            raise ValueError(f"{self.semantic.shape[0]} text vectors for {len(self.item_ids)} items")
        self.top, self.floor = top, floor

    def semantic_query(self, texts: Iterable[str]) -> sp.csr_matrix:
        """Sparse cosines of each query's ``top`` nearest items at or above ``floor``."""
        from pipeline.features.encoders import encode_texts

        q = encode_texts(list(texts))
        sims = q @ self.semantic.T
        k = min(self.top, sims.shape[1])
        if k == 0:
            return sp.csr_matrix(sims.shape, dtype=np.float32)
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(sims, part, axis=1)
        keep = vals >= self.floor
        rows = np.repeat(np.arange(len(q)), k)[keep.ravel()]
        return sp.csr_matrix((vals.ravel()[keep.ravel()], (rows, part.ravel()[keep.ravel()])), shape=sims.shape,
                             dtype=np.float32)

    def query(self, texts: Iterable[str]) -> sp.csr_matrix:
        texts = list(texts)
        return super().query(texts).maximum(self.semantic_query(texts)).tocsr()


def search_index(item_ids: np.ndarray, texts: list[str], snapshot_dir: str | None = None) -> TextIndex:
    """The search index of a snapshot: semantic when its features stage wrote multilingual text vectors."""
    import json
    from pathlib import Path

    if snapshot_dir is not None:
        snap = Path(snapshot_dir)
        meta_p, vec_p = snap / "item_embeddings.json", snap / "item_text_embeddings.parquet"
        if meta_p.exists() and vec_p.exists() and json.loads(meta_p.read_text()).get("method") == "multilingual":
            from pipeline.features.encoders import text_encoder_available
            from pipeline.features.text import read_embeddings

            if text_encoder_available():
                ids, mat = read_embeddings(vec_p)
                order = np.argsort(ids)
                pos = np.searchsorted(ids[order], np.asarray(item_ids, dtype=np.int64))
                pos = np.minimum(pos, max(len(ids) - 1, 0))
                found = ids[order][pos] == np.asarray(item_ids, dtype=np.int64)
                vec = np.where(found[:, None], mat[order][pos], 0.0).astype(np.float32)
                return SemanticTextIndex(item_ids, texts, vec)
    return TextIndex(item_ids, texts)


def catalogue_search_index(available: pd.DataFrame, snapshot_dir: str | None = None) -> TextIndex:
    """The search index over the available items (``item_id``, ``title``, optional ``brand`` / ``category``),
    as every caller builds it: scoring (the run's artefacts), the ranker's windows and recall without one."""
    return search_index(available["item_id"].to_numpy(), item_texts(available).tolist(), snapshot_dir)
