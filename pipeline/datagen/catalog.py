"""The synthetic catalogue: items with a category path, a brand, a log-normal price, text and a popularity.

Everything is drawn column-wise with numpy (no loop per item). Item ids follow ``created_at`` order, as a
shop's sequence would. Alongside the contract's ``items`` frame the catalogue keeps the integer arrays the
behaviour model needs (leaf, brand, price level, popularity) and an inverse-CDF sampler that draws items of
a given leaf in proportion to their popularity, for millions of draws at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.datagen import vocab

DAY_MS = 86_400_000
#: Share of items that arrive during the generated window (the rest existed before it).
NEW_ITEM_SHARE = 0.25
#: Share of items titled and described in Chinese.
CHINESE_SHARE = 0.10
OUT_OF_STOCK_SHARE = 0.03
INVISIBLE_SHARE = 0.01
BRANDS_PER_TOP = 12
#: Zipf exponent of item popularity (long tail) and of brand popularity within a top category.
ITEM_ZIPF = 1.05
BRAND_ZIPF = 0.9
#: Log-normal spread of prices around a leaf's median (and of brand premiums).
PRICE_SIGMA = 0.45
BRAND_PRICE_SIGMA = 0.3
QUERIES_PER_LEAF = 8


@dataclass
class Catalog:
    """The items frame plus per-item arrays indexed by ``item_id - 1``."""

    items: pd.DataFrame
    leaf: np.ndarray
    brand: np.ndarray
    price_level: np.ndarray
    created_ms: np.ndarray
    popularity: np.ndarray
    leaf_paths: np.ndarray
    leaf_top: np.ndarray
    #: Weight of each leaf for drawing tastes and browsing (zero when empty).
    leaf_weight: np.ndarray
    brand_names: np.ndarray
    brand_probs: np.ndarray
    #: Search queries, ``QUERIES_PER_LEAF`` per leaf, leaf-major.
    queries: np.ndarray
    # inverse-CDF sampler: items sorted by leaf, cumulative popularity, and each leaf's slice of it
    _order: np.ndarray
    _cum: np.ndarray
    _leaf_first: np.ndarray
    _leaf_last: np.ndarray

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_paths)

    def sample_in_leaf(self, rng: np.random.Generator, leaf: np.ndarray) -> np.ndarray:
        """Item indices drawn from each given (non-empty) leaf, in proportion to popularity."""
        first, last = self._leaf_first[leaf], self._leaf_last[leaf]
        lo = np.where(first > 0, self._cum[np.maximum(first - 1, 0)], 0.0)
        target = lo + rng.random(len(leaf)) * (self._cum[last] - lo)
        pos = np.clip(np.searchsorted(self._cum, target, side="right"), first, last)
        return self._order[pos]


def _pick(rng: np.random.Generator, groups: list[tuple[str, ...]], group: np.ndarray) -> np.ndarray:
    """One word per row from the word list of the row's group (lists of different lengths)."""
    flat = np.array([w for g in groups for w in g], dtype=object)
    counts = np.array([len(g) for g in groups])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx = offsets[group] + (rng.random(len(group)) * counts[group]).astype(np.int64)
    return flat[idx]


def _created_ms(rng: np.random.Generator, n: int, new_share: float, start_ms: int, days: int) -> np.ndarray:
    """Creation times: the old part within a year before the window, the new part on every day of it."""
    n_new = int(round(n * new_share))
    old = start_ms - (rng.random(n - n_new) * 365 * DAY_MS).astype(np.int64) - 1
    # round-robin over days so that every day of the window gets arrivals (cold start on the last day too)
    day = np.arange(n_new) % days
    new = start_ms + day * DAY_MS + (rng.random(n_new) * DAY_MS).astype(np.int64)
    return np.sort(np.concatenate([old, new]))


def _ts(ms: np.ndarray) -> pd.Series:
    return pd.Series(ms.astype("datetime64[ms]")).dt.tz_localize("UTC")


