"""The listwise head over recall candidates (pipeline.rank.head): candidate packing and features, a
known-answer problem, determinism, out-of-fold scores, and ``pipeline`` using it in the harness."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from test_rank_evaluate import chain_frames

from pipeline.evaluate.runner import evaluate_frames
from pipeline.rank.head import ListwiseHead, candidate_block, cross_fit, ndcg_at, source_top


def test_source_top_is_sorted_and_skips_excluded_items() -> None:
    raw = np.array([[0.1, 5.0, -np.inf, 3.0], [-np.inf, -np.inf, -np.inf, 2.0]], np.float32)
    t = source_top(raw, 3)
    assert t.top[0].tolist() == [1, 3, 0]
    assert t.ok[0].all()
    assert t.top[1][0] == 3 and t.ok[1].tolist() == [True, False, False]


def test_candidate_block_packs_the_union_and_its_features() -> None:
    raw_a = np.array([[9.0, 1.0, 5.0, 0.0, -np.inf]], np.float32)
    raw_b = np.array([[0.0, 0.0, 0.0, 7.0, -np.inf]], np.float32)
    tops = {"a": source_top(raw_a, 2), "b": source_top(raw_b, 1)}
    mask = np.zeros((1, 5), bool)
    mask[0, [0, 2, 3]] = True
    pop = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    logits = np.array([[1.0, 0.0, 3.0, 2.0, 0.0]])
    b = candidate_block(mask, tops, popularity=pop, history_len=np.array([4]), logits=logits)
    assert b.items[0].tolist() == [0, 2, 3] and b.valid.all()
    x = b.x[0]
    # source a: item 0 is its best (scaled 1, rank 0), item 2 its second (scaled 0, rank 1), item 3 off it
    np.testing.assert_allclose(x[:, 0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(x[:, 1], np.log1p([0, 1, 2]))
    # source b recalled item 3 only
    np.testing.assert_allclose(x[:, 4], np.log1p([1, 1, 0]))
    np.testing.assert_allclose(x[:, 6], np.log1p(pop[[0, 2, 3]]), rtol=1e-6)
    np.testing.assert_allclose(x[:, 8], [1, 1, 1])  # number of sources that recalled each
    np.testing.assert_allclose(x[:, 10], [-2.0, 0.0, -1.0])  # logit minus the best candidate's
    assert b.positions(np.array([3])).tolist() == [2] and b.positions(np.array([1])).tolist() == [-1]
    np.testing.assert_allclose(b.take(logits), [[1.0, 3.0, 2.0]])


def _problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The target is the candidate with the largest feature 1 (feature 0 is noise); ragged lists."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 20, 3)).astype(np.float32)
    valid = np.arange(20)[None, :] < rng.integers(5, 21, size=n)[:, None]
    x[~valid] = 0.0
    target = np.where(valid, x[:, :, 1], -np.inf).argmax(1)
    return x, valid, target


def test_head_learns_a_known_answer_and_is_deterministic() -> None:
    x, valid, target = _problem(600, 0)
    head = ListwiseHead(hidden=16, epochs=30, lr=1e-2).fit(x, valid, target)
    xt, vt, tt = _problem(200, 1)
    s = head.score(xt, vt)
    assert np.isneginf(s[~vt]).all()
    assert ndcg_at(s, tt).mean() > 0.9
    # a random scorer's NDCG on the same lists is far lower
    assert ndcg_at(np.where(vt, np.random.default_rng(2).random(vt.shape), -np.inf), tt).mean() < 0.5
    again = ListwiseHead(hidden=16, epochs=30, lr=1e-2).fit(x, valid, target).score(xt, vt)
    np.testing.assert_array_equal(s, again)


def test_cross_fit_scores_each_fold_without_its_own_targets() -> None:
    x, valid, target = _problem(200, 3)
    a = cross_fit(x, valid, target, hidden=8, epochs=3)
    scrambled = target.copy()
    scrambled[::2] = 0  # change fold 0's targets only: fold 0's scores come from fold 1's head
    b = cross_fit(x, valid, scrambled, hidden=8, epochs=3)
    np.testing.assert_array_equal(a[::2], b[::2])
    assert not np.array_equal(a[1::2], b[1::2])


def test_ndcg_at_counts_ties_half_and_misses_as_zero() -> None:
    s = np.array([[3.0, 2.0, 1.0], [1.0, 1.0, 0.0], [1.0, 2.0, 3.0]])
    got = ndcg_at(s, np.array([0, 1, -1]))
    np.testing.assert_allclose(got, [1.0, 1 / np.log2(2.5), 0.0])


def test_pipeline_trains_the_head_on_the_validation_item(tmp_path: Path) -> None:
    frames = chain_frames(60)  # validation B', test C'
    params = {"dim": 16, "layers": 1, "seq_len": 5, "dropout": 0.0, "lr": 0.01, "batch_size": 8, "n_neg": 0,
              "max_epochs": 40, "sources": {"item-cf": {}, "seq-knn": {}, "popularity": {}}, "mmr_lambda": 1.0,
              "head_min_targets": 1, "head_epochs": 20}
    m = evaluate_frames(frames, protocol="leave-one-out", models=["research-stack"], out_dir=tmp_path,
                        dataset="chains", model_params={"research-stack": params})
    res = m["results"][0]
    assert res["hr@10"] == 1.0 and res["ndcg@10"] > 0.9  # C' is fully determined by B'
    tuning = json.loads((tmp_path / "details.json").read_text())["tuning"]["research-stack"]
    assert tuning["head"] == "mlp" and tuning["targets"] == 60
    assert 0.0 <= tuning["valid_ndcg@10_out_of_fold"] <= 1.0


def test_multi_target_ndcg_and_hits() -> None:
    s = np.array([[5.0, 4.0, 3.0, 2.0]])
    hits = np.array([[True, False, True, False]])
    # ranks 0 and 2 of 2 relevant: (1 + 1/log2(4)) / (1 + 1/log2(3))
    want = (1 + 0.5) / (1 + 1 / np.log2(3))
    np.testing.assert_allclose(ndcg_at(s, hits), [want])
    # a third held-out item that is not a candidate still counts in the ideal DCG
    want3 = (1 + 0.5) / (1 + 1 / np.log2(3) + 0.5)
    np.testing.assert_allclose(ndcg_at(s, hits, n_relevant=np.array([3])), [want3])
    tops = {"a": source_top(np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]], np.float32), 2)}
    mask = np.array([[True, True, False], [False, True, True]])
    b = candidate_block(mask, tops, popularity=np.ones(3), history_len=np.array([1, 1]))
    got = b.hits(np.array([0, 0, 1, 1]), np.array([0, 2, 2, 1]))
    assert got.tolist() == [[True, False], [True, True]]  # item 2 is no candidate of row 0


def test_inner_holdout_share_takes_a_share_of_each_user() -> None:
    from pipeline.evaluate.ranker import inner_holdout

    rows = pd.DataFrame({"user_id": np.repeat([1, 2, 3], [8, 4, 2]), "item_id": np.arange(14)})
    kept, held = inner_holdout(rows, "share", seed=1, share=0.25)
    assert held.groupby("user_id").size().to_dict() == {1: 2, 2: 1}  # user 3 is under min_len
    assert len(kept) + len(held) == len(rows) and not set(kept["item_id"]) & set(held["item_id"])
    _, again = inner_holdout(rows, "share", seed=1, share=0.25)
    assert again["item_id"].tolist() == held["item_id"].tolist()
    _, one = inner_holdout(rows, "random", seed=1)
    assert one.groupby("user_id").size().to_dict() == {1: 1, 2: 1}
