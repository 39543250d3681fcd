"""The gate's "shown better" rule: per-user holdout nDCG and the paired bootstrap's lower bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.rank.data import Window
from pipeline.rank.stage import holdout_metrics, paired_lower_bound, per_user_ndcg

CUT = datetime(2026, 11, 20, tzinfo=UTC)


def _window() -> Window:
    """Users 1-3, two candidates each; user 1's label is its first candidate, user 2's its second, user 3 has
    no candidate for its label, user 4 is labelled without any candidate."""
    cand = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 3], "item_id": [10, 11, 20, 21, 30, 31],
                         "p_recall": [0.9, 0.5, 0.9, 0.5, 0.9, 0.5]})
    labels = pd.DataFrame({"user_id": [1, 2, 3, 4], "item_id": [10, 21, 99, 40]})
    return Window(cutoff=CUT, end=CUT + timedelta(days=1), labels=labels, touched=labels, candidates=cand,
                  history=pd.DataFrame({"user_id": [], "item_id": [], "ts": []}))


def test_per_user_ndcg_counts_every_labelled_user_and_averages_to_the_gate_figure() -> None:
    win = _window()
    per = per_user_ndcg(None, win, pd.DataFrame({"item_id": []}))
    assert per.index.tolist() == [1, 2, 3, 4]
    assert per.tolist() == pytest.approx([1.0, 1 / np.log2(3), 0.0, 0.0])
    assert per.mean() == pytest.approx(holdout_metrics(None, win, pd.DataFrame({"item_id": []}))["ndcg@10"])


def test_the_lower_bound_is_positive_only_for_a_gain_shared_by_many_users() -> None:
    users = pd.RangeIndex(200)
    base = pd.Series(0.2, index=users)
    broad = pd.Series(0.25, index=users)  # every user gains 0.05
    one = base.copy()
    one.iloc[0] = 1.0  # one user gains 0.8: the same mean gain as 0.004 each, but carried by one user
    assert paired_lower_bound(broad, base, confidence=0.9) == pytest.approx(0.05)
    assert paired_lower_bound(one, base, confidence=0.9) <= 0.0 < (one - base).mean()
    # a loss is never shown as a gain; no users, no evidence
    assert paired_lower_bound(base, broad, confidence=0.9) < 0
    assert paired_lower_bound(pd.Series(dtype=float), pd.Series(dtype=float), confidence=0.9) == 0.0
