"""Users, their latent tastes, and the sessions of events those tastes produce.

The model, in the order it is drawn (all column-wise; the only loop is over fixed blocks of users, to
bound memory at tier L):

- A user has 1-4 favourite leaf categories with Dirichlet-like weights (sparse), 1-2 favourite brands
  from the top categories of those leaves, and a preference over the three price levels. Half of the
  users drift half-way through the window: their strongest category is replaced by a new one.
- A user's number of sessions is Poisson around ``events_per_user / EVENTS_PER_SESSION``, scaled by a
  log-normal activity and by the part of the window since they signed up (late users: few or none).
- A session has an intent leaf (a taste draw, or with ``EXPLORE`` a popular leaf), an optional search
  whose query comes from that leaf's vocabulary, and a run of views. Each view slot stays in the intent
  leaf or wanders to a popular one, then picks among ``CANDIDATES`` popularity-drawn items of that leaf
  the one that fits the user's brands and price level best (Gumbel-max), never an item created after the
  session started.
- The funnel: a view may lead to a click on the same item, a click to an add_to_cart, a cart to a
  purchase (same quantity), each strictly later in the same session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.datagen import vocab
from pipeline.datagen.catalog import BRANDS_PER_TOP, QUERIES_PER_LEAF, Catalog, _created_ms, _ts

#: Share of users who sign up during the window.
NEW_USER_SHARE = 0.3
#: Taste slots per user (categories) and favourite brands per user (upper bounds).
CATEGORY_SLOTS = 4
BRAND_SLOTS = 2
DRIFT_SHARE = 0.5
#: A session's intent is a popular leaf instead of a taste with this probability.
EXPLORE = 0.15
#: A view slot leaves the session's intent leaf for a popular one with this probability.
WANDER = 0.2
CANDIDATES = 3
BRAND_BOOST = 4.0
PRICE_BOOST = 3.0
P_SEARCH = 0.35
VIEWS_LAMBDA = 4.5
P_CLICK = 0.3
P_CART = 0.3
P_PURCHASE = 0.55
#: Expected events of a session under the constants above (to turn events per user into sessions).
EVENTS_PER_SESSION = P_SEARCH + (1 + VIEWS_LAMBDA) * (1 + P_CLICK * (1 + P_CART * (1 + P_PURCHASE)))
#: Seconds between views (exponential with a floor) and the bounded delays of the later funnel steps.
VIEW_GAP_S = (2.0, 45.0)
CLICK_DELAY_S = (2.0, 30.0)
CART_DELAY_S = (5.0, 120.0)
PURCHASE_DELAY_S = (30.0, 600.0)
MAX_TAIL_MS = int(1000 * (CLICK_DELAY_S[1] + CART_DELAY_S[1] + PURCHASE_DELAY_S[1]))
#: Users per block of event generation (fixed: blocks are part of what the seed determines).
BLOCK_USERS = 50_000

EVENT_TYPE_ORDER = ("search", "view", "click", "add_to_cart", "purchase")
SEARCH, VIEW, CLICK, CART, PURCHASE = range(5)


@dataclass
class Population:
    """The users frame plus per-user taste arrays indexed by ``user_id - 1``."""

    users: pd.DataFrame
    created_ms: np.ndarray
    cat_before: np.ndarray
    w_before: np.ndarray
    cat_after: np.ndarray
    w_after: np.ndarray
    drifts: np.ndarray
    brand: np.ndarray
    w_brand: np.ndarray
    price_pref: np.ndarray
    activity: np.ndarray


def _slot_weights(rng: np.random.Generator, n: int, slots: int, p_extra: float, shape: float) -> np.ndarray:
    """Gamma-normalised weights over ``1 + Binomial(slots - 1, p_extra)`` used slots (zeros after)."""
    used = 1 + rng.binomial(slots - 1, p_extra, n)
    w = rng.gamma(shape, 1.0, (n, slots)) * (np.arange(slots) < used[:, None])
    return w / w.sum(axis=1, keepdims=True)


def _draw_slot(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One column index per row, drawn in proportion to the row's weights."""
    cum = weights.cumsum(axis=1)
    r = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum < r[:, None]).sum(axis=1), weights.shape[1] - 1)


