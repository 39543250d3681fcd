"""Exact, hand-computed tests of the ranking and beyond-accuracy metrics (MSR definitions)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import metrics as M

L2_3 = 1 / math.log2(3)


def frame(rows: list[tuple], cols: tuple[str, ...] = ("user_id", "item_id", "rank")) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(cols))


@pytest.fixture
def truth() -> pd.DataFrame:
    # user 1 has three relevant items, user 2 one
    return frame([(1, "a"), (1, "b"), (1, "c"), (2, "d")], ("user_id", "item_id"))


@pytest.fixture
def recs() -> pd.DataFrame:
    # user 1: hit at 1 and 3; user 2: no hit; user 9 is not in truth and must be ignored
    return frame([(1, "a", 1), (1, "x", 2), (1, "b", 3), (2, "y", 1), (2, "z", 2), (9, "a", 1)])


def test_hand_computed_k3(truth: pd.DataFrame, recs: pd.DataFrame) -> None:
    r = M.ranking_metrics(truth, recs, k=3)
    ndcg_u1 = (1 + 0.5) / (1 + L2_3 + 0.5)
    assert r["precision"] == pytest.approx((2 / 3) / 2)
    assert r["recall"] == pytest.approx((2 / 3) / 2)
    assert r["hr"] == pytest.approx(0.5)
    assert r["mrr"] == pytest.approx(0.5)
    assert r["ndcg"] == pytest.approx(ndcg_u1 / 2)
    assert r["map"] == pytest.approx(((1 / 1 + 2 / 3) / 3) / 2)


def test_k_larger_than_list(truth: pd.DataFrame, recs: pd.DataFrame) -> None:
    r = M.ranking_metrics(truth, recs, k=10)
    assert r["precision"] == pytest.approx((2 / 10) / 2)  # MSR divides by k, not by the list length
    assert r["ndcg"] == pytest.approx(((1 + 0.5) / (1 + L2_3 + 0.5)) / 2)  # idcg over min(3, 10) items
    assert r["map"] == pytest.approx(((1 + 2 / 3) / 3) / 2)  # normalised by min(n_relevant, k)


def test_k_smaller_than_relevant(truth: pd.DataFrame, recs: pd.DataFrame) -> None:
    per = M.per_user_ranking(truth, recs, k=1).set_index("user_id")
    assert per.loc[1, "precision"] == 1.0
    assert per.loc[1, "recall"] == pytest.approx(1 / 3)
    assert per.loc[1, "ndcg"] == pytest.approx(1.0)  # idcg over min(3, 1) = 1 position
    assert per.loc[1, "map"] == pytest.approx(1.0)  # 1 / min(3, 1)
    assert list(per.index) == [1, 2]


def test_empty_inputs(truth: pd.DataFrame, recs: pd.DataFrame) -> None:
    zero = dict.fromkeys(M.RANKING_METRICS, 0.0)
    assert M.ranking_metrics(truth, recs.iloc[0:0], k=5) == zero
    assert M.ranking_metrics(truth.iloc[0:0], recs, k=5) == zero
    assert M.ndcg_at_k(truth, frame([(3, "a", 1)]), k=5) == 0.0  # no common user


def test_ties_keep_row_order_when_no_rank() -> None:
    truth = frame([(1, "a")], ("user_id", "item_id"))
    recs = frame([(1, "x", 0.5), (1, "a", 0.5), (1, "z", 0.1)], ("user_id", "item_id", "score"))
    assert M.mrr_at_k(truth, recs, k=3) == pytest.approx(0.5)
    assert M.ndcg_at_k(truth, recs, k=3) == pytest.approx(L2_3)
    assert M.hr_at_k(truth, recs, k=1) == 0.0


def test_wrappers_and_duplicates(truth: pd.DataFrame, recs: pd.DataFrame) -> None:
    dup = pd.concat([recs, recs.iloc[[0]].assign(rank=4)])  # a repeated item counts once
    assert M.precision_at_k(truth, dup, 3) == pytest.approx(1 / 3)
    assert M.recall_at_k(truth, recs, 3) == pytest.approx(1 / 3)
    assert M.map_at_k(truth, recs, 3) == pytest.approx(((1 + 2 / 3) / 3) / 2)
    with pytest.raises(ValueError, match="missing column"):
        M.ranking_metrics(truth.rename(columns={"item_id": "sku"}), recs, 3)
    with pytest.raises(ValueError, match="k must be"):
        M.ranking_metrics(truth, recs, 0)


def _loop_reference(truth: pd.DataFrame, recs: pd.DataFrame, k: int) -> dict[str, float]:
    """Direct transcription of the definitions, one user at a time."""
    out = {m: [] for m in M.RANKING_METRICS}
    for u, g in recs.sort_values(["user_id", "rank"]).groupby("user_id"):
        rel = set(truth.loc[truth.user_id == u, "item_id"])
        if not rel:
            continue
        lst = list(g.item_id)[:k]
        hits = [i in rel for i in lst]
        dcg = sum(1 / math.log2(p + 2) for p, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(p + 2) for p in range(min(len(rel), k)))
        ap, n = 0.0, 0
        for p, h in enumerate(hits):
            if h:
                n += 1
                ap += n / (p + 1)
        first = next((p + 1 for p, h in enumerate(hits) if h), None)
        out["ndcg"].append(dcg / idcg)
        out["map"].append(ap / min(len(rel), k))
        out["precision"].append(sum(hits) / k)
        out["recall"].append(sum(hits) / len(rel))
        out["hr"].append(float(any(hits)))
        out["mrr"].append(1 / first if first else 0.0)
    return {m: float(np.mean(v)) for m, v in out.items()}


def test_matches_per_user_loop_on_random_data() -> None:
    rng = np.random.default_rng(0)
    truth = pd.DataFrame({"user_id": rng.integers(0, 50, 400), "item_id": rng.integers(0, 60, 400)})
    truth = truth.drop_duplicates()
    recs = pd.DataFrame({"user_id": np.repeat(np.arange(55), 15), "item_id": rng.integers(0, 60, 55 * 15)})
    recs = recs.drop_duplicates(["user_id", "item_id"])
    recs["rank"] = recs.groupby("user_id").cumcount() + 1
    got = M.ranking_metrics(truth, recs, k=10)
    want = _loop_reference(truth, recs, 10)
    assert got == pytest.approx(want)


def test_expected_rank_and_single_target() -> None:
    scores = np.array([[3.0, 1.0, 1.0, 1.0, 0.0]])
    cand = np.ones_like(scores, dtype=bool)
    # 1 + one higher + two tied / 2
    assert M.expected_rank(np.array([1.0]), scores, cand)[0] == pytest.approx(3.0)
    cand[0, 0] = False  # a history item does not count
    assert M.expected_rank(np.array([1.0]), scores, cand)[0] == pytest.approx(2.0)
    flat = np.zeros((1, 5))  # all equal: the middle, not the top
    assert M.expected_rank(np.zeros(1), flat, np.ones((1, 5), bool))[0] == pytest.approx(3.0)
    r = M.single_target_metrics(np.array([1.0, 3.0, 11.0]), k=10)
    assert r["hr"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["precision"] == pytest.approx(2 / 30)
    assert r["mrr"] == pytest.approx((1 + 1 / 3) / 3)
    assert r["map"] == r["mrr"]
    assert r["ndcg"] == pytest.approx((1 + 0.5) / 3)
    assert M.single_target_metrics(np.array([10.5]), k=10)["hr"] == 0.0  # a tie straddling k is out
    assert M.single_target_metrics(np.zeros(0), k=10) == dict.fromkeys(M.RANKING_METRICS, 0.0)


def test_coverage_novelty_popularity_bias() -> None:
    train = frame([(1, "a"), (1, "b"), (2, "a")], ("user_id", "item_id"))
    recs = frame([(1, "a", 1), (1, "b", 2), (2, "b", 1), (2, "q", 2)])
    assert M.catalog_coverage(recs, 10, k=10) == pytest.approx(3 / 10)
    assert M.catalog_coverage(recs, ["a", "b", "a"], k=1) == pytest.approx(2 / 2)
    # popularity: a = 2/2 users, b = 1/2; q unseen in train (skipped for novelty, 0 for bias)
    assert M.novelty(recs, train, k=10) == pytest.approx((0 + 1 + 1) / 3)
    assert M.popularity_bias(recs, train, k=10) == pytest.approx(((1 + 0.5) / 2 + (0.5 + 0) / 2) / 2)
    curve = M.popularity_curve(recs, train, k=10, bins=2)
    assert curve["train_share"].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert curve["rec_share"].tolist() == pytest.approx([1 / 4, 2 / 4])


def test_intra_list_diversity() -> None:
    cats = pd.Series({"a": "A", "b": "A", "c": "B", "d": "A|B"})
    recs = frame([(1, "a", 1), (1, "b", 2), (1, "c", 3), (2, "a", 1), (2, "d", 2), (3, "a", 1)])
    ild = M.intra_list_diversity(recs, 10, item_categories=cats)
    assert ild == pytest.approx(((1 - 1 / 3) + (1 - 1 / math.sqrt(2))) / 2)  # user 3 (one item) skipped
    emb = (np.array(["e1", "e2", "e3"]), np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    r2 = frame([(1, "e1", 1), (1, "e2", 2), (1, "e3", 3)])
    assert M.intra_list_diversity(r2, 10, item_embeddings=emb) == pytest.approx(1 - (2 / math.sqrt(2)) / 3)
    assert math.isnan(M.intra_list_diversity(r2, 1, item_embeddings=emb))  # nobody has two items
    with pytest.raises(ValueError, match="exactly one"):
        M.intra_list_diversity(r2, 3)


def test_segments() -> None:
    train = frame([(1, "a"), (1, "b"), (3, "a"), (3, "c")], ("user_id", "item_id"))
    truth = frame([(1, "c"), (2, "a"), (3, "b")], ("user_id", "item_id"))
    recs = frame([(1, "c", 1), (2, "b", 1), (2, "a", 2), (3, "x", 1)])
    seg = M.segment_metrics(truth, recs, train, k=2, cold_item_max=1).set_index("segment")
    assert seg.loc["all users", "users"] == 3
    assert seg.loc["new users", "users"] == 1
    assert seg.loc["new users", "hr"] == 1.0
    assert seg.loc["returning users", "hr"] == pytest.approx(0.5)
    cold = seg.loc["cold items (<= 1 train rows)"]  # c and b have one train row each
    assert cold["users"] == 2 and cold["hr"] == pytest.approx(0.5)
    assert seg.loc["warm items (> 1 train rows)", "ndcg"] == pytest.approx(L2_3)
