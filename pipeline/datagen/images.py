"""Small synthetic item images so that the image-feature path is exercised (off by default).

Each chosen item gets a 32x32 PNG: a background colour from its top category, a brand-coloured stripe
and a little noise, so that items of one category look alike and hashes differ between items.
Deterministic by seed. Paths written to ``image_path`` are absolute.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

SIDE = 32


def _colour(key: str) -> np.ndarray:
    h = zlib.crc32(key.encode("utf-8"))
    return np.array([(h >> 16) & 255, (h >> 8) & 255, h & 255], dtype=np.int16)


def write_item_images(items: pd.DataFrame, folder: str | Path, *, share: float = 0.2, seed: int = 42) -> pd.DataFrame:
    """Write PNGs for a ``share`` of items under ``folder``; return ``items`` with ``image_path`` set for them."""
    from PIL import Image

    out = Path(folder).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(items)) < share
    items = items.copy()
    paths = items["image_path"].astype(object).copy() if "image_path" in items else pd.Series(None, index=items.index)
    for pos in np.flatnonzero(chosen):
        row = items.iloc[pos]
        top = str(row["category"]).split(">", 1)[0]
        img = np.empty((SIDE, SIDE, 3), dtype=np.int16)
        img[:] = _colour(top)
        stripe = int(rng.integers(4, SIDE - 8))
        img[stripe:stripe + 6, :] = _colour(str(row["brand"]))
        img += rng.integers(-12, 13, size=img.shape, dtype=np.int16)
        path = out / f"item_{int(row['item_id'])}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path)
        paths.iloc[pos] = str(path)
    items["image_path"] = paths
    return items
