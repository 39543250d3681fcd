"""Synthetic shop generator: a catalogue with text, users with latent tastes, sessions with funnels.

``build_shop`` makes the frames in memory (pure, deterministic by seed); ``generate_shop`` loads them
into ``shop.*`` with the ground truth in ``datagen.user_tastes``.
"""

from pipeline.datagen.build import (
    DEFAULT_DAYS,
    DEFAULT_END,
    DEFAULT_EVENTS_PER_USER,
    TIERS,
    build_shop,
    tier_sizes,
)
from pipeline.datagen.load import GenerateStats, generate_shop

__all__ = [
    "DEFAULT_DAYS",
    "DEFAULT_END",
    "DEFAULT_EVENTS_PER_USER",
    "TIERS",
    "GenerateStats",
    "build_shop",
    "generate_shop",
    "tier_sizes",
]
