"""Metrics from the lists as written: the evaluator's top-k and the leave-one-out rank agree on ties."""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.models import top_k_rows
from pipeline.metrics import expected_rank, written_rank


def test_top_k_orders_ties_by_the_second_key_including_at_the_boundary() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]])
    tie = np.array([3, 0, 1, 2, 4])  # among equals: column 2 first, then 3, then 0
    idx, val = top_k_rows(scores, 3, tie)
    assert idx.tolist() == [[1, 2, 3]] and val.tolist() == [[0.9, 0.5, 0.5]]


def test_the_leave_one_out_rank_is_the_position_in_the_written_list() -> None:
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(200, 30)).astype(float)  # heavy ties, as a listwise head gives
    tie = rng.permutation(30)
    target = rng.integers(0, 30, size=200)
    cand = np.ones_like(scores, dtype=bool)
    ranks = written_rank(scores[np.arange(200), target], scores, cand, tie, target)
    idx, _ = top_k_rows(scores, 30, tie)
    pos = np.array([np.flatnonzero(idx[r] == target[r])[0] + 1 for r in range(200)])
    assert (ranks == pos).all()
    # the tie-aware figure differs exactly where the target shares its score
    shared = (scores == scores[np.arange(200), target][:, None]).sum(axis=1) > 1
    assert (expected_rank(scores[np.arange(200), target], scores, cand) != ranks)[shared].any()
    assert (expected_rank(scores[np.arange(200), target], scores, cand) == ranks)[~shared].all()


def test_leave_one_out_from_published_lists_counts_missing_targets_and_users_as_misses() -> None:
    import pandas as pd
    import pytest

    from pipeline.evaluate.runner import _list_loo_metrics

    recs = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [5, 6, 7, 5, 6], "rank": [1, 2, 3, 1, 2],
                         "score": [3.0, 2.0, 1.0, 2.0, 1.0]})
    targets = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [6, 9, 5]})  # user 3 has no list
    m = _list_loo_metrics(recs, targets, 10)
    assert m["hr"] == pytest.approx(1 / 3) and m["ndcg"] == pytest.approx(1 / np.log2(3) / 3)
    assert m["mrr"] == pytest.approx(0.5 / 3)
    assert _list_loo_metrics(recs, targets, 1)["hr"] == 0.0
