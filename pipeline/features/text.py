"""Text embeddings of item title + description -> ``item_text_embeddings.parquet``, fused with the image
vectors into ``item_embeddings.parquet`` (+ JSON sidecar); one schema (``item_id`` int64, ``embedding``
list<float32>, L2-normalised).

Methods (``RERANK_EMBEDDING_METHOD``):

* ``multilingual`` (default): the multilingual Universal Sentence Encoder (:mod:`pipeline.features.encoders`,
  512-d): a Chinese and an English title of one product land close together. Batched on the Dask workers
  and cached by a hash of each item's text (:mod:`pipeline.features.embed_cache`), so a nightly run embeds
  only new or changed items. No catalogue-size cap.
* ``tfidf``: the explicit fallback: TF-IDF over character 2-4-grams + TruncatedSVD(64). Deterministic, no
  model; it cannot relate two languages.
* ``auto``: ``multilingual`` when its package is installed, else ``tfidf``; the fallback is announced in
  the stage figures (``embedding_fallback``), never silent.

The fused vector (:mod:`pipeline.features.fusion`) is what content recall, ``similar_items``, the ranker's
item input and MMR read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, InputDataError
from pipeline.files import replacing, write_text

METHODS = ("auto", "multilingual", "tfidf")
#: Characters of ``title. description`` the sentence encoders read (titles and the start of descriptions).
MODEL_CHARS = 300
#: Texts per Dask task of the multilingual encoder.
TEXT_CHUNK = 2_000
TEXT_FILE = "item_text_embeddings.parquet"
EMBEDDINGS_FILE = "item_embeddings.parquet"
TFIDF_DIM = 64
SEED = 42


def item_texts(items: pd.DataFrame, max_chars: int = 1000) -> pd.Series:
    """``title. description`` per item, truncated (the encoders only look at the first few hundred tokens)."""
    desc = items["description"] if "description" in items.columns else pd.Series("", index=items.index)
    text = items["title"].fillna("").astype(str) + ". " + desc.fillna("").astype(str)
    return text.str.slice(0, max_chars)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype("float32")


def embed_tfidf(texts: list[str], dim: int = TFIDF_DIM) -> np.ndarray:
    """TF-IDF character 2-4-grams -> TruncatedSVD(dim) -> L2-normalised float32."""
    try:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as exc:
        raise ConfigError("scikit-learn is needed for TF-IDF embeddings", "pip install 'scikit-learn>=1.5,<2'") \
            from exc
    if not texts:
        return np.zeros((0, dim), dtype="float32")
    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=1, max_features=200_000,
                            sublinear_tf=True, dtype=np.float32)
    x = tfidf.fit_transform(texts)
    k = min(dim, x.shape[1] - 1, x.shape[0] - 1)
    if k < 1:
        return l2_normalise(np.pad(x.toarray(), ((0, 0), (0, max(0, dim - x.shape[1]))))[:, :dim])
    z = TruncatedSVD(n_components=k, random_state=SEED, algorithm="randomized", n_iter=5).fit_transform(x)
    if k < dim:  # tiny catalogues: pad so the schema's dimension stays fixed
        z = np.pad(z, ((0, 0), (0, dim - k)))
    return l2_normalise(z)


def write_embeddings(item_ids: np.ndarray, z: np.ndarray, path: Path) -> None:
    """``item_id, embedding`` Parquet (fixed-width rows written as list<float32>), atomically."""
    z = np.asarray(z, dtype=np.float32)
    flat = pa.array(z.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, z.shape[1]) if len(z) else pa.array([], pa.list_(pa.float32()))
    table = pa.table({"item_id": pa.array(np.asarray(item_ids, dtype="int64")),
                      "embedding": emb.cast(pa.list_(pa.float32()))})
    with replacing(path) as tmp:
        pq.write_table(table, tmp)


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids, float32 matrix) of an ``item_id, embedding`` Parquet file."""
    t = pq.read_table(path, columns=["item_id", "embedding"])
    ids = t.column("item_id").to_numpy().astype("int64")
    emb = t.column("embedding").combine_chunks()
    width = len(emb[0]) if len(emb) else 0
    return ids, np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(ids), width)


def _encode_chunk(texts: list[str]) -> np.ndarray:
    """Dask task: one chunk of texts through the multilingual encoder (loaded once per worker)."""
    from pipeline.features.encoders import encode_texts

    return encode_texts(texts)