def build_population(rng: np.random.Generator, n_users: int, catalog: Catalog, start_ms: int,
                     days: int) -> Population:
    """Users with signup times spread over the window and latent tastes."""
    created_ms = _created_ms(rng, n_users, NEW_USER_SHARE, start_ms, days)
    country = rng.choice(len(vocab.COUNTRIES), n_users, p=vocab.COUNTRY_WEIGHTS)
    device = rng.choice(len(vocab.DEVICES), n_users, p=vocab.DEVICE_WEIGHTS)
    combos = np.array([f'{{"country": "{c}", "device": "{d}"}}'
                       for c in vocab.COUNTRIES for d in vocab.DEVICES], dtype=object)
    users = pd.DataFrame({
        "user_id": np.arange(1, n_users + 1, dtype=np.int64),
        "created_at": _ts(created_ms),
        "attrs": combos[country * len(vocab.DEVICES) + device],
    })

    leaf_p = catalog.leaf_weight / catalog.leaf_weight.sum()
    cat_before = rng.choice(catalog.n_leaves, (n_users, CATEGORY_SLOTS), p=leaf_p)
    w_before = _slot_weights(rng, n_users, CATEGORY_SLOTS, 0.35, 0.8)
    drifts = rng.random(n_users) < DRIFT_SHARE
    cat_after = cat_before.copy()
    rows = np.flatnonzero(drifts)
    cat_after[rows, w_before[rows].argmax(axis=1)] = rng.choice(catalog.n_leaves, len(rows), p=leaf_p)

    # favourite brands come from the top categories the user likes
    brand = np.empty((n_users, BRAND_SLOTS), dtype=np.int64)
    for s in range(BRAND_SLOTS):
        leaf = cat_before[np.arange(n_users), _draw_slot(rng, w_before)]
        brand[:, s] = catalog.leaf_top[leaf] * BRANDS_PER_TOP + rng.choice(
            BRANDS_PER_TOP, n_users, p=catalog.brand_probs)
    w_brand = _slot_weights(rng, n_users, BRAND_SLOTS, 0.5, 1.0)
    price_pref = rng.dirichlet(np.full(3, 0.5), n_users)
    activity = rng.lognormal(0.0, 0.9, n_users)
    return Population(users, created_ms, cat_before, w_before, cat_after, w_after=w_before.copy(),
                      drifts=drifts, brand=brand, w_brand=w_brand, price_pref=price_pref, activity=activity)


def tastes_frame(pop: Population, catalog: Catalog) -> pd.DataFrame:
    """Ground truth for ``datagen.user_tastes``: one row per (user, dimension, key), weights sum to 1.

    Dimensions: ``category`` (tastes at the end of the window), ``category_before`` (before the drift),
    ``brand`` and ``price_level``. Categories are leaf paths; a session also explores popular leaves with
    probability ``EXPLORE``, which is not part of these weights.
    """
    parts = []
    for dim, keys, idx, w in [
        ("category", catalog.leaf_paths, pop.cat_after, pop.w_after),
        ("category_before", catalog.leaf_paths, pop.cat_before, pop.w_before),
        ("brand", catalog.brand_names, pop.brand, pop.w_brand),
        ("price_level", np.array(vocab.PRICE_LEVELS, dtype=object),
         np.broadcast_to(np.arange(3), pop.price_pref.shape), pop.price_pref),
    ]:
        n, k = idx.shape
        user = np.repeat(np.arange(n, dtype=np.int64), k)
        key, weight = idx.ravel(), w.ravel()
        keep = weight > 0
        # a key drawn twice for one user (duplicate slots) becomes one row with the summed weight
        code, inv = np.unique(user[keep] * len(keys) + key[keep], return_inverse=True)
        total = np.bincount(inv, weights=weight[keep])
        parts.append(pd.DataFrame({"user_id": code // len(keys) + 1, "dimension": dim,
                                   "key": keys[code % len(keys)], "weight": total}))
    out = pd.concat(parts, ignore_index=True)
    out["key"] = out["key"].astype(str)
    return out


