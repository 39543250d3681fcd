"""One item vector from text and picture: what content recall, ``similar_items``, the ranker and MMR read.

``fused = [sqrt(w) * t, sqrt(1 - w) * P i]`` with ``t`` the L2-normalised text vector, ``i`` the
L2-normalised image vector and ``P`` a fixed random projection (``IMAGE_PROJ_DIM`` columns, seeded by a
constant, so a vector means the same in every run and a ranker trained last night still reads it). For
two items with pictures the cosine of the fused vectors is (up to the projection's small distortion)
``w * cos_text + (1 - w) * cos_image``; an item without a picture is its text vector alone (the image half
is zero and the row is re-normalised). ``w`` is ``RERANK_CONTENT_TEXT_WEIGHT``, chosen on validation
windows by ``benchmarks/bench_cold_start.py``.

The parts stay in the snapshot beside the fused file (``item_text_embeddings.parquet``,
``item_image_embeddings.parquet``) so that a reason can tell "looks like" from "similar to".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEXT_FILE = "item_text_embeddings.parquet"
IMAGE_FILE = "item_image_embeddings.parquet"
EMBEDDINGS_FILE = "item_embeddings.parquet"
IMAGE_PROJ_DIM = 128
#: Fixed, not the run's seed: the projection must not change between runs.
PROJECTION_SEED = 20_240_024


def projection(in_dim: int, out_dim: int = IMAGE_PROJ_DIM) -> np.ndarray:
    """The fixed Gaussian projection of image vectors (``in_dim x out_dim``, scaled to keep norms)."""
    if in_dim <= out_dim:
        return np.eye(in_dim, dtype=np.float32)
    rng = np.random.default_rng(PROJECTION_SEED + in_dim)
    return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


def fuse(text_ids: np.ndarray, text: np.ndarray, image_ids: np.ndarray, image: np.ndarray,
         text_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Fused matrix (one row per text item, in ``text_ids`` order) and the has-picture mask."""
    from pipeline.features.encoders import l2_rows

    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight must be in [0, 1], got {text_weight}")
    t = l2_rows(text)
    p = l2_rows(l2_rows(image) @ projection(image.shape[1])) if len(image) else np.zeros((0, IMAGE_PROJ_DIM),
                                                                                           np.float32)
    img = np.zeros((len(text_ids), p.shape[1]), np.float32)
    order = np.argsort(image_ids, kind="stable")
    pos = np.searchsorted(image_ids[order], text_ids)
    hit = (pos < len(image_ids)) & (image_ids[order][np.minimum(pos, max(len(image_ids) - 1, 0))] == text_ids) \
        if len(image_ids) else np.zeros(len(text_ids), bool)
    img[hit] = p[order[pos[hit]]]
    has = hit & (np.linalg.norm(img, axis=1) > 0)
    fused = np.hstack([np.sqrt(text_weight) * t, np.sqrt(1.0 - text_weight) * img])
    return l2_rows(fused), has


def fuse_embeddings(snapshot_dir: str | Path, *, text_weight: float | None = None) -> dict:
    """Read the text and image parts of a snapshot, write the fused ``item_embeddings.parquet``."""
    from pipeline.features.text import read_embeddings, write_embeddings

    if text_weight is None:
        from pipeline.settings import get_settings

        text_weight = get_settings().content_text_weight
    snap = Path(snapshot_dir)
    tid, t = read_embeddings(snap / TEXT_FILE)
    iid, i = read_embeddings(snap / IMAGE_FILE)
    z, has = fuse(tid, t, iid, i, float(text_weight))
    write_embeddings(tid, z, snap / EMBEDDINGS_FILE)
    return {"text_weight": float(text_weight), "image_dim": int(i.shape[1]) if len(i) else 0,
            "image_proj_dim": int(z.shape[1] - t.shape[1]), "dim": int(z.shape[1]),
            "items_with_image_vector": int(has.sum()), "items_without_image_vector": int((~has).sum())}


def part_similarity(snapshot_dir: str | Path) -> tuple[tuple[np.ndarray, np.ndarray] | None,
                                                        tuple[np.ndarray, np.ndarray] | None]:
    """The snapshot's (item_ids, matrix) text and image parts (None where absent), for the reasons."""
    from pipeline.features.text import read_embeddings

    snap = Path(snapshot_dir)
    text = read_embeddings(snap / TEXT_FILE) if (snap / TEXT_FILE).exists() else None
    image = read_embeddings(snap / IMAGE_FILE) if (snap / IMAGE_FILE).exists() else None
    return text, image