def embed_multilingual(texts: list[str], *, client: object | None = None, cache_dir: str | Path | None = None,
                       chunk: int = TEXT_CHUNK) -> tuple[np.ndarray, dict]:
    """Multilingual vectors of ``texts``: cached ones read, the rest encoded in chunks on the Dask workers
    (in this process without a client). Returns the matrix and ``{"embedded": n, "cached": n}``."""
    from pipeline.features.embed_cache import EmbeddingCache, text_key
    from pipeline.features.encoders import TEXT_DIM, TEXT_MODEL, require_text_encoder

    require_text_encoder()
    keys = [text_key(TEXT_MODEL, t) for t in texts]
    cache = EmbeddingCache(cache_dir, TEXT_MODEL)
    found, vecs = cache.get(keys)
    miss = [i for i in range(len(texts)) if not found[i]]
    # distinct texts once (generated catalogues repeat titles; shops list one product in several variants)
    todo = list(dict.fromkeys(keys[i] for i in miss))
    text_of = {keys[i]: texts[i] for i in miss}
    parts = [[text_of[k] for k in todo[s:s + chunk]] for s in range(0, len(todo), chunk)]
    if client is None or len(parts) <= 1:
        out = [_encode_chunk(p) for p in parts]
    else:
        out = client.gather(client.map(_encode_chunk, parts, pure=False))
    if todo:
        cache.put(todo, np.vstack(out))
    _, vecs = cache.get(keys)
    z = np.vstack(vecs) if vecs else np.zeros((0, TEXT_DIM), np.float32)
    cache.save(keep=keys)
    return z.astype(np.float32), {"embedded": len(todo), "cached": int(found.sum())}


def build_item_embeddings(snapshot_dir: str | Path, *, method: str = "multilingual", dim: int = TFIDF_DIM,
                          client: object | None = None, cache_dir: str | Path | None = None,
                          text_weight: float | None = None) -> dict:
    """Embed every snapshot item's text; fuse with ``item_image_embeddings.parquet`` when the item features
    stage wrote one; write ``item_text_embeddings.parquet``, ``item_embeddings.parquet`` (the fused vector)
    and ``item_embeddings.json``.

    Returns the sidecar: ``method``, ``model`` (what the figures name), ``dim``, ``items``, ``embedded`` and
    ``cached`` (multilingual), ``fallback`` (why ``auto`` took TF-IDF, else None), ``fusion``, ``file``.
    """
    import time

    from pipeline.features.encoders import TEXT_MODEL, TEXT_PACKAGE, package_versions, text_encoder_available
    from pipeline.features.fusion import IMAGE_FILE, fuse_embeddings

    if method not in METHODS:
        raise ConfigError(f"unknown embedding method {method!r}", f"one of {', '.join(METHODS)}")
    snap = Path(snapshot_dir)
    path = snap / "items.parquet"
    if not path.exists():
        raise InputDataError(f"no items.parquet in {snap}", "run the extract stage first")
    items = pd.read_parquet(path).sort_values("item_id").reset_index(drop=True)
    texts = item_texts(items).tolist()
    fallback = None
    if method == "auto":
        if text_encoder_available():
            method = "multilingual"
        else:
            method, fallback = "tfidf", f"{TEXT_PACKAGE} is not installed"
    t0 = time.perf_counter()
    counts: dict = {}
    if method == "multilingual":
        z, counts = embed_multilingual([t[:MODEL_CHARS] for t in texts], client=client, cache_dir=cache_dir)
        model = TEXT_MODEL
        libs = package_versions([TEXT_PACKAGE, "numpy"])
    else:
        z = embed_tfidf(texts, dim)
        model = f"tfidf-char-svd{dim}"
        libs = package_versions(["scikit-learn", "numpy"])
    seconds = time.perf_counter() - t0
    ids = items["item_id"].to_numpy(dtype="int64")
    write_embeddings(ids, z, snap / TEXT_FILE)
    fusion = fuse_embeddings(snap, text_weight=text_weight) if (snap / IMAGE_FILE).exists() else None
    if fusion is None:
        write_embeddings(ids, z, snap / EMBEDDINGS_FILE)
    text_dim = int(z.shape[1]) if len(z) else dim
    meta = {"method": method, "model": model, "dim": fusion["dim"] if fusion else text_dim, "text_dim": text_dim,
            "items": len(items),
            "normalised": "l2", "fallback": fallback, "seconds": round(seconds, 3), **counts,
            "text": f"title + '. ' + description (first {1000 if method == 'tfidf' else MODEL_CHARS} characters)",
            "fusion": fusion,
            "library_versions": {**libs, "pyarrow": pa.__version__, "pandas": pd.__version__},
            "file": str(snap / EMBEDDINGS_FILE)}
    write_text(snap / "item_embeddings.json", json.dumps(meta, indent=2, sort_keys=True))
    return meta