def _segment_cumsum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at each segment (segments given by their lengths)."""
    cum = np.cumsum(values)
    before = np.concatenate([[0], cum])[np.concatenate([[0], np.cumsum(counts)[:-1]])]
    return cum - np.repeat(before, counts)


def _uniform_ms(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    return (1000 * rng.uniform(bounds[0], bounds[1], n)).astype(np.int64)


def _block_events(rng: np.random.Generator, users: np.ndarray, lam: np.ndarray, pop: Population,
                  catalog: Catalog, start_ms: int, end_ms: int,
                  session_base: int) -> tuple[dict[str, np.ndarray], int]:
    """The events of one block of users as column arrays (unsorted), and its number of sessions."""
    n_sess = rng.poisson(lam[users])
    su = np.repeat(users, n_sess)
    n_s = len(su)
    sid = session_base + np.arange(n_s, dtype=np.int64)
    has_search = rng.random(n_s) < P_SEARCH
    n_views = 1 + rng.poisson(VIEWS_LAMBDA, n_s)

    # view slots and their offsets from the session start (the search, if any, is at offset 0)
    vs = np.repeat(np.arange(n_s), n_views)
    gaps = (1000 * (VIEW_GAP_S[0] + rng.exponential(VIEW_GAP_S[1], len(vs)))).astype(np.int64)
    view_off = _segment_cumsum(gaps, n_views)
    duration = view_off[np.cumsum(n_views) - 1] + MAX_TAIL_MS
    # the session fits between the user's signup (or the window start) and the window end, or is dropped
    lo = np.maximum(pop.created_ms[su], start_ms)
    room = end_ms - lo - duration
    keep_s = room > 0
    s_start = lo + (rng.random(n_s) * np.maximum(room, 0)).astype(np.int64)

    # the session's intent leaf: a taste (before or after the drift) or, exploring, a popular leaf
    drift_ms = start_ms + (end_ms - start_ms) // 2
    after = (s_start >= drift_ms)[:, None]
    weights = np.where(after, pop.w_after[su], pop.w_before[su])
    slot = _draw_slot(rng, weights)
    leaf_p = catalog.leaf_weight / catalog.leaf_weight.sum()
    s_leaf = np.where(after[:, 0], pop.cat_after[su, slot], pop.cat_before[su, slot])
    s_leaf = np.where(rng.random(n_s) < EXPLORE, rng.choice(catalog.n_leaves, n_s, p=leaf_p), s_leaf)

    # each view slot: intent leaf or a wander, then the best-fitting of a few popularity draws
    n_v = len(vs)
    v_leaf = np.where(rng.random(n_v) < WANDER, rng.choice(catalog.n_leaves, n_v, p=leaf_p), s_leaf[vs])
    cand = catalog.sample_in_leaf(rng, np.repeat(v_leaf, CANDIDATES)).reshape(n_v, CANDIDATES)
    vu = su[vs]
    brand_fit = ((pop.brand[vu][:, None, :] == catalog.brand[cand][:, :, None]) *
                 pop.w_brand[vu][:, None, :]).sum(axis=2)
    price_fit = np.take_along_axis(pop.price_pref[vu], catalog.price_level[cand].astype(np.int64), axis=1)
    score = np.log1p(BRAND_BOOST * brand_fit) + np.log(0.2 + PRICE_BOOST * price_fit)
    score += rng.gumbel(size=score.shape)
    valid = catalog.created_ms[cand] <= s_start[vs][:, None]
    score[~valid] = -np.inf
    pick = score.argmax(axis=1)
    v_item = cand[np.arange(n_v), pick]
    v_ok = valid.any(axis=1) & keep_s[vs]

    # the funnel, each step on the same item and strictly later
    click = v_ok & (rng.random(n_v) < P_CLICK)
    cart = click & (rng.random(n_v) < P_CART)
    purchase = cart & (rng.random(n_v) < P_PURCHASE)
    click_off = view_off + _uniform_ms(rng, CLICK_DELAY_S, n_v)
    cart_off = click_off + _uniform_ms(rng, CART_DELAY_S, n_v)
    purchase_off = cart_off + _uniform_ms(rng, PURCHASE_DELAY_S, n_v)
    qty = rng.geometric(0.8, n_v).astype(np.int32)

    search = np.flatnonzero(has_search & keep_s)
    query = s_leaf[search] * QUERIES_PER_LEAF + rng.integers(0, QUERIES_PER_LEAF, len(search))
    names = ("user", "item", "type", "query", "session", "qty", "ts")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in names}

    def add(rows: np.ndarray, kind: int, item: np.ndarray, q: np.ndarray, session_row: np.ndarray,
            quantity: np.ndarray, ts: np.ndarray) -> None:
        cols["user"].append(su[session_row])
        cols["item"].append(item)
        cols["type"].append(np.full(len(rows), kind, dtype=np.int8))
        cols["query"].append(q)
        cols["session"].append(sid[session_row])
        cols["qty"].append(quantity)
        cols["ts"].append(ts)

    none = np.full(len(search), -1, dtype=np.int64)
    add(search, SEARCH, none, query, search, np.ones(len(search), np.int32), s_start[search])
    for kind, mask, off in [(VIEW, v_ok, view_off), (CLICK, click, click_off), (CART, cart, cart_off),
                            (PURCHASE, purchase, purchase_off)]:
        rows = np.flatnonzero(mask)
        quantity = qty[rows] if kind in (CART, PURCHASE) else np.ones(len(rows), np.int32)
        add(rows, kind, v_item[rows], np.full(len(rows), -1, dtype=np.int64), vs[rows], quantity,
            s_start[vs[rows]] + off[rows])
    return {k: np.concatenate(v) for k, v in cols.items()}, n_s


def build_events(seed_seq: np.random.SeedSequence, pop: Population, catalog: Catalog, start_ms: int,
                 end_ms: int, events_per_user: float) -> pd.DataFrame:
    """All events of the window, sorted by time, with ``event_id`` increasing along ``ts``."""
    n_users = len(pop.created_ms)
    active = (end_ms - np.maximum(pop.created_ms, start_ms)) / (end_ms - start_ms)
    share = pop.activity * active
    lam = events_per_user / EVENTS_PER_SESSION * share / share.mean()
    blocks = range(0, n_users, BLOCK_USERS)
    rngs = [np.random.default_rng(s) for s in seed_seq.spawn(len(blocks))]
    parts, base = [], 0
    for rng, first in zip(rngs, blocks, strict=True):
        users = np.arange(first, min(first + BLOCK_USERS, n_users))
        part, n_sessions = _block_events(rng, users, lam, pop, catalog, start_ms, end_ms, base)
        base += n_sessions
        parts.append(part)
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # ties in ts: session, then funnel order, so each later step also has a larger event_id
    order = np.lexsort((cols["type"], cols["session"], cols["ts"]))
    cols = {k: v[order] for k, v in cols.items()}
    n = len(order)

    item = cols["item"]
    query = cols["query"]
    events = pd.DataFrame({
        "event_id": np.arange(1, n + 1, dtype=np.int64),
        "user_id": cols["user"] + 1,
        "item_id": pd.arrays.IntegerArray(item + 1, item < 0),
        "event_type": pa.DictionaryArray.from_arrays(
            pa.array(cols["type"]), pa.array(EVENT_TYPE_ORDER)).cast(pa.string()).to_pandas(),
        "query": pa.array(catalog.queries).take(pa.array(np.maximum(query, 0), mask=query < 0)).to_pandas(),
        "session_id": pc.binary_join_element_wise(
            "s", pc.cast(pa.array(cols["session"]), pa.string()), "").to_pandas(),
        "quantity": cols["qty"],
        "ts": _ts(cols["ts"]),
    })
    return events


__all__ = ["EVENTS_PER_SESSION", "Population", "build_events", "build_population", "tastes_frame"]
