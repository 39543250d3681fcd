"""The output quality gate: a run is published only when its lists pass every check.

Pure pandas over the run's lists; the caller decides what to do with a failure (keep the live run).
A run's lists on disk are checked part by part (:func:`check_parts`): each part is reduced to additive
figures (counts, sums, the sets of listed users and items), on Dask workers when a client is given, and
the combined figures are judged exactly as :func:`check_output` judges one frame.
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

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
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
    from pipeline.metrics import intra_list_diversity

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


def _available(items: pd.DataFrame) -> pd.Series:
    return items.loc[items["in_stock"].fillna(False).astype(bool) & items["visible"].fillna(False).astype(bool),
                     "item_id"]


def _frame_figures(recs: pd.DataFrame, *, users: pd.Series, items: pd.DataFrame, t: GateThresholds,
                   live: pd.DataFrame | None, fallback_sources: tuple[str, ...],
                   item_embeddings: tuple[np.ndarray, np.ndarray] | None, top_n: int | None,
                   exhausted: pd.Series | None) -> dict:
    """The gate's figures over one frame holding every list (small runs, and the reference of the streamed
    path: :func:`check_parts` must give the same figures)."""
    listed = set(recs["user_id"].unique())
    unlisted = ~users.isin(listed)
    spent = unlisted & users.isin(exhausted if exhausted is not None else [])
    empty = int((unlisted & ~spent).sum())
    dups = int(recs.duplicated(["user_id", "item_id"]).sum())
    bad_ranks = _bad_ranks(recs)
    bad_scores = int((~np.isfinite(pd.to_numeric(recs["score"], errors="coerce").to_numpy(dtype="float64"))).sum()) \
        if "score" in recs else 0
    available = _available(items)
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
    return figures


def _judge(figures: dict, t: GateThresholds, *, top_n: int | None, n_available: int, nothing_live: bool) -> dict:
    """Compare the figures with the thresholds; raise QualityGateFailed naming every failed check."""
    failed: dict[str, str] = {}
    f = figures
    if f["empty_lists"] > t.max_empty_lists:
        failed["empty_lists"] = f"{f['empty_lists']} users have an empty list (max {t.max_empty_lists})"
    if f["duplicate_items"] > t.max_duplicate_items:
        failed["duplicate_items"] = (f"{f['duplicate_items']} duplicate items within lists "
                                     f"(max {t.max_duplicate_items})")
    if f["bad_ranks"] > t.max_bad_ranks:
        failed["bad_ranks"] = f"{f['bad_ranks']} users whose ranks are not 1..n (max {t.max_bad_ranks})"
    if f["bad_scores"] > t.max_bad_scores:
        failed["bad_scores"] = f"{f['bad_scores']} rows with a NaN or infinite score (max {t.max_bad_scores})"
    if f["long_lists"] > t.max_long_lists:
        failed["long_lists"] = (f"{f['long_lists']} users have more than top_n={top_n} rows "
                                f"(max {t.max_long_lists})")
    if f["short_lists"] > t.max_short_share:
        failed["short_lists"] = (f"{f['short_lists']:.1%} of the listed users have fewer than "
                                 f"{min(top_n or 0, n_available)} rows (max {t.max_short_share:.0%})")
    if f["unavailable_items"] > t.max_unavailable_items:
        failed["unavailable_items"] = (f"{f['unavailable_items']} out-of-stock or invisible items "
                                       f"(max {t.max_unavailable_items})")
    if f["missing_reasons"] > t.max_missing_reasons:
        failed["missing_reasons"] = f"{f['missing_reasons']} rows without a reason (max {t.max_missing_reasons})"
    if f["coverage"] < t.min_coverage:
        failed["coverage"] = f"catalogue coverage {f['coverage']:.4f} < {t.min_coverage}"
    figures["fallback_share_enforced"] = not nothing_live
    if f["fallback_share"] > t.max_fallback_share and not nothing_live:
        failed["fallback_share"] = f"fallback share {f['fallback_share']:.3f} > {t.max_fallback_share}"
    diversity = f["diversity"]
    if t.min_diversity > 0 and (diversity is None or diversity < t.min_diversity):
        shown = "n/a" if diversity is None else f"{diversity:.3f}"
        failed["diversity"] = f"intra-list diversity@{t.diversity_k} {shown} < {t.min_diversity}"
    if f["churn"] is not None and f["churn"] > t.max_churn:
        failed["churn"] = f"churn against the live run {f['churn']:.3f} > {t.max_churn}"
    if failed:
        exc = QualityGateFailed("output quality gate refused the run: "
                                + "; ".join(f"[{k}] {v}" for k, v in failed.items()),
                                "the run's lists in RERANK_HOME/runs/<run_id>/recs/; the live run stays")
        exc.failed_checks = list(failed)  # type: ignore[attr-defined]
        exc.figures = figures  # type: ignore[attr-defined]
        raise exc
    return figures


def check_output(recs: pd.DataFrame, *, users: pd.Series, items: pd.DataFrame,
                 thresholds: GateThresholds | dict | None = None, live: pd.DataFrame | None = None,
                 fallback_sources: tuple[str, ...] = ("popularity",),
                 item_embeddings: tuple[np.ndarray, np.ndarray] | None = None,
                 top_n: int | None = None, nothing_live: bool = False,
                 exhausted: pd.Series | None = None) -> dict:
    """Measure the run's lists held in one frame; raise QualityGateFailed naming every failed check, else
    return the figures. A run's lists on disk go through :func:`check_parts`, one part at a time.

    ``live``: the live run's (user_id, item_id) rows for the churn check (see ``publish.live_lists``);
    ``top_n``: the run's list length, for the long / short list checks (skipped without it);
    ``nothing_live``: no publication exists yet, so a high fallback share is reported but does not fail;
    ``exhausted``: users the scoring stage found nothing eligible for (reported, not counted as empty).
    """
    t = thresholds if isinstance(thresholds, GateThresholds) else GateThresholds.from_dict(thresholds)
    figures = _frame_figures(recs, users=users, items=items, t=t, live=live, fallback_sources=fallback_sources,
                             item_embeddings=item_embeddings, top_n=top_n, exhausted=exhausted)
    return _judge(figures, t, top_n=top_n, n_available=_available(items).nunique(), nothing_live=nothing_live)


# --- the streamed gate: figures reduced per part, then combined ------------------------------------------

#: Live rows for a set of users: a frame of (user_id, item_id), e.g. ``publish.swap.LiveRows``.
LiveSource = Callable[[np.ndarray], pd.DataFrame]


@dataclass(frozen=True)
class PartContext:
    """What every part's reduction needs besides its rows: catalogue-sized, the same for every part."""

    available: np.ndarray  # item ids in stock and visible
    items: pd.DataFrame  # item_id (+ category) for diversity over categories
    #: (ids, matrix), or the path of the run's ``item_embeddings.parquet``, read once per process where used
    item_embeddings: tuple[np.ndarray, np.ndarray] | str | None
    diversity_k: int
    top_n: int | None
    short_below: int  # a list shorter than this is short: min(top_n, available items)
    fallback_sources: tuple[str, ...]


