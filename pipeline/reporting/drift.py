"""Input drift: the population stability index (PSI) between a reference and a current distribution.

``PSI = sum((cur - ref) * ln(cur / ref))`` over shared bins, with empty bins floored at ``EPS`` so that a bin
that appears or vanishes counts strongly but finitely. Usual reading: below 0.1 stable, 0.1-0.25 a shift to
look at (warn), 0.25 and above a shift that changes the model's inputs (alert); the bands are settings
(``RERANK_DRIFT_PSI_WARN`` / ``RERANK_DRIFT_PSI_ALERT``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-4


def psi(reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray) -> float:
    """PSI of two histograms over the same bins (counts or shares; normalised here)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape or not len(ref) or ref.sum() <= 0 or cur.sum() <= 0:
        return float("nan")
    p = np.maximum(ref / ref.sum(), EPS)
    q = np.maximum(cur / cur.sum(), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_categorical(reference: pd.Series, current: pd.Series) -> float:
    """PSI of two samples of labels (bins: the union of the labels)."""
    r, c = reference.value_counts(), current.value_counts()
    keys = r.index.union(c.index)
    return psi(r.reindex(keys, fill_value=0), c.reindex(keys, fill_value=0))


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of two numeric samples over the reference's quantile bins (open-ended at both ends)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if not len(ref) or not len(cur):
        return float("nan")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    return psi(np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1),
               np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1))


def psi_popularity(reference_items: pd.Series, current_items: pd.Series, bins: int = 10) -> float:
    """PSI of where events fall among the reference's item-popularity deciles (items new to the current
    period form a bin of their own): a shift of attention between head and tail items."""
    counts = reference_items.value_counts()
    if counts.empty or current_items.empty:
        return float("nan")
    rank = pd.Series(np.arange(len(counts)), index=counts.index)
    decile = (rank * bins // len(counts)).astype(int)
    ref_bin = reference_items.map(decile)
    cur_bin = current_items.map(decile).fillna(bins).astype(int)
    return psi(np.bincount(ref_bin, minlength=bins + 1), np.bincount(cur_bin, minlength=bins + 1))


def level(value: float, warn: float, alert: float) -> str:
    """``ok``, ``warn`` or ``alert`` for a PSI (``n/a`` when it could not be computed)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return "alert" if value >= alert else "warn" if value >= warn else "ok"
