"""The simulated loop: lists shown to users (``shop.impressions``) and the clicks they earn, with position bias.

The click model is the position-based model of unbiased learning to rank: an item shown at rank ``r`` is
examined with probability ``examination(r) = r ** -POSITION_ETA`` and, once examined, clicked with its
attractiveness ``ATTRACT_MIN + (ATTRACT_MAX - ATTRACT_MIN) * relevance``. ``relevance`` is the generator's
ground truth (the same latent tastes that drive the organic sessions, after their drift): the weight of the
item's leaf among the user's favourite categories, scaled by brand and price fit, in [0, 1]. A click opens the
item (``view`` then ``click``), and may lead on to ``add_to_cart`` and ``purchase`` with the organic funnel's
probabilities.

Two users of it:

- :func:`logged_impressions`: the generator's own ``home`` placement over the last days of the window, with a
  randomised order (the shop's logging policy), so the position bias can be estimated from the logs;
- :func:`simulate_ab`: days after the window in which every visiting user gets the list of their A/B arm
  (assigned by the production salted hash, ``pipeline.rerank.config.assign_variants``); an arm serves the
  user's true tastes with its own ``taste_share``, so the better arm is known by construction. ``skew`` moves a
  share of the second arm's users into the first one while the declared split stays, a broken assignment
  that the readout's sample-ratio check must catch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from pipeline.datagen.behaviour import P_CART, P_PURCHASE, _draw_slot
from pipeline.datagen.build import World
from pipeline.datagen.catalog import DAY_MS, _ts
from pipeline.frames import EVENT_COLUMNS, IMPRESSION_COLUMNS

POSITION_ETA = 1.0
ATTRACT_MIN = 0.02
ATTRACT_MAX = 0.6
#: A user's chance to open the placement on a given day (scaled by their activity, at most 1).
P_VISIT = 0.5
LIST_LEN = 10
#: The generator's logging policy serves this share of slots from the user's tastes, in a random order.
LOGGING_TASTE_SHARE = 0.4


def examination(rank: np.ndarray | int, eta: float = POSITION_ETA) -> np.ndarray:
    """Probability that rank ``rank`` (1-based) is looked at."""
    return np.asarray(rank, dtype=np.float64) ** -eta


def relevance(world: World, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Ground-truth relevance in [0, 1] of each (user, item) pair (1-based ids of the generated shop)."""
    pop, cat = world.pop, world.catalog
    u = np.asarray(user_ids, dtype=np.int64) - 1
    i = np.asarray(item_ids, dtype=np.int64) - 1
    leaf_w = ((pop.cat_after[u] == cat.leaf[i][:, None]) * pop.w_after[u]).sum(axis=1)
    brand = ((pop.brand[u] == cat.brand[i][:, None]) * pop.w_brand[u]).sum(axis=1)
    price = pop.price_pref[u, cat.price_level[i].astype(np.int64)]
    return leaf_w * (0.5 + 0.5 * brand) * (0.4 + 0.6 * price)


def attraction(rel: np.ndarray) -> np.ndarray:
    return ATTRACT_MIN + (ATTRACT_MAX - ATTRACT_MIN) * np.asarray(rel, dtype=np.float64)


