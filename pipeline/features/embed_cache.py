"""A content-addressed cache of embeddings: key (a hash of what was embedded) -> vector, one file per model.

A nightly run embeds only the items whose text (or picture file) is new or changed: the key of a text is a
hash of the model name and the exact text, the key of a picture a hash of its file's bytes. The cache is a
Parquet file under ``<home>/cache/embeddings/<model>.parquet``, replaced atomically after each run; a
missing or unreadable file is an empty cache (it only costs time).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.files import replacing


def text_key(model: str, text: str) -> str:
    """Hash of (model, text): a changed title or another model is another key."""
    return hashlib.sha1(f"{model}\0{text}".encode()).hexdigest()


def file_key(path: str | Path, chunk: int = 1 << 20) -> str | None:
    """Hash of a file's bytes (None when it cannot be read)."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


class EmbeddingCache:
    """Vectors of one model by key; :meth:`get` splits keys into found rows and misses."""

    def __init__(self, folder: str | Path | None, model: str) -> None:
        self.path = Path(folder) / f"{model}.parquet" if folder else None
        self._keys: dict[str, int] = {}
        self._mat = np.zeros((0, 0), np.float32)
        self._new: dict[str, np.ndarray] = {}
        if self.path is not None and self.path.exists():
            try:
                t = pq.read_table(self.path)
                keys = t.column("key").to_pylist()
                emb = t.column("embedding").combine_chunks()
                width = len(emb[0]) if len(emb) else 0
                self._mat = np.asarray(emb.flatten().to_numpy(zero_copy_only=False),
                                       dtype=np.float32).reshape(len(keys), width)
                self._keys = {k: i for i, k in enumerate(keys)}
            except (OSError, KeyError, ValueError, pa.ArrowException):
                self._keys, self._mat = {}, np.zeros((0, 0), np.float32)

    def __len__(self) -> int:
        return len(self._keys) + len(self._new)

    def get(self, keys: Iterable[str]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """(found mask, the vector or None per key)."""
        out: list[np.ndarray | None] = []
        for k in keys:
            if k in self._new:
                out.append(self._new[k])
            elif k in self._keys:
                out.append(self._mat[self._keys[k]])
            else:
                out.append(None)
        return np.array([v is not None for v in out], dtype=bool), out

    def put(self, keys: Iterable[str], vectors: np.ndarray) -> None:
        for k, v in zip(keys, vectors, strict=True):
            self._new[k] = np.asarray(v, dtype=np.float32)

    def save(self, keep: Iterable[str] | None = None) -> None:
        """Write old + new vectors (only ``keep``'s keys when given: the cache follows the catalogue)."""
        if self.path is None or not self._new and keep is None:
            return
        keys = list(dict.fromkeys([*self._keys, *self._new]))
        if keep is not None:
            wanted = set(keep)
            keys = [k for k in keys if k in wanted]
        _, vecs = self.get(keys)
        mat = np.vstack(vecs).astype(np.float32) if keys else np.zeros((0, 1), np.float32)
        flat = pa.array(mat.reshape(-1), type=pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, mat.shape[1]).cast(pa.list_(pa.float32()))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(self.path) as tmp:
            pq.write_table(pa.table({"key": pa.array(keys, pa.string()), "embedding": emb}), tmp)
