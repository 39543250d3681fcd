"""``generate_shop``: build a synthetic shop and load it, with its ground truth, in one transaction."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from pipeline.datagen.build import DEFAULT_END, build_world, check_sizes
from pipeline.datagen.loop import with_logged_impressions
from pipeline.db.copy import copy_frame
from pipeline.db.engine import connect
from pipeline.db.shop import load_shop
from pipeline.errors import ConfigError
from pipeline.ingest.impressions import load_impressions

TASTE_COLUMNS = ["user_id", "dimension", "key", "weight"]


@dataclass(frozen=True)
class GenerateStats:
    """Row counts written and where the time went."""

    users: int
    items: int
    events: int
    tastes: int
    build_seconds: float
    load_seconds: float
    impressions: int = 0


def generate_shop(url: str, *, users: int, items: int, days: int, seed: int = 42,
                  end: datetime | None = None, images_dir: str | None = None,
                  image_share: float = 1.0, events_per_user: float | None = None,
                  impression_days: int = 0) -> GenerateStats:
    """Replace ``shop.users/items/events`` and ``datagen.user_tastes`` with a generated shop.

    Everything is truncated and copied in one transaction, so a second run leaves the same rows and a
    failure leaves the previous shop in place. With ``images_dir``, a share ``image_share`` (all by default)
    of the items get small synthetic pictures there (``image_path`` set; see :mod:`pipeline.datagen.images`).
    ``events_per_user``: the mean history length (default: the tiers' ratio). ``impression_days``: the last
    this many days also get a ``home`` placement logged in ``shop.impressions`` whose clicks follow a
    position-biased click model (``pipeline.datagen.loop``); 0 (the default) leaves the organic shop as before.
    """
    check_sizes(users, items, days, events_per_user)
    if not 0 <= impression_days <= days:
        raise ConfigError(f"impression_days must be in [0, days={days}], got {impression_days}", "--impression-days")
    t0 = time.perf_counter()
    world = build_world(users, items, days, seed, end=end or DEFAULT_END, events_per_user=events_per_user)
    impressions = with_logged_impressions(world, impression_days) if impression_days else None
    frames, tastes = world.frames, world.tastes
    if images_dir:
        from pipeline.datagen.images import write_item_images

        frames.items = write_item_images(frames.items, images_dir, share=image_share, seed=seed)
    t1 = time.perf_counter()
    with connect(url) as conn, conn.cursor() as cur:
        counts = load_shop(cur, frames, replace=True)
        cur.execute("TRUNCATE datagen.user_tastes")
        n_tastes = copy_frame(cur, "datagen.user_tastes", tastes, TASTE_COLUMNS)
        cur.execute("ANALYZE datagen.user_tastes")
        n_imp = load_impressions(cur, impressions, append=True) if impressions is not None else 0
    return GenerateStats(users=counts["users"], items=counts["items"], events=counts["events"],
                         tastes=n_tastes, build_seconds=t1 - t0, load_seconds=time.perf_counter() - t1,
                         impressions=n_imp)
