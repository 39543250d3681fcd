"""The output quality gate: a run is published only when its lists pass every check.

Pure pandas over the run's lists; the caller decides what to do with a failure (keep the live run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from pipeline.errors import QualityGateFailed


@dataclass(frozen=True)
class GateThresholds:
    """Limits of the output gate; every one configurable."""

    max_empty_lists: int = 0
    max_duplicate_items: int = 0
    max_unavailable_items: int = 0
    min_coverage: float = 0.01  # share of the available catalogue appearing in some list
    max_fallback_share: float = 0.9  # share of rows that came from the non-personal fallback
    max_churn: float = 1.0  # 1 - mean Jaccard overlap with the live run's lists (1.0 disables)


def check_output(recs: pd.DataFrame, *, users: pd.Series, items: pd.DataFrame,
                 thresholds: GateThresholds | None = None, live: pd.DataFrame | None = None,
                 fallback_sources: tuple[str, ...] = ("popularity",)) -> dict:
    """Measure the run's lists; raise QualityGateFailed naming every failed check, else return the figures."""
    t = thresholds or GateThresholds()
    listed = set(recs["user_id"].unique())
    empty = int((~users.isin(listed)).sum())
    dups = int(recs.duplicated(["user_id", "item_id"]).sum())
    available = items.loc[items["in_stock"] & items["visible"], "item_id"]
    unavailable = int((~recs["item_id"].isin(available)).sum())
    coverage = recs["item_id"].nunique() / max(len(available), 1)
    fallback = float(recs["source"].isin(fallback_sources).mean()) if len(recs) else 1.0
    churn = None
    if live is not None and len(live):
        a = recs.groupby("user_id")["item_id"].apply(frozenset)
        b = live.groupby("user_id")["item_id"].apply(frozenset)
        common = a.index.intersection(b.index)
        if len(common):
            jac = [len(a[u] & b[u]) / max(len(a[u] | b[u]), 1) for u in common]
            churn = 1.0 - sum(jac) / len(jac)
    figures = {"users": int(len(users)), "rows": int(len(recs)), "empty_lists": empty, "duplicate_items": dups,
               "unavailable_items": unavailable, "coverage": round(coverage, 4),
               "fallback_share": round(fallback, 4), "churn": None if churn is None else round(churn, 4),
               "thresholds": asdict(t)}
    failed = []
    if empty > t.max_empty_lists:
        failed.append(f"{empty} users have an empty list (max {t.max_empty_lists})")
    if dups > t.max_duplicate_items:
        failed.append(f"{dups} duplicate items within lists (max {t.max_duplicate_items})")
    if unavailable > t.max_unavailable_items:
        failed.append(f"{unavailable} out-of-stock or invisible items (max {t.max_unavailable_items})")
    if coverage < t.min_coverage:
        failed.append(f"catalogue coverage {coverage:.4f} < {t.min_coverage}")
    if fallback > t.max_fallback_share:
        failed.append(f"fallback share {fallback:.3f} > {t.max_fallback_share}")
    if churn is not None and churn > t.max_churn:
        failed.append(f"churn against the live run {churn:.3f} > {t.max_churn}")
    if failed:
        raise QualityGateFailed("output quality gate refused the run: " + "; ".join(failed),
                                "the run's lists in RERANK_HOME/runs/<run_id>/recs.parquet; the live run stays")
    return figures
