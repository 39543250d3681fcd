"""Recall's fusion priors chosen on the ranker's holdout day (``RERANK_TUNE_PRIORS``).

The holdout's candidates carry each source's score and which sources proposed them, so recall's own order
under other priors is a re-fusion (:func:`pipeline.recall.candidates.noisy_or`), not a new recall. A coordinate
ascent over :data:`GRID` runs on one half of the labelled users (drawn from the run's seed); the other half
judges: the tuned priors replace the configured ones only when a paired bootstrap there shows them better at
the gate's confidence. So a holdout of a few users (a ratings dump's last day) keeps the configured priors,
and what is adopted was shown on users the search never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.metrics import paired_lower_bound
from pipeline.rank.data import Window, user_sample
from pipeline.recall.candidates import SCORE_COLUMNS, SOURCES, noisy_or, prior_vector, source_logs, source_terms

#: Values each source's prior may take (every prior lies in (0, 1]).
GRID: tuple[float, ...] = (0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class PriorTuning:
    """``priors``: what recall uses from now on (the configured overrides when not ``adopted``)."""

    priors: dict[str, float]
    adopted: bool
    report: dict


class _Holdout:
    """The labelled users' candidates laid out per user (item ids ascending) for fast nDCG@k of any priors."""

    def __init__(self, hold: Window, users: np.ndarray, k: int) -> None:
        cand = hold.candidates
        cand = cand[cand["user_id"].isin(users)].sort_values(["user_id", "item_id"], kind="stable")
        self.users, self.k = users, k
        self.terms = source_terms(cand[SCORE_COLUMNS].to_numpy(dtype="float64"),
                                  cand["source_mask"].to_numpy(dtype="int64"))
        u = np.searchsorted(users, cand["user_id"].to_numpy(dtype="int64"))
        starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1] if len(u) else np.zeros(0, dtype="int64")
        sizes = np.diff(np.r_[starts, len(u)])
        self.row_user = u
        self.row_pos = np.arange(len(u)) - np.repeat(starts, sizes)
        self.width = int(sizes.max(initial=1))
        labels = hold.labels[hold.labels["user_id"].isin(users)].drop_duplicates()
        n_rel = np.bincount(np.searchsorted(users, labels["user_id"].to_numpy(dtype="int64")),
                            minlength=len(users))
        ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(2.0 + np.arange(k)))])
        self.idcg = ideal[np.minimum(n_rel, k)]
        key = pd.MultiIndex.from_arrays([cand["user_id"].to_numpy(), cand["item_id"].to_numpy()])
        hit = key.isin(pd.MultiIndex.from_arrays([labels["user_id"].to_numpy(), labels["item_id"].to_numpy()]))
        self.hit_rows = np.flatnonzero(hit)

    def ndcg(self, prior: np.ndarray) -> np.ndarray:
        """nDCG@k per user (0 without candidates) of recall's order under ``prior``; ties by item id."""
        return self.ndcg_of(noisy_or(self.terms, prior))

    def ndcg_of(self, p: np.ndarray) -> np.ndarray:
        """nDCG@k per user of the rows ordered by ``p`` (rows as laid out here)."""
        grid = np.full((len(self.users), self.width), -np.inf)
        grid[self.row_user, self.row_pos] = p
        hu, hp, hv = self.row_user[self.hit_rows], self.row_pos[self.hit_rows], p[self.hit_rows]
        rows = grid[hu]
        rank = (rows > hv[:, None]).sum(axis=1) + ((rows == hv[:, None])
                                                   & (np.arange(self.width) < hp[:, None])).sum(axis=1)
        gain = np.where(rank < self.k, 1.0 / np.log2(rank + 2.0), 0.0)
        dcg = np.bincount(hu, weights=gain, minlength=len(self.users))
        return np.divide(dcg, self.idcg, out=np.zeros_like(dcg), where=self.idcg > 0)


def _ascend(search: _Holdout, start: np.ndarray, grid: tuple[float, ...], sweeps: int) -> tuple[np.ndarray, float]:
    """Coordinate ascent from ``start``: each proposing source's prior in turn takes the grid value with the best
    mean nDCG (the first of equals), until a sweep moves nothing. One source's log-space addend changes per
    trial, so a trial costs one column, not the whole noisy-or."""
    present = [j for j in range(search.terms.shape[1]) if search.terms[:, j].any()]
    best = start.copy()
    total = np.zeros(len(search.terms))
    for j in present:
        total += source_logs(search.terms[:, j], float(best[j]))
    best_score = float(search.ndcg_of(1.0 - np.exp(total)).mean())
    for _ in range(sweeps):
        moved = False
        for j in present:
            rest = total - source_logs(search.terms[:, j], float(best[j]))
            for v in grid:
                if v == best[j]:
                    continue
                trial = rest + source_logs(search.terms[:, j], v)
                score = float(search.ndcg_of(1.0 - np.exp(trial)).mean())
                if score > best_score + 1e-12:
                    best[j], best_score, total, moved = v, score, trial, True
        if not moved:
            break
    return best, best_score


def tune_priors(hold: Window, base: dict[str, float] | None, *, confidence: float, seed: int, k: int = 10,
                min_users: int = 200, sweeps: int = 2, grid: tuple[float, ...] = GRID) -> PriorTuning:
    """Recall's priors for this run: ``base`` (RERANK_RECALL_PRIORS over the defaults), or priors searched on
    half of ``hold``'s labelled users when the other half shows them better (see the module docstring).

    ``min_users``: fewer labelled users with a candidate keep ``base`` without a search."""
    base = dict(base or {})
    keep = {"priors": base, "base": {s: float(v) for s, v in zip(SOURCES, prior_vector(base), strict=True)}}
    cand = hold.candidates
    if "source_mask" not in cand.columns or not len(hold.labels):
        return PriorTuning(base, False, {**keep, "reason": "no labelled holdout candidates"})
    users = np.unique(np.intersect1d(hold.labels["user_id"].to_numpy(dtype="int64"),
                                     cand["user_id"].to_numpy(dtype="int64")))
    if len(users) < min_users:
        return PriorTuning(base, False, {**keep, "users": int(len(users)),
                                         "reason": f"{len(users)} labelled holdout users (< {min_users})"})
    search_users = user_sample(users, len(users) // 2, seed + 1)
    judge_users = np.setdiff1d(users, search_users)
    search, judge = _Holdout(hold, search_users, k), _Holdout(hold, judge_users, k)
    start = prior_vector(base).copy()
    best, best_score = _ascend(search, start, grid, sweeps)
    judged_base = pd.Series(judge.ndcg(start), index=judge_users)
    judged_best = pd.Series(judge.ndcg(best), index=judge_users)
    lower = paired_lower_bound(judged_best, judged_base, confidence=confidence, seed=seed)
    tuned = {s: float(v) for s, v in zip(SOURCES, best, strict=True)}
    adopted = bool(lower > 0 and not np.array_equal(best, start))
    report = {**keep, "tuned": tuned, "users": int(len(users)), "search_users": int(len(search_users)),
              f"search_ndcg@{k}": round(float(search.ndcg(start).mean()), 6),
              f"search_tuned_ndcg@{k}": round(best_score, 6),
              f"judge_ndcg@{k}": round(float(judged_base.mean()), 6),
              f"judge_tuned_ndcg@{k}": round(float(judged_best.mean()), 6),
              "gain_lower_bound": round(lower, 6), "confidence": confidence, "adopted": adopted}
    return PriorTuning(tuned if adopted else base, adopted, report)
