"""``build_shop``: a whole synthetic shop in memory, deterministic by seed.

The seed is split (``SeedSequence.spawn``) into one stream for the catalogue, one for the users and one
for the events, so that each part is reproducible on its own and a change to one does not reshuffle the
others.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pipeline.datagen.behaviour import Population, build_events, build_population, tastes_frame
from pipeline.datagen.catalog import Catalog, build_catalog
from pipeline.errors import ConfigError
from pipeline.frames import ShopFrames

#: (users, items, target events) per tier.
TIERS: dict[str, tuple[int, int, int]] = {
    "S": (10_000, 2_000, 500_000),
    "M": (100_000, 20_000, 5_000_000),
    "L": (1_000_000, 100_000, 50_000_000),
}
#: Days of events when none are given (what ``rerank generate --tier`` uses).
DEFAULT_DAYS = 30
#: Mean events per user: every tier's target divided by its users.
DEFAULT_EVENTS_PER_USER = 50.0
DEFAULT_END = datetime(2026, 11, 24, tzinfo=UTC)


def tier_sizes(tier: str) -> tuple[int, int, int]:
    """``(users, items, target events)`` of a tier name (``S``, ``M`` or ``L``, any case)."""
    key = str(tier).strip().upper()
    if key not in TIERS:
        raise ConfigError(f"unknown tier {tier!r}", f"one of {', '.join(TIERS)}")
    return TIERS[key]


def check_sizes(users: int, items: int, days: int, events_per_user: float | None = None) -> None:
    """Refuse counts that cannot make a shop, with one clear message."""
    for name, value in (("users", users), ("items", items), ("days", days)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ConfigError(f"{name} must be a whole number, got {value!r}", f"--{name}")
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}", f"--{name}")
    if events_per_user is not None and not events_per_user >= 0:
        raise ConfigError(f"events_per_user must be >= 0, got {events_per_user}")


@dataclass
class World:
    """A generated shop with what made it: the catalogue and the users' latent tastes (for the simulated loop
    of ``pipeline.datagen.loop``: impressions, clicks with position bias, A/B arms)."""

    frames: ShopFrames
    tastes: pd.DataFrame
    catalog: Catalog
    pop: Population
    start_ms: int
    end_ms: int
    seed: int


def build_shop(users: int, items: int, days: int, seed: int = 42, *, events_per_user: float | None = None,
               end: datetime = DEFAULT_END) -> tuple[ShopFrames, pd.DataFrame]:
    """A synthetic shop (users, items, events in ``[end - days, end)``) and its ground-truth tastes.

    Same arguments, same frames. The tastes frame has the columns of ``datagen.user_tastes``
    (``user_id, dimension, key, weight``).
    """
    world = build_world(users, items, days, seed, events_per_user=events_per_user, end=end)
    return world.frames, world.tastes


def build_world(users: int, items: int, days: int, seed: int = 42, *, events_per_user: float | None = None,
                end: datetime = DEFAULT_END) -> World:
    """:func:`build_shop` with its catalogue and population kept (same frames for the same arguments)."""
    check_sizes(users, items, days, events_per_user)
    if end.tzinfo is None:
        raise ConfigError(f"end must be timezone-aware, got {end.isoformat()}", "pass tzinfo=UTC")
    end_ms = int(end.timestamp() * 1000)
    start_ms = int((end - timedelta(days=days)).timestamp() * 1000)
    catalog_ss, users_ss, events_ss = np.random.SeedSequence(seed).spawn(3)
    catalog = build_catalog(np.random.default_rng(catalog_ss), items, start_ms, days)
    pop = build_population(np.random.default_rng(users_ss), users, catalog, start_ms, days)
    epu = DEFAULT_EVENTS_PER_USER if events_per_user is None else float(events_per_user)
    events = build_events(events_ss, pop, catalog, start_ms, end_ms, epu)
    frames = ShopFrames(users=pop.users, items=catalog.items, events=events, name=f"synthetic-{seed}")
    return World(frames, tastes_frame(pop, catalog), catalog, pop, start_ms, end_ms, seed)