def taste_lists(rng: np.random.Generator, world: World, user_ids: np.ndarray, taste_share: float, *,
                day_ms: int, k: int = LIST_LEN, shuffle: bool = False) -> pd.DataFrame:
    """``k``-slot lists (user_id, item_id, rank): each slot is, with ``taste_share``, a popular item of one of the
    user's true favourite leaves, else a popular item of the whole catalogue; items created after ``day_ms``
    are left out, repeats within a list dropped. ``shuffle``: ranks in random order (a randomised policy)."""
    pop, cat = world.pop, world.catalog
    users = np.repeat(np.asarray(user_ids, dtype=np.int64), k)
    n = len(users)
    if not n:
        return pd.DataFrame({"user_id": users, "item_id": users, "rank": users})
    born = cat.created_ms <= day_ms
    p_all = cat.popularity * born
    glob = rng.choice(len(p_all), n, p=p_all / p_all.sum())
    leaf = pop.cat_after[users - 1, _draw_slot(rng, pop.w_after[users - 1])]
    mine = cat.sample_in_leaf(rng, leaf)
    item = np.where((rng.random(n) < taste_share) & born[mine], mine, glob)
    df = pd.DataFrame({"user_id": users, "item_id": item + 1, "key": rng.random(n) if shuffle else np.arange(n)})
    df = df.drop_duplicates(["user_id", "item_id"]).sort_values(["user_id", "key"], kind="stable")
    df["rank"] = df.groupby("user_id").cumcount() + 1
    return df[["user_id", "item_id", "rank"]].reset_index(drop=True)


def expose(rng: np.random.Generator, world: World, lists: pd.DataFrame, day_ms: int) -> tuple[pd.DataFrame,
                                                                                             pd.DataFrame]:
    """Show ``lists`` (user_id, item_id, rank, variant, placement, run_id) once per user on the day starting at
    ``day_ms``: (impressions, the events they cause, without ``event_id``)."""
    users = np.unique(lists["user_id"].to_numpy(dtype=np.int64))
    visit = pd.Series(day_ms + (rng.random(len(users)) * (DAY_MS - 3_600_000)).astype(np.int64), index=users)
    shown_ms = visit.reindex(lists["user_id"]).to_numpy()
    imp = lists.assign(ts=_ts(shown_ms))[IMPRESSION_COLUMNS].reset_index(drop=True)
    rank = lists["rank"].to_numpy()
    rel = relevance(world, lists["user_id"].to_numpy(), lists["item_id"].to_numpy())
    click = rng.random(len(lists)) < examination(rank) * attraction(rel)
    cart = click & (rng.random(len(lists)) < P_CART)
    buy = cart & (rng.random(len(lists)) < P_PURCHASE)
    view_ms = shown_ms + 1000 * (5 + 20 * rank)
    parts = []
    for kind, mask, off in (("view", click, 0), ("click", click, 2000), ("add_to_cart", cart, 30_000),
                            ("purchase", buy, 300_000)):
        rows = np.flatnonzero(mask)
        qty = rng.geometric(0.8, len(rows)) if kind in ("add_to_cart", "purchase") else np.ones(len(rows), int)
        if kind == "purchase":  # the cart's quantity
            qty = parts[2]["quantity"].to_numpy()[np.isin(np.flatnonzero(cart), rows)]
        parts.append(pd.DataFrame({
            "user_id": lists["user_id"].to_numpy()[rows], "item_id": lists["item_id"].to_numpy()[rows],
            "event_type": kind, "query": None,
            "session_id": [f"imp{day_ms // DAY_MS}-{u}" for u in lists["user_id"].to_numpy()[rows]],
            "quantity": qty.astype(np.int64), "ts": _ts(view_ms[rows] + off)}))
    events = pd.concat(parts, ignore_index=True)
    return imp, events


def number_events(events: pd.DataFrame, first_id: int = 1) -> pd.DataFrame:
    """``events`` in time order (funnel order within a tie) with ``event_id`` from ``first_id``."""
    order = {"search": 0, "view": 1, "click": 2, "add_to_cart": 3, "purchase": 4}
    ev = events.assign(_o=events["event_type"].map(order)).sort_values(["ts", "_o"], kind="stable")
    ev = ev.drop(columns="_o").reset_index(drop=True)
    ev["event_id"] = np.arange(first_id, first_id + len(ev), dtype=np.int64)
    ev["item_id"] = ev["item_id"].astype("Int64")
    return ev[EVENT_COLUMNS]


