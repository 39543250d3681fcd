"""The output quality gate: a run is published only when its lists pass every check.

Pure pandas over the run's lists; the caller decides what to do with a failure (keep the live run).
Checks, each named in the failure message and in ``QualityGateFailed.failed_checks``:

==================  ===========================================================================
empty_lists         users of the run without a list (max ``max_empty_lists``, default 0), not counting the
                    ``exhausted`` users, for whom nothing available is eligible (they bought it all)
duplicate_items     the same item twice in one user's list (max 0)
bad_ranks           users whose ranks are not exactly 1..n (max 0)
bad_scores          rows whose score is NaN or infinite (max 0)
long_lists          users with more than ``top_n`` rows (max 0; needs ``top_n``)
short_lists         share of listed users with fewer than min(``top_n``, available items) rows
                    (max ``max_short_share``; needs ``top_n``): a stage that silently truncates lists
unavailable_items   out-of-stock or invisible items (max 0)
missing_reasons     rows without a reason text (max 0)
coverage            share of the available catalogue in some list (min ``min_coverage``)
fallback_share      share of rows from the non-personal fallback (max ``max_fallback_share``; not enforced
                    while nothing is published: a new shop's first lists are all fallback, and they beat none)
diversity           intra-list diversity at ``diversity_k`` (min ``min_diversity``; 0 disables)
churn               1 - mean Jaccard overlap with the live run's lists (max ``max_churn``; 1 disables)
==================  ===========================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, QualityGateFailed

CHECKS = ("empty_lists", "duplicate_items", "bad_ranks", "bad_scores", "long_lists", "short_lists",
          "unavailable_items", "missing_reasons", "coverage", "fallback_share", "diversity", "churn")


@dataclass(frozen=True)
class GateThresholds:
    """Limits of the output gate; every one configurable."""

    max_empty_lists: int = 0
    max_duplicate_items: int = 0
    max_bad_ranks: int = 0
    max_bad_scores: int = 0
    max_long_lists: int = 0
    # Users who bought most of a small catalogue legitimately get short lists; a truncating bug hits everyone.
    max_short_share: float = 0.5
    max_unavailable_items: int = 0
    max_missing_reasons: int = 0
    min_coverage: float = 0.01  # share of the available catalogue appearing in some list
    max_fallback_share: float = 0.9  # share of rows that came from the non-personal fallback
    min_diversity: float = 0.0  # intra-list diversity at diversity_k (0 disables)
    diversity_k: int = 10
    max_churn: float = 1.0  # 1 - mean Jaccard overlap with the live run's lists (1.0 disables)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> GateThresholds:
        """Thresholds from a plain dict (settings, DAG params); unknown keys fail fast."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown output gate threshold(s) {unknown}", f"valid: {sorted(known)}")
        return cls(**values)


def churn_against(recs: pd.DataFrame, live: pd.DataFrame) -> float | None:
    """1 - mean Jaccard overlap of item sets, over users present in both runs (None when none are)."""
    a = recs[["user_id", "item_id"]].drop_duplicates()
    b = live[["user_id", "item_id"]].drop_duplicates()
    common = np.intersect1d(a["user_id"].unique(), b["user_id"].unique())
    if len(common) == 0:
        return None
    a, b = a[a["user_id"].isin(common)], b[b["user_id"].isin(common)]
    inter = a.merge(b, on=["user_id", "item_id"]).groupby("user_id").size().reindex(common, fill_value=0)
    union = (a.groupby("user_id").size().reindex(common) + b.groupby("user_id").size().reindex(common) - inter)
    jac = inter / union.where(union > 0, 1)
    return float(1.0 - jac.mean())


def list_diversity(recs: pd.DataFrame, items: pd.DataFrame, k: int = 10,
                   item_embeddings: tuple[np.ndarray, np.ndarray] | None = None) -> float | None:
    """Intra-list diversity at ``k`` over embeddings when given, else over category paths."""
    from pipeline.evaluate.metrics import intra_list_diversity

    if item_embeddings is not None:
        v = intra_list_diversity(recs, k, item_embeddings=item_embeddings)
    elif "category" in items:
        v = intra_list_diversity(recs, k, item_categories=items.set_index("item_id")["category"])
    else:
        return None
    return None if v != v else float(v)


def _bad_ranks(recs: pd.DataFrame) -> int:
    """Users whose ranks are not exactly 1..n (a gap, a repeat, a 0): readers ORDER BY rank and LIMIT."""
    if recs.empty or "rank" not in recs:
        return 0
    r = recs[["user_id", "rank"]].sort_values(["user_id", "rank"], kind="stable")
    expected = r.groupby("user_id").cumcount().to_numpy() + 1
    wrong = r["rank"].to_numpy() != expected
    return int(r.loc[wrong, "user_id"].nunique())


