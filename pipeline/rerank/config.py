"""Re-rank settings and the deterministic A/B variant bucket.

One frozen :class:`RerankConfig` says how a list is built (fusion, MMR lambda, caps, exploration,
repurchase windows). A/B variants are named overrides of it with a traffic weight; a user's variant is a
pure function of ``(user_id, salt)`` (splitmix64 of the id xor a SHA-256 of the salt), so every process,
every shard and every rerun puts a user in the same bucket, and changing the salt reshuffles everyone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError

FUSIONS = ("product", "ranker", "weighted")
DIVERSITY_SPACES = ("auto", "embedding", "category")
BUCKETS = 10_000  # resolution of variant weights (0.01 %)


@dataclass(frozen=True)
class RerankConfig:
    """How candidates become a user's list. Every field has its default here (one place)."""

    #: ``product`` P_recall * P_rank (default), ``ranker`` P_rank only, ``weighted`` alpha*P_recall + (1-alpha)*P_rank.
    fusion: str = "product"
    #: Weight of P_recall in the ``weighted`` fusion.
    alpha: float = 0.5
    #: MMR trade-off: 1.0 = relevance only (diversity off), 0.0 = dissimilarity only.
    mmr_lambda: float = 0.8
    #: Item similarity for MMR: ``embedding`` (item_embeddings.parquet), ``category`` (path overlap), or
    #: ``auto`` (embeddings when given, else categories).
    diversity_space: str = "auto"
    #: Most items of one top-level category in the top N, as a share of N (1.0 disables the cap).
    max_category_share: float = 0.4
    #: Most items of one brand in the top N, as a share of N (1.0 disables the cap).
    max_brand_share: float = 0.5
    #: Most items the user recently viewed or carted and did not buy (those the ``retarget`` source
    #: proposed) in every top k of the list, as a share of k (0.2: the first slot may hold one, then at most
    #: 2 of every 10; 1.0 disables the cap). The ranker learns that re-engagement is the likeliest next
    #: click, so uncapped lists lean on it (benchmarks/eval_nightly.py, seeds 3-5: uncapped lists score 13-14 %
    #: higher on every click, cart or purchase; 0.2 scores 27-30 % higher on items new to the user).
    max_retarget_share: float = 0.2
    #: What the retarget cap counts: ``"recent"`` the items the ``retarget`` source proposed (recently viewed
    #: or carted), ``"seen"`` every item the user had an event with before the run (older views that ALS or
    #: item-CF propose again too; needs the caller's ``seen`` pairs). eval_nightly, seeds 3-7: ``"seen"``
    #: halves the ranker's seen items in the top 10 (0.27-0.29 -> 0.17) and scores 9-16 % higher on items new
    #: to the user, 3-6 % lower on every click, cart or purchase: the same trade as the cap itself, so the
    #: default stays and an A/B arm (``variants``) is the way to choose it for a shop.
    retarget_cap_scope: str = "recent"
    #: Share of the top N reserved for new items (exploration); 0 disables.
    explore_share: float = 0.05
    #: An item is new for this many days after ``created_at``.
    new_item_days: float = 14.0
    #: Days after a purchase before the item may be recommended again, by category path prefix
    #: (longest prefix wins); categories not listed are never recommended again once bought.
    repurchase_days: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.fusion not in FUSIONS:
            problems.append(f"fusion {self.fusion!r} not in {FUSIONS}")
        if self.retarget_cap_scope not in ("recent", "seen"):
            problems.append(f"retarget_cap_scope {self.retarget_cap_scope!r} not in ('recent', 'seen')")
        if self.diversity_space not in DIVERSITY_SPACES:
            problems.append(f"diversity_space {self.diversity_space!r} not in {DIVERSITY_SPACES}")
        for name in ("alpha", "mmr_lambda", "max_category_share", "max_brand_share", "max_retarget_share",
                     "explore_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                problems.append(f"{name}={v} is outside [0, 1]")
        if self.new_item_days < 0 or any(d < 0 for d in self.repurchase_days.values()):
            problems.append("day counts must be >= 0")
        if problems:
            raise ConfigError("invalid re-rank config: " + "; ".join(problems), "the rerank / variants settings")

    def with_overrides(self, overrides: Mapping[str, Any]) -> RerankConfig:
        """A copy with ``overrides`` applied; unknown keys fail fast."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown re-rank setting(s) {unknown}", f"valid: {sorted(known)}")
        return replace(self, **dict(overrides))


@dataclass(frozen=True)
class Variant:
    """One arm of an A/B test: a name, a traffic weight and its overrides of the base config."""

    name: str
    weight: float
    overrides: Mapping[str, Any] = field(default_factory=dict)


def caps_every_seen_item(config: RerankConfig | Mapping[str, Any] | None,
                         variants: Mapping[str, Mapping[str, Any]] | None = None) -> bool:
    """Whether the re-rank (a config or its settings dict) or one of its A/B arms has
    ``retarget_cap_scope="seen"``: its caller must then hand :func:`finalize_lists` the users' seen pairs."""
    base = config.retarget_cap_scope if isinstance(config, RerankConfig) else (config or {}).get("retarget_cap_scope")
    return base == "seen" or any(dict(v).get("retarget_cap_scope") == "seen" for v in (variants or {}).values())


def repurchase_windows_in_play(config: RerankConfig | Mapping[str, Any] | None,
                               variants: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, float]]:
    """Every set of repurchase windows the re-rank may apply: the base config's, then each A/B arm's own
    (an arm without ``repurchase_days`` inherits the base's, already listed)."""
    base = config.repurchase_days if isinstance(config, RerankConfig) else (config or {}).get("repurchase_days")
    arms = [dict(v)["repurchase_days"] for v in (variants or {}).values() if "repurchase_days" in dict(v)]
    return [dict(base or {}), *(dict(a or {}) for a in arms)]