def _visitors(rng: np.random.Generator, world: World, day_ms: int) -> np.ndarray:
    pop = world.pop
    p = np.minimum(1.0, P_VISIT * pop.activity / pop.activity.mean())
    ok = (pop.created_ms <= day_ms) & (rng.random(len(p)) < p)
    return np.flatnonzero(ok).astype(np.int64) + 1


def logged_impressions(world: World, days: int, *, seed: int | None = None,
                       taste_share: float = LOGGING_TASTE_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The shop's ``home`` placement over the last ``days`` days of the window (randomised order):
    (impressions, their events without ids)."""
    rng = np.random.default_rng([world.seed if seed is None else seed, 25])
    imps, evs = [], []
    for d in range(days, 0, -1):
        day_ms = world.end_ms - d * DAY_MS
        users = _visitors(rng, world, day_ms)
        lists = taste_lists(rng, world, users, taste_share, day_ms=day_ms, shuffle=True)
        lists = lists.assign(variant="control", placement="home", run_id=None)
        imp, ev = expose(rng, world, lists, day_ms)
        imps.append(imp)
        evs.append(ev)
    return pd.concat(imps, ignore_index=True), pd.concat(evs, ignore_index=True)


def with_logged_impressions(world: World, days: int) -> pd.DataFrame:
    """Add the events of :func:`logged_impressions` to ``world.frames.events`` (renumbered in time order) and
    return the impressions (call it once: a second call would add a second placement)."""
    imp, ev = logged_impressions(world, days)
    world.frames.events = number_events(pd.concat([world.frames.events, ev], ignore_index=True))
    return imp


def simulate_ab(world: World, days: int, arms: Mapping[str, float], *, weights: Mapping[str, float] | None = None,
                salt: str = "rerank-ab", skew: float = 0.0, seed: int = 0,
                placement: str = "home") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``days`` days after the window: each visiting user sees the list of their arm (``arms``: name -> share
    of slots from the user's true tastes; ``weights``: the declared split, default equal). ``skew``: share of
    the second arm's users served and logged as the first arm. Returns (impressions, events without ids)."""
    from pipeline.rerank.config import assign_variants, parse_variants

    names = list(arms)
    declared = parse_variants({n: {"weight": float((weights or {}).get(n, 1.0))} for n in names})
    rng = np.random.default_rng([seed, 2025])
    imps, evs = [], []
    for d in range(days):
        day_ms = world.end_ms + d * DAY_MS
        users = _visitors(rng, world, day_ms)
        arm = assign_variants(users, declared, salt)
        if skew and len(names) > 1:
            moved = (arm == names[1]) & (rng.random(len(users)) < skew)
            arm = np.where(moved, names[0], arm)
        for name in names:
            mine = users[arm == name]
            lists = taste_lists(rng, world, mine, arms[name], day_ms=day_ms)
            lists = lists.assign(variant=name, placement=placement, run_id=f"sim_{d:03d}")
            imp, ev = expose(rng, world, lists, day_ms)
            imps.append(imp)
            evs.append(ev)
    return pd.concat(imps, ignore_index=True), pd.concat(evs, ignore_index=True)


def load_loop(url: str, impressions: pd.DataFrame, events: pd.DataFrame) -> dict[str, int]:
    """Append simulated ``impressions`` and their ``events`` (ids after the shop's largest) in one transaction."""
    from pipeline.db.copy import copy_frame
    from pipeline.db.engine import connect
    from pipeline.ingest.impressions import load_impressions

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(event_id), 0) FROM shop.events")
        first = int(cur.fetchone()[0]) + 1
        n_ev = copy_frame(cur, "shop.events", number_events(events, first), EVENT_COLUMNS)
        n_imp = load_impressions(cur, impressions, append=True)
        cur.execute("ANALYZE shop.events")
    return {"impressions": n_imp, "events": n_ev}


__all__ = ["load_loop", "attraction", "examination", "expose", "logged_impressions", "number_events", "relevance",
           "simulate_ab", "taste_lists", "with_logged_impressions"]