def build_catalog(rng: np.random.Generator, n_items: int, start_ms: int, days: int) -> Catalog:
    """Draw ``n_items`` items whose creation times spread up to the end of the window."""
    leaves = vocab.leaves()
    tops = list(vocab.TREE)
    leaf_paths = np.array([p for p, *_ in leaves], dtype=object)
    leaf_top = np.array([tops.index(t) for _, t, _, _ in leaves])
    nouns = np.array([n for *_, n, _ in leaves], dtype=object)
    nouns_zh = np.array([z for *_, z in leaves], dtype=object)
    words = [vocab.TOP_WORDS[t] for t in tops]

    # brands: unique syllable names, Zipf popularity within their top category, a price premium each
    n_brands = len(tops) * BRANDS_PER_TOP
    combos = rng.choice(len(vocab.BRAND_HEADS) * len(vocab.BRAND_TAILS), n_brands, replace=False)
    brand_names = np.array([vocab.BRAND_HEADS[c // len(vocab.BRAND_TAILS)] + vocab.BRAND_TAILS[c % len(
        vocab.BRAND_TAILS)] for c in combos], dtype=object)
    brand_probs = 1.0 / np.arange(1, BRANDS_PER_TOP + 1) ** BRAND_ZIPF
    brand_probs /= brand_probs.sum()
    brand_premium = rng.normal(0.0, BRAND_PRICE_SIGMA, n_brands)
    leaf_median = np.log([words[t].median_price for t in leaf_top]) + rng.normal(0.0, 0.5, len(leaves))

    # items: leaf sizes differ (Dirichlet), brand by popularity within the leaf's top category
    leaf = rng.choice(len(leaves), n_items, p=rng.dirichlet(np.full(len(leaves), 2.0)))
    top = leaf_top[leaf]
    brand = top * BRANDS_PER_TOP + rng.choice(BRANDS_PER_TOP, n_items, p=brand_probs)
    price = np.exp(leaf_median[leaf] + brand_premium[brand] + rng.normal(0.0, PRICE_SIGMA, n_items))
    price = np.maximum(np.round(price, 2), 0.99)
    # price level = tercile of the price within the item's leaf
    by_leaf_price = np.lexsort((price, leaf))
    leaf_count = np.bincount(leaf, minlength=len(leaves))
    leaf_first = np.concatenate([[0], np.cumsum(leaf_count)[:-1]])
    rank = np.empty(n_items, dtype=np.int64)
    rank[by_leaf_price] = np.arange(n_items) - leaf_first[leaf[by_leaf_price]]
    price_level = np.minimum(3 * rank // np.maximum(leaf_count[leaf], 1), 2).astype(np.int8)
    popularity = 1.0 / (rng.permutation(n_items) + 1.0) ** ITEM_ZIPF

    # text: "<Brand> <adjective> <noun> <variant>", a share in Chinese
    zh = rng.random(n_items) < CHINESE_SHARE
    bname = pd.Series(brand_names[brand])
    adj = pd.Series(_pick(rng, [w.adjectives for w in words], top))
    adj_zh = pd.Series(_pick(rng, [w.adjectives_zh for w in words], top))
    feat1 = pd.Series(_pick(rng, [w.features for w in words], top))
    feat2 = pd.Series(_pick(rng, [w.features for w in words], top))
    feat_zh = pd.Series(_pick(rng, [w.features_zh for w in words], top))
    noun, noun_zh = pd.Series(nouns[leaf]), pd.Series(nouns_zh[leaf])
    colour = pd.Series(np.array(vocab.COLOURS, dtype=object)[rng.integers(0, len(vocab.COLOURS), n_items)])
    model = pd.Series(np.array(list("ABCDEFGHKMSTXZ"), dtype=object)[rng.integers(0, 14, n_items)]) + \
        pd.Series(rng.integers(10, 1000, n_items)).astype(str)
    variant = pd.Series(np.where(rng.random(n_items) < 0.5, " " + colour, " " + model))
    title_en = bname + " " + adj + " " + noun + variant
    title_zh = bname + " " + adj_zh + noun_zh + " " + model
    desc_en = "The " + adj.str.lower() + " " + noun.str.lower() + " by " + bname + ". " + feat1 + ". " + \
        feat2 + "."
    desc_zh = bname + adj_zh + noun_zh + "，" + feat_zh + "。"
    attrs = '{"colour": "' + colour + '", "lang": "' + pd.Series(np.where(zh, "zh", "en")) + '"}'

    created_ms = _created_ms(rng, n_items, NEW_ITEM_SHARE, start_ms, days)
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype=np.int64),
            "title": title_en.where(~zh, title_zh),
            "description": desc_en.where(~zh, desc_zh),
            "category": leaf_paths[leaf],
            "brand": bname,
            "price": price,
            "in_stock": rng.random(n_items) >= OUT_OF_STOCK_SHARE,
            "visible": rng.random(n_items) >= INVISIBLE_SHARE,
            "created_at": _ts(created_ms),
            "image_path": pd.Series([None] * n_items, dtype=object),
            "attrs": attrs,
        }
    )
    items["category"] = items["category"].astype(str)

    # search queries per leaf: the noun, adjective + noun, brand + noun, the leaf name, the Chinese noun
    queries = []
    for i, (_, _, n, z) in enumerate(leaves):
        w = words[leaf_top[i]]
        adjs = rng.choice(np.array(w.adjectives, dtype=object), 3, replace=False)
        brands = brand_names[leaf_top[i] * BRANDS_PER_TOP + rng.choice(BRANDS_PER_TOP, 2, p=brand_probs)]
        queries += [n.lower(), n.lower(), *(f"{a.lower()} {n.lower()}" for a in adjs),
                    *(f"{b.lower()} {n.lower()}" for b in brands), z]

    # a leaf draws tastes and wandering visits by its size and by its hits (geometric mean of the shares):
    # size alone would flatten the long tail in small catalogues, hits alone would crowd large ones
    leaf_pop = np.bincount(leaf, weights=popularity, minlength=len(leaves))
    leaf_weight = np.sqrt(leaf_pop / leaf_pop.sum() * leaf_count / n_items)
    order = np.argsort(leaf, kind="stable")
    cum = np.cumsum(popularity[order])
    leaf_last = leaf_first + leaf_count - 1
    return Catalog(
        items=items, leaf=leaf, brand=brand, price_level=price_level, created_ms=created_ms,
        popularity=popularity, leaf_paths=leaf_paths, leaf_top=leaf_top,
        leaf_weight=leaf_weight, brand_names=brand_names, brand_probs=brand_probs,
        queries=np.array(queries, dtype=object), _order=order, _cum=cum, _leaf_first=leaf_first,
        _leaf_last=leaf_last,
    )