def _vectors(emb: tuple[np.ndarray, np.ndarray] | str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The item vectors of a :class:`PartContext`: a path is read once per process and file version."""
    if not isinstance(emb, str):
        return emb
    p = Path(emb)
    return _vectors_at(emb, p.stat().st_mtime_ns if p.exists() else 0)


@lru_cache(maxsize=1)
def _vectors_at(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
    from pipeline.rerank import load_item_embeddings

    return load_item_embeddings(path)


def release_caches() -> None:
    """Forget the item vectors the gate read in this process."""
    _vectors_at.cache_clear()


def _diversity_users(recs: pd.DataFrame, ctx: PartContext, emb: tuple[np.ndarray, np.ndarray] | None) -> int:
    """Users whose diversity enters the mean: at least two of their top ``k`` items have a vector."""
    from pipeline.metrics import ordered_top_k

    top = ordered_top_k(recs, ctx.diversity_k)
    ids = emb[0] if emb is not None else ctx.items["item_id"].to_numpy()
    known = top["item_id"].isin(ids)
    return int((known.groupby(top["user_id"].to_numpy()).sum() >= 2).sum())


def part_figures(recs: pd.DataFrame, ctx: PartContext, live: pd.DataFrame | LiveSource | None = None) -> dict:
    """Additive figures of one part (complete lists of users no other part holds): counts, sums and the
    sets of listed users and items, so that :func:`combine_figures` gives the whole run's figures."""
    users = np.unique(recs["user_id"].to_numpy(dtype="int64"))
    out: dict[str, Any] = {"user_ids": users, "item_ids": np.unique(recs["item_id"].to_numpy(dtype="int64")),
                           "rows": len(recs), "duplicate_items": int(recs.duplicated(["user_id", "item_id"]).sum()),
                           "bad_ranks": _bad_ranks(recs), "long_lists": 0, "short_users": 0,
                           "div_sum": 0.0, "div_n": 0, "churn_sum": 0.0, "churn_n": 0, "variants": {}}
    out["bad_scores"] = int((~np.isfinite(pd.to_numeric(recs["score"], errors="coerce")
                                          .to_numpy(dtype="float64"))).sum()) if "score" in recs else 0
    out["unavailable_items"] = int((~recs["item_id"].isin(ctx.available)).sum())
    out["missing_reasons"] = int((recs["reason"].isna() | (recs["reason"].astype(str).str.strip() == "")).sum()) \
        if "reason" in recs else len(recs)
    out["fallback_rows"] = int(recs["source"].isin(ctx.fallback_sources).sum())
    if not len(recs):
        return out
    if ctx.top_n is not None:
        length = recs.groupby("user_id").size()
        out["long_lists"] = int((length > ctx.top_n).sum())
        out["short_users"] = int((length < ctx.short_below).sum())
    emb = _vectors(ctx.item_embeddings)
    d = list_diversity(recs, ctx.items, ctx.diversity_k, emb)
    if d is not None:  # the part's mean over its users, weighted back into a sum
        n = _diversity_users(recs, ctx, emb)
        out["div_sum"], out["div_n"] = (1.0 - d) * n, n
    if live is not None:
        rows = live(users) if callable(live) else live[live["user_id"].isin(users)]
        if len(rows):
            common = len(np.intersect1d(users, rows["user_id"].unique()))
            c = churn_against(recs, rows)
            if c is not None:
                out["churn_sum"], out["churn_n"] = (1.0 - c) * common, common
    if "variant" in recs:
        out["variants"] = {str(k): int(v) for k, v in recs.groupby("variant")["user_id"].nunique().items()}
    return out


def combine_figures(parts: list[dict]) -> dict:
    """Sum the parts' figures and unite their sets (parts hold disjoint users, so per-user counts add)."""
    total: dict[str, Any] = {"rows": 0, "duplicate_items": 0, "bad_ranks": 0, "bad_scores": 0, "long_lists": 0,
                             "short_users": 0, "unavailable_items": 0, "missing_reasons": 0, "fallback_rows": 0,
                             "div_sum": 0.0, "div_n": 0, "churn_sum": 0.0, "churn_n": 0, "variants": {}}
    user_ids, item_ids = [np.zeros(0, "int64")], [np.zeros(0, "int64")]
    for p in parts:
        for k in total:
            if k != "variants":
                total[k] += p[k]
        for v, n in p["variants"].items():
            total["variants"][v] = total["variants"].get(v, 0) + n
        user_ids.append(p["user_ids"])
        item_ids.append(p["item_ids"])
    total["user_ids"] = np.unique(np.concatenate(user_ids))
    total["item_ids"] = np.unique(np.concatenate(item_ids))
    return total


def _figures_from_totals(total: dict, *, users: pd.Series, exhausted: pd.Series | None, n_available: int,
                         t: GateThresholds, top_n: int | None) -> dict:
    unlisted = ~users.isin(total["user_ids"])
    spent = unlisted & users.isin(exhausted if exhausted is not None else [])
    rows, listed = total["rows"], len(total["user_ids"])
    short_share = total["short_users"] / listed if top_n is not None and rows and listed else 0.0
    diversity = 1.0 - total["div_sum"] / total["div_n"] if total["div_n"] else None
    churn = 1.0 - total["churn_sum"] / total["churn_n"] if total["churn_n"] else None
    figures = {"users": int(len(users)), "rows": int(rows), "empty_lists": int((unlisted & ~spent).sum()),
               "exhausted_users": int(spent.sum()), "duplicate_items": total["duplicate_items"],
               "bad_ranks": total["bad_ranks"], "bad_scores": total["bad_scores"], "long_lists": total["long_lists"],
               "short_lists": round(short_share, 4), "unavailable_items": total["unavailable_items"],
               "missing_reasons": total["missing_reasons"],
               "coverage": round(len(total["item_ids"]) / max(n_available, 1), 4),  # item ids are unique
               "fallback_share": round(total["fallback_rows"] / rows, 4) if rows else 1.0,
               "diversity": None if diversity is None else round(diversity, 4),
               "churn": None if churn is None else round(churn, 4), "thresholds": asdict(t)}
    if total["variants"]:
        figures["variants"] = dict(total["variants"])
    return figures


def _same(x: object) -> object:
    return x


def _part_figures_at(path: str, ctx: PartContext, live: pd.DataFrame | LiveSource | None) -> dict:
    """One Dask task (or loop step): read one part, reduce it, let it go."""
    return part_figures(pd.read_parquet(path), ctx, live)


def check_parts(parts: list[Path] | list[pd.DataFrame], *, users: pd.Series, items: pd.DataFrame,
                thresholds: GateThresholds | dict | None = None, live: pd.DataFrame | LiveSource | None = None,
                fallback_sources: tuple[str, ...] = ("popularity",),
                item_embeddings: tuple[np.ndarray, np.ndarray] | str | Path | None = None,
                top_n: int | None = None, nothing_live: bool = False, exhausted: pd.Series | None = None,
                client: object | None = None) -> dict:
    """:func:`check_output` over a run's lists in parts (Parquet paths, or frames), one part in memory at a
    time: each part is reduced to additive figures (on the Dask ``client``'s workers when given, else in a
    loop here), and the figures are combined and judged. Memory follows the part size and the catalogue,
    not the number of users' lists.

    ``live``: the live rows as a frame, or a callable giving the live rows of a part's users (the whole live
    table is never read at once). ``item_embeddings``: (ids, matrix), or the path of an
    ``item_embeddings.parquet`` that each process reads once (a missing file: diversity over categories).
    """
    t = thresholds if isinstance(thresholds, GateThresholds) else GateThresholds.from_dict(thresholds)
    available = _available(items)
    n_available = available.nunique()
    if isinstance(item_embeddings, Path | str):
        item_embeddings = str(item_embeddings) if Path(item_embeddings).exists() else None
    ctx = PartContext(available=np.unique(available.to_numpy(dtype="int64")),
                      items=items[[c for c in ("item_id", "category") if c in items]],
                      item_embeddings=item_embeddings, diversity_k=t.diversity_k, top_n=top_n,
                      short_below=min(top_n, n_available) if top_n is not None else 0,
                      fallback_sources=tuple(fallback_sources))
    paths = [p for p in parts if not isinstance(p, pd.DataFrame)]
    if client is not None and paths and len(paths) == len(parts):
        # The context as a task, not scattered data: a worker lost mid-gate (a restart) has it recomputed,
        # where scattered data is gone for good ("already forgotten").
        shared = client.submit(_same, ctx, pure=False)  # type: ignore[attr-defined]
        futures = client.map(_part_figures_at, [str(p) for p in paths], ctx=shared, live=live,  # type: ignore[attr-defined]
                             pure=False)
        reduced = client.gather(futures)  # type: ignore[attr-defined]
    else:
        reduced = [part_figures(p, ctx, live) if isinstance(p, pd.DataFrame) else _part_figures_at(str(p), ctx, live)
                   for p in parts]
    figures = _figures_from_totals(combine_figures(reduced), users=users, exhausted=exhausted,
                                   n_available=n_available, t=t, top_n=top_n)
    return _judge(figures, t, top_n=top_n, n_available=n_available, nothing_live=nothing_live)
