"""Image features of items with an ``image_path``: colour histogram, mean colour, perceptual hash (Pillow).

:func:`image_row` is the pure per-image transform; :func:`image_features` maps it over chunks of items on
the Dask client. A missing or unreadable file gives ``has_image = False`` and a reason, never a failed run.
An optional CNN embedding is deliberately not bundled: weights would have to come from a local path and no
such model ships with the project.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: Bins per RGB channel of the colour histogram.
HIST_BINS = 4
#: Side of the difference hash (``HASH_SIDE**2`` bits).
HASH_SIDE = 8


def dhash(img: object, side: int = HASH_SIDE) -> str:
    """Difference hash: grey ``side+1 x side`` thumbnail, one bit per horizontal gradient, as hex."""
    from PIL import Image

    g = np.asarray(img.convert("L").resize((side + 1, side), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{side * side // 4}x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes (near-duplicate images are a few bits apart)."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def image_row(path: str | Path) -> dict:
    """Features of one image file; ``has_image`` False (with ``img_error``) when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return {"has_image": False, "img_error": type(exc).__name__}
    small = rgb.resize((32, 32))
    arr = np.asarray(small, dtype=np.uint8).reshape(-1, 3)
    idx = (arr // (256 // HIST_BINS)).astype(np.int64)
    flat = idx[:, 0] * HIST_BINS * HIST_BINS + idx[:, 1] * HIST_BINS + idx[:, 2]
    hist = np.bincount(flat, minlength=HIST_BINS ** 3).astype("float32")
    hist /= hist.sum()
    mean = arr.mean(axis=0) / 255.0
    return {"has_image": True, "img_error": None, "img_width": rgb.width, "img_height": rgb.height,
            "img_hash": dhash(rgb), "img_mean_r": float(mean[0]), "img_mean_g": float(mean[1]),
            "img_mean_b": float(mean[2]), "img_hist": hist.tolist()}


def image_chunk(chunk: pd.DataFrame, root: str | None) -> pd.DataFrame:
    """Transform: features for a chunk of ``item_id, image_path`` rows (relative paths under ``root``)."""
    rows = []
    for item_id, p in zip(chunk["item_id"], chunk["image_path"], strict=True):
        path = Path(p)
        if not path.is_absolute() and root:
            path = Path(root) / path
        rows.append({"item_id": int(item_id), **image_row(path)})
    return pd.DataFrame(rows)


def image_features(items: pd.DataFrame, client: object | None, *, root: str | Path | None = None,
                   chunk: int = 500) -> pd.DataFrame:
    """Image features for the items that have an ``image_path`` (empty frame with ``item_id`` otherwise)."""
    if "image_path" not in items.columns:
        return pd.DataFrame({"item_id": pd.Series(dtype="int64"), "has_image": pd.Series(dtype=bool)})
    todo = items.loc[items["image_path"].fillna("").astype(str).str.len() > 0, ["item_id", "image_path"]]
    if todo.empty:
        return pd.DataFrame({"item_id": pd.Series(dtype="int64"), "has_image": pd.Series(dtype=bool)})
    parts = [todo.iloc[i:i + chunk] for i in range(0, len(todo), chunk)]
    root_s = str(root) if root else None
    if client is None:
        frames = [image_chunk(p, root_s) for p in parts]
    else:
        frames = client.gather(client.map(image_chunk, parts, root=root_s, pure=False))
    return pd.concat(frames, ignore_index=True)