def check_output(recs: pd.DataFrame, *, users: pd.Series, items: pd.DataFrame,
                 thresholds: GateThresholds | dict | None = None, live: pd.DataFrame | None = None,
                 fallback_sources: tuple[str, ...] = ("popularity",),
                 item_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
                 top_n: int | None = None, nothing_live: bool = False,
                 exhausted: pd.Series | None = None) -> dict:
    """Measure the run's lists; raise QualityGateFailed naming every failed check, else return the figures.

    ``live``: the live run's (user_id, item_id) rows for the churn check (see ``publish.live_lists``);
    ``top_n``: the run's list length, for the long / short list checks (skipped without it);
    ``nothing_live``: no publication exists yet, so a high fallback share is reported but does not fail;
    ``exhausted``: users the scoring stage found nothing eligible for (reported, not counted as empty).
    """
    t = thresholds if isinstance(thresholds, GateThresholds) else GateThresholds.from_dict(thresholds)
    listed = set(recs["user_id"].unique())
    unlisted = ~users.isin(listed)
    spent = unlisted & users.isin(exhausted if exhausted is not None else [])
    empty = int((unlisted & ~spent).sum())
    dups = int(recs.duplicated(["user_id", "item_id"]).sum())
    bad_ranks = _bad_ranks(recs)
    bad_scores = int((~np.isfinite(pd.to_numeric(recs["score"], errors="coerce").to_numpy(dtype="float64"))).sum()) \
        if "score" in recs else 0
    available = items.loc[items["in_stock"].fillna(False).astype(bool) & items["visible"].fillna(False).astype(bool),
                          "item_id"]
    unavailable = int((~recs["item_id"].isin(available)).sum())
    missing_reasons = int((recs["reason"].isna() | (recs["reason"].astype(str).str.strip() == "")).sum()) \
        if "reason" in recs else len(recs)
    coverage = recs["item_id"].nunique() / max(len(available), 1)
    long_lists, short_share = 0, 0.0
    if top_n is not None and len(recs):
        length = recs.groupby("user_id").size()
        long_lists = int((length > top_n).sum())
        short_share = float((length < min(top_n, available.nunique())).mean())
    fallback = float(recs["source"].isin(fallback_sources).mean()) if len(recs) else 1.0
    diversity = list_diversity(recs, items, t.diversity_k, item_embeddings) if len(recs) else None
    churn = churn_against(recs, live) if live is not None and len(live) and len(recs) else None
    figures = {"users": int(len(users)), "rows": int(len(recs)), "empty_lists": empty,
               "exhausted_users": int(spent.sum()), "duplicate_items": dups,
               "bad_ranks": bad_ranks, "bad_scores": bad_scores, "long_lists": long_lists,
               "short_lists": round(short_share, 4),
               "unavailable_items": unavailable, "missing_reasons": missing_reasons, "coverage": round(coverage, 4),
               "fallback_share": round(fallback, 4),
               "diversity": None if diversity is None else round(diversity, 4),
               "churn": None if churn is None else round(churn, 4), "thresholds": asdict(t)}
    if "variant" in recs and len(recs):
        figures["variants"] = {str(k): int(v) for k, v in recs.groupby("variant")["user_id"].nunique().items()}
    failed: dict[str, str] = {}
    if empty > t.max_empty_lists:
        failed["empty_lists"] = f"{empty} users have an empty list (max {t.max_empty_lists})"
    if dups > t.max_duplicate_items:
        failed["duplicate_items"] = f"{dups} duplicate items within lists (max {t.max_duplicate_items})"
    if bad_ranks > t.max_bad_ranks:
        failed["bad_ranks"] = f"{bad_ranks} users whose ranks are not 1..n (max {t.max_bad_ranks})"
    if bad_scores > t.max_bad_scores:
        failed["bad_scores"] = f"{bad_scores} rows with a NaN or infinite score (max {t.max_bad_scores})"
    if long_lists > t.max_long_lists:
        failed["long_lists"] = f"{long_lists} users have more than top_n={top_n} rows (max {t.max_long_lists})"
    if short_share > t.max_short_share:
        failed["short_lists"] = (f"{short_share:.1%} of the listed users have fewer than "
                                 f"{min(top_n or 0, available.nunique())} rows (max {t.max_short_share:.0%})")
    if unavailable > t.max_unavailable_items:
        failed["unavailable_items"] = f"{unavailable} out-of-stock or invisible items (max {t.max_unavailable_items})"
    if missing_reasons > t.max_missing_reasons:
        failed["missing_reasons"] = f"{missing_reasons} rows without a reason (max {t.max_missing_reasons})"
    if coverage < t.min_coverage:
        failed["coverage"] = f"catalogue coverage {coverage:.4f} < {t.min_coverage}"
    figures["fallback_share_enforced"] = not nothing_live
    if fallback > t.max_fallback_share and not nothing_live:
        failed["fallback_share"] = f"fallback share {fallback:.3f} > {t.max_fallback_share}"
    if t.min_diversity > 0 and (diversity is None or diversity < t.min_diversity):
        shown = "n/a" if diversity is None else f"{diversity:.3f}"
        failed["diversity"] = f"intra-list diversity@{t.diversity_k} {shown} < {t.min_diversity}"
    if churn is not None and churn > t.max_churn:
        failed["churn"] = f"churn against the live run {churn:.3f} > {t.max_churn}"
    if failed:
        exc = QualityGateFailed("output quality gate refused the run: "
                                + "; ".join(f"[{k}] {v}" for k, v in failed.items()),
                                "the run's lists in RERANK_HOME/runs/<run_id>/recs.parquet; the live run stays")
        exc.failed_checks = list(failed)  # type: ignore[attr-defined]
        exc.figures = figures  # type: ignore[attr-defined]
        raise exc
    return figures