def repurchasable_categories(config: RerankConfig | Mapping[str, Any] | None,
                             variants: Mapping[str, Mapping[str, Any]] | None = None,
                             also: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Top-level categories (``also`` plus every window's first path segment) whose bought items recall must
    keep as candidates: a merchandiser's window (``recsys.repurchase_windows``) can only bring back an item
    that recall proposed, and the re-rank applies each arm's exact window to it."""
    tops = {str(prefix).split(">", 1)[0] for w in repurchase_windows_in_play(config, variants) for prefix in w}
    return tuple(sorted(tops | set(also)))


def split_by_arm(users: np.ndarray | pd.Series, config: RerankConfig | None,
                 variants: Sequence[Variant] | Mapping[str, Mapping[str, Any]] | None,
                 salt: str = "rerank-ab") -> list[tuple[Variant, RerankConfig, np.ndarray]]:
    """Each A/B arm that holds some of ``users``: (the arm, its config = ``config`` with the arm's overrides,
    its users). The one place that says which user sees which settings."""
    cfg = config or RerankConfig()
    arms = list(variants) if isinstance(variants, Sequence) else parse_variants(variants)
    ids = np.asarray(pd.unique(np.asarray(users)))
    arm_of = assign_variants(ids, arms, salt)
    return [(a, cfg.with_overrides(a.overrides), ids[arm_of == a.name]) for a in arms if (arm_of == a.name).any()]


def parse_variants(spec: Mapping[str, Mapping[str, Any]] | None) -> list[Variant]:
    """``{"control": {"weight": 0.5}, "diverse": {"weight": 0.5, "mmr_lambda": 0.6}}`` -> variants.

    ``None`` or ``{}`` gives one variant ``control`` with all the traffic.
    """
    if not spec:
        return [Variant("control", 1.0)]
    out = []
    for name, body in spec.items():
        body = dict(body)
        weight = float(body.pop("weight", 1.0))
        if weight < 0:
            raise ConfigError(f"variant {name!r} has a negative weight", "variant weights")
        RerankConfig().with_overrides(body)  # validate keys and values now, not mid-run
        out.append(Variant(str(name), weight, body))
    if sum(v.weight for v in out) <= 0:
        raise ConfigError("variant weights sum to zero", "give at least one variant a positive weight")
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each element (vectorised, wraps modulo 2**64 on purpose)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def salt_key(salt: str) -> np.uint64:
    """The salt as 64 bits (SHA-256 prefix: stable across processes, unlike ``hash()``)."""
    return np.uint64(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little"))


def stable_hash(ids: np.ndarray | pd.Series, salt: str, other: np.ndarray | None = None) -> np.ndarray:
    """Deterministic uint64 per id (and per ``(id, other)`` pair when ``other`` is given)."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.asarray(ids).astype(np.int64).view(np.uint64) ^ salt_key(salt))
        if other is not None:
            h = _splitmix64(h ^ np.asarray(other).astype(np.int64).view(np.uint64))
    return h


def assign_variants(user_ids: np.ndarray | pd.Series, variants: list[Variant], salt: str = "rerank-ab") -> np.ndarray:
    """Each user's variant name: bucket = hash(user_id, salt) mod 10 000, split by cumulative weight."""
    ids = np.asarray(user_ids)
    if len(variants) == 1 or len(ids) == 0:
        return np.full(len(ids), variants[0].name if variants else "control", dtype=object)
    w = np.array([v.weight for v in variants], dtype="float64")
    edges = np.round(np.cumsum(w) / w.sum() * BUCKETS).astype("int64")
    bucket = (stable_hash(ids, salt) % np.uint64(BUCKETS)).astype("int64")
    idx = np.searchsorted(edges, bucket, side="right")
    names = np.array([v.name for v in variants], dtype=object)
    return names[np.minimum(idx, len(variants) - 1)]
