"""Small synthetic product pictures, tied to what a shopper's taste is made of (on by default in ``generate``).

Each item gets a ``SIDE x SIDE`` PNG whose content follows the generator's taste dimensions, with noise:

* shape from the category: the top category picks the shape family (disc, box, triangle, diamond, ring,
  cross, bars, star), the leaf its proportions and rotation;
* colour from the brand (a hue per brand name), jittered per item;
* texture from the price level (the item's price tercile within its leaf: plain, stripes, checks);
* noise: position, size, background tone and pixel noise.

So two items of one leaf, brand and price level look alike and an image encoder can place a new item near
the ones a shopper liked before it ever sold. Deterministic by seed; ``image_path`` holds absolute paths.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.datagen import vocab

SIDE = 64
SHAPES = ("disc", "box", "triangle", "diamond", "ring", "cross", "bars", "star")


def _hash(key: str) -> int:
    return zlib.crc32(key.encode("utf-8"))


def _colour(key: str) -> np.ndarray:
    """A saturated colour per key (brand): hue from a hash, bright enough to stand out from the background."""
    h = _hash(key)
    hue = (h % 360) / 60.0
    x = 1 - abs(hue % 2 - 1)
    r, g, b = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(hue) % 6]
    light = 0.55 + 0.35 * ((h >> 12) % 100) / 100.0
    return np.array([r, g, b]) * 255 * light


def price_level(items: pd.DataFrame) -> np.ndarray:
    """Tercile (0, 1, 2) of each item's price within its category path (the generator's price level)."""
    price = pd.to_numeric(items["price"], errors="coerce").fillna(0.0)
    pct = price.groupby(items["category"].astype(str)).rank(method="first", pct=True)
    return np.minimum((pct.to_numpy() * 3).astype(int), 2)


def _mask(shape: str, yy: np.ndarray, xx: np.ndarray, size: float, aspect: float, angle: float) -> np.ndarray:
    """Boolean mask of a shape centred at 0 in rotated, aspect-scaled coordinates."""
    c, s = np.cos(angle), np.sin(angle)
    u = (c * xx + s * yy) / (size * aspect)
    v = (-s * xx + c * yy) / (size / aspect)
    r = np.hypot(u, v)
    if shape == "disc":
        return r <= 1
    if shape == "box":
        return (abs(u) <= 0.9) & (abs(v) <= 0.9)
    if shape == "triangle":
        return (v <= 0.8) & (v >= -0.9 + 1.7 * abs(u))
    if shape == "diamond":
        return abs(u) + abs(v) <= 1.1
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "cross":
        return ((abs(u) <= 0.3) & (abs(v) <= 1)) | ((abs(v) <= 0.3) & (abs(u) <= 1))
    if shape == "bars":
        return (abs(v) <= 1) & (abs(u) <= 1) & (np.floor((u + 1) * 2.5) % 2 == 0)
    theta = np.arctan2(v, u)  # star: radius wobbles five times around the centre
    return r <= 0.6 + 0.4 * np.cos(5 * theta)


def draw_item(rng: np.random.Generator, category: str, brand: str, level: int, side: int = SIDE) -> np.ndarray:
    """One ``side x side x 3`` uint8 picture (see the module docstring)."""
    path = str(category).split(">")
    top_h = _hash(path[0])
    leaf_h = _hash(str(category))
    tops = list(vocab.TREE)
    shape = SHAPES[(tops.index(path[0]) if path[0] in tops else top_h) % len(SHAPES)]
    aspect = 0.75 + 0.5 * ((leaf_h >> 4) % 100) / 100.0
    angle = np.pi * ((leaf_h >> 11) % 8) / 8.0 + rng.normal(0, 0.08)
    size = side * (0.30 + rng.normal(0, 0.02))
    cy, cx = side / 2 + rng.normal(0, side * 0.04, 2)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    yy -= cy
    xx -= cx
    img = np.empty((side, side, 3))
    img[:] = 225 + rng.normal(0, 12) + rng.normal(0, 4, 3)  # light, slightly tinted background
    m = _mask(shape, yy, xx, size, aspect, angle)
    colour = _colour(str(brand)) + rng.normal(0, 10, 3)
    fill = np.broadcast_to(colour, img.shape).copy()
    if level == 1:  # mid price: diagonal stripes
        fill[((xx + yy) // 5 % 2 == 0)] *= 0.55
    elif level >= 2:  # high price: fine checks
        fill[((xx // 4 + yy // 4) % 2 == 0)] *= 0.4
    img[m] = fill[m]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_item_images(items: pd.DataFrame, folder: str | Path, *, share: float = 1.0, seed: int = 42,
                      side: int = SIDE) -> pd.DataFrame:
    """Write a PNG for a ``share`` of items (all by default) under ``folder``; return ``items`` with
    ``image_path`` set for them (the others keep theirs)."""
    from PIL import Image

    out = Path(folder).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chosen = rng.random(len(items)) < share
    items = items.copy()
    paths = (items["image_path"].astype(object).copy() if "image_path" in items
             else pd.Series(None, index=items.index, dtype=object))
    levels = price_level(items) if "price" in items else np.zeros(len(items), int)
    cats = items["category"].astype(str).to_numpy()
    brands = items["brand"].fillna("").astype(str).to_numpy() if "brand" in items else np.full(len(items), "")
    ids = items["item_id"].to_numpy()
    for pos in np.flatnonzero(chosen):
        img = draw_item(rng, cats[pos], brands[pos], int(levels[pos]), side)
        path = out / f"item_{int(ids[pos])}.png"
        Image.fromarray(img, "RGB").save(path)
        paths.iloc[pos] = str(path)
    items["image_path"] = paths
    return items
