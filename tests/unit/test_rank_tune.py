"""Recall's priors chosen on the holdout day (pipeline.rank.tune) and the re-fusion they rest on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.rank.data import Window
from pipeline.rank.stage import per_user_ndcg
from pipeline.rank.tune import _Holdout, tune_priors
from pipeline.recall.candidates import (
    SCORE_COLUMNS,
    SOURCE_PRIOR,
    _merge,
    noisy_or,
    prior_vector,
    source_masks,
    source_terms,
)

CUT = datetime(2026, 11, 20, tzinfo=UTC)


def _raw(seed: int, users: int = 50) -> pd.DataFrame:
    """Candidate rows of several sources, with repeats of an item by one source and across sources."""
    rng = np.random.default_rng(seed)
    n = users * 40
    src = rng.choice(["item-cf", "als", "seq", "popularity", "content"], size=n)
    return pd.DataFrame({"user_id": rng.integers(0, users, n), "item_id": rng.integers(0, 60, n), "source": src,
                         "recall_score": rng.random(n), "anchor_item_id": np.nan})


@pytest.mark.parametrize("priors", [None, {"als": 0.2, "popularity": 1.0, "seq": 0.05}])
def test_refusing_the_merges_per_source_scores_gives_its_p_recall(priors: dict | None) -> None:
    out = _merge(_raw(1), 300, priors=priors)
    terms = source_terms(out[SCORE_COLUMNS].to_numpy(dtype="float64"), source_masks(out["sources"]))
    assert noisy_or(terms, prior_vector(priors)) == pytest.approx(out["p_recall"].to_numpy(), rel=1e-6, abs=1e-9)
    # under other priors, the same as merging again with them (the candidate set kept at every row)
    other = {"als": 0.9, "item-cf": 0.1}
    again = _merge(_raw(1), 300, priors=other).set_index(["user_id", "item_id"])["p_recall"]
    mine = pd.Series(noisy_or(terms, prior_vector(other)), index=pd.MultiIndex.from_frame(out[["user_id", "item_id"]]))
    assert mine.to_numpy() == pytest.approx(again.reindex(mine.index).to_numpy(), rel=1e-6)


def _holdout(users: int, *, informative: bool, seed: int = 0) -> Window:
    """Each user has 30 candidates: 15 from als, 15 from popularity (popular items score high). With
    ``informative``, the label is the user's best als item; else a random candidate."""
    rng = np.random.default_rng(seed)
    rows = []
    labels = []
    for u in range(users):
        als_items = rng.choice(np.arange(0, 500), 15, replace=False)
        pop_items = np.arange(1000, 1015)
        als_score, pop_score = rng.random(15), 0.5 + 0.5 * rng.random(15)
        for it, sc in zip(als_items, als_score, strict=True):
            rows.append((u, it, "als", sc))
        for it, sc in zip(pop_items, pop_score, strict=True):
            rows.append((u, it, "popularity", sc))
        target = als_items[int(np.argmax(als_score))] if informative else rng.choice(
            np.r_[als_items, pop_items])
        labels.append((u, int(target)))
    raw = pd.DataFrame(rows, columns=["user_id", "item_id", "source", "recall_score"]).assign(anchor_item_id=np.nan)
    base = {"popularity": 1.0, "als": 0.35}
    cand = _merge(raw, 30, priors=base)
    cand["source_mask"] = source_masks(cand["sources"]).astype("int16")
    lab = pd.DataFrame(labels, columns=["user_id", "item_id"])
    return Window(cutoff=CUT, end=CUT + timedelta(days=1), labels=lab, touched=lab,
                  candidates=cand.drop(columns=["sources", "anchor_item_id"]),
                  history=pd.DataFrame({"user_id": [], "item_id": [], "ts": []}))


def test_the_holdouts_ndcg_of_the_base_priors_is_the_gates_recall_only_figure() -> None:
    win = _holdout(300, informative=True)
    users = np.arange(300)
    mine = _Holdout(win, users, 10).ndcg(prior_vector({"popularity": 1.0, "als": 0.35}))
    gate = per_user_ndcg(None, win, pd.DataFrame({"item_id": []})).reindex(users)
    assert mine == pytest.approx(gate.to_numpy(), abs=1e-9)


def test_priors_are_adopted_when_the_judging_half_shows_them_better() -> None:
    win = _holdout(600, informative=True)
    t = tune_priors(win, {"popularity": 1.0, "als": 0.35}, confidence=0.9, seed=3)
    assert t.adopted
    assert t.priors["als"] > t.priors["popularity"]
    r = t.report
    assert r["judge_tuned_ndcg@10"] > r["judge_ndcg@10"] and r["gain_lower_bound"] > 0
    assert r["search_users"] == 300
    # deterministic: the same holdout and seed choose the same priors
    assert tune_priors(win, {"popularity": 1.0, "als": 0.35}, confidence=0.9, seed=3).priors == t.priors


def test_labels_no_source_predicts_keep_the_configured_priors() -> None:
    win = _holdout(600, informative=False, seed=5)
    t = tune_priors(win, {"popularity": 1.0, "als": 0.35}, confidence=0.9, seed=3)
    assert not t.adopted
    assert t.priors == {"popularity": 1.0, "als": 0.35}
    assert t.report["gain_lower_bound"] <= 0


def test_a_small_holdout_keeps_the_configured_priors_without_a_search() -> None:
    win = _holdout(40, informative=True)
    t = tune_priors(win, None, confidence=0.9, seed=3)
    assert not t.adopted and t.priors == {}
    assert "40 labelled holdout users" in t.report["reason"]
    assert t.report["base"] == {s: pytest.approx(v) for s, v in SOURCE_PRIOR.items()}
