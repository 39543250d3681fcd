"""Known-answer contract for every recall source, plus the pieces they share (no services needed).

The tiny shop has two item clusters, {1, 2, 3} and {4, 5, 6}; users stay inside one cluster. Whatever the
source, a user whose history is item 1 must get 2 and 3 before any item of the other cluster.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.errors import ModelError
from pipeline.recall.candidates import SCORE_COLUMNS, RecallConfig, generate_candidates
from pipeline.recall.content import ContentIndex, content_candidates
from pipeline.recall.factors import (
    BM25Weights,
    Factors,
    fold_in,
    load_factors,
    save_factors,
    train_als,
    train_bpr,
)
from pipeline.recall.itemcf import similarity_topk_dense
from pipeline.recall.matrix import build_interactions, cap_user_history
from pipeline.recall.neighbours import neighbours_frame
from pipeline.recall.text import TextIndex, text_embeddings

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
HALF_LIFE = {"view": 7.0, "click": 10.0, "add_to_cart": 14.0, "purchase": 30.0}
CLUSTER = {1: {2, 3}, 2: {1, 3}, 3: {1, 2}, 4: {5, 6}, 5: {4, 6}, 6: {4, 5}}


def _events() -> pd.DataFrame:
    """Users 10..29 view two or three items of cluster A, users 30..49 of cluster B; user 99 views item 1."""
    rows, eid = [], 0
    rng = np.random.default_rng(0)
    for u in range(10, 50):
        base = [1, 2, 3] if u < 30 else [4, 5, 6]
        for it in rng.choice(base, size=2 + u % 2, replace=False):
            eid += 1
            rows.append((eid, u, int(it), "view", None, AS_OF - timedelta(days=int(rng.integers(1, 5)))))
    rows.append((eid + 1, 99, 1, "view", None, AS_OF - timedelta(days=1)))
    return pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event_type", "query", "ts"]).astype(
        {"item_id": "Int64"})


def _items() -> pd.DataFrame:
    titles = ["red kitchen knife", "kitchen knife set", "chef knife steel", "running shoes blue",
              "trail running shoes", "running socks", "橄榄油 特级初榨"]
    cats = ["Home>Kitchen>Knives"] * 3 + ["Sports>Running>Shoes"] * 3 + ["Grocery>Pantry>Oil"]
    return pd.DataFrame({"item_id": np.arange(1, 8), "title": titles, "brand": "b", "category": cats,
                         "in_stock": True, "visible": True})


def _feats(items: pd.DataFrame | None = None) -> pd.DataFrame:
    f = (items if items is not None else _items()).copy()
    f["activity"] = [5.0, 4.0, 3.0, 6.0, 2.0, 1.0, 0.0][: len(f)]
    f["recent_events"], f["trend"] = 1, 0.1
    f["top_category"] = f["category"].str.split(">").str[0]
    return f


def _cluster_ok(ranked: list[int], anchor: int = 1) -> None:
    """The anchor's cluster mates come before every item of the other cluster."""
    mates = CLUSTER[anchor]
    pos = {it: i for i, it in enumerate(ranked)}
    assert mates <= set(pos), f"missing cluster mates in {ranked}"
    others = [pos[i] for i in pos if i not in mates | {anchor} and i in CLUSTER]
    assert max(pos[m] for m in mates) < min(others, default=len(ranked)), ranked


def _inter():
    return build_interactions(_events(), AS_OF, weights=WEIGHTS, half_life_days=HALF_LIFE,
                              item_ids=np.arange(1, 8))


@pytest.mark.parametrize("algorithm", ["dense", "sparse"])
@pytest.mark.parametrize("method", ["cosine", "jaccard", "lift", "count"])
def test_itemcf_contract(method: str, algorithm: str) -> None:
    inter = _inter()
    idx, val = similarity_topk_dense(inter.user_items, k=5, method=method, algorithm=algorithm)
    nb = neighbours_frame(idx, val, inter.item_ids, method)
    for item, mates in CLUSTER.items():
        got = nb.loc[nb["item_id"] == item].sort_values("rank")["similar_item_id"].tolist()
        assert set(got) == mates, (method, item, got)  # no cross-cluster co-occurrence at all
    assert (nb["method"] == f"item-cf-{method}").all()


@pytest.mark.parametrize("model", ["als", "bpr"])
def test_factor_models_contract(model: str) -> None:
    inter = _inter()
    if model == "als":
        uf, itf, meta = train_als(inter.user_items, factors=2, regularization=0.1, iterations=10, seed=1)
    else:
        uf, itf, meta = train_bpr(inter.user_items, factors=2, learning_rate=0.05, iterations=200, seed=1,
                                  regularization=0.001)
    u = int(np.searchsorted(inter.user_ids, 99))
    scores = uf[u] @ itf.T
    ranked = [int(inter.item_ids[i]) for i in np.argsort(-scores, kind="stable") if inter.item_ids[i] != 1]
    _cluster_ok([i for i in ranked if i in CLUSTER])
    assert meta["model"] == model


def test_content_contract_and_cold_items() -> None:
    # hand-made vectors: the clusters point along two axes; item 7 (no interactions) sits with cluster A
    vecs = np.array([[1, 0.1, 0], [1, 0.2, 0], [1, 0, 0.1], [0, 1, 0], [0.1, 1, 0], [0, 1, 0.2], [0.9, 0, 0.3]])
    index = ContentIndex(np.arange(1, 8), vecs)
    hist = pd.DataFrame({"user_id": [99], "item_id": [1], "weight": [1.0]})
    cc = content_candidates(hist, index, n=6)
    ranked = cc["item_id"].tolist()
    assert 1 not in ranked
    assert ranked.index(7) < ranked.index(4)  # the cold item is reachable, ahead of the other cluster
    _cluster_ok([i for i in ranked if i in CLUSTER])
    assert (cc["anchor_item_id"] == 1).all()
    sim = index.similar_items(np.array([1, 4]), n=2)
    assert set(sim.loc[sim["item_id"] == 4, "similar_item_id"]) == {5, 6}


def test_search_text_matches_queries_in_any_language() -> None:
    items = _items()
    idx = TextIndex(items["item_id"].to_numpy(), (items["title"] + " " + items["category"]).tolist())
    s = idx.query(["kitchen knife", "橄榄油", "running shoes"]).toarray()
    assert set(np.argsort(-s[0])[:3] + 1) == {1, 2, 3}
    assert int(np.argmax(s[1])) + 1 == 7
    assert set(np.argsort(-s[2])[:2] + 1) == {4, 5}
    emb = text_embeddings(items)
    v = np.vstack(emb["embedding"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_fold_in_equals_implicit_recalculate_user() -> None:
    from implicit.cpu.als import AlternatingLeastSquares

    m = sp.random(60, 30, density=0.1, random_state=3, format="csr", dtype=np.float32)
    m.data[:] = np.arange(m.nnz) % 4 + 1
    model = AlternatingLeastSquares(factors=6, regularization=0.5, alpha=2.0, iterations=3, random_state=0)
    model.fit(m, show_progress=False)
    x = fold_in(m[:4], np.asarray(model.item_factors), 0.5, alpha=2.0)
    ref = np.asarray(model.recalculate_user(np.arange(4), m[:4]))
    assert x == pytest.approx(ref, abs=1e-4)
    assert fold_in(np.zeros(30), np.asarray(model.item_factors), 0.5) == pytest.approx(np.zeros(6))


def test_bm25_weights_known_answer_and_implicits_formula() -> None:
    """Four users, three items: the weights by hand, implicit's ``bm25_weight`` up to the mean-1 scale, and a
    new row weighted with the training statistics (not its own)."""
    from implicit.nearest_neighbours import bm25_weight

    m = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
    w = BM25Weights.fit(m, k1=2.0, b=0.5)
    idf = np.log(4) - np.log1p([2, 2, 1])  # items 0 and 1 in two rows each, item 2 in one
    length = 1 - 0.5 + 0.5 * np.array([2.0, 1.0, 2.0, 1.0]) / 1.5  # row sums 2, 1, 2, 1
    raw = np.array([[3 / (2 * length[0] + 1) * idf[0], 3 / (2 * length[0] + 1) * idf[1], 0],
                    [3 / (2 * length[1] + 1) * idf[0], 0, 0],
                    [0, 0, 6 / (2 * length[2] + 2) * idf[2]],
                    [0, 3 / (2 * length[3] + 1) * idf[1], 0]])
    got = w.transform(m).toarray()
    np.testing.assert_allclose(got, raw / raw[raw > 0].mean(), rtol=1e-6)
    assert got[got > 0].mean() == pytest.approx(1.0)
    ref = bm25_weight(m, K1=2.0, B=0.5).toarray()
    np.testing.assert_allclose(got, ref / ref[ref > 0].mean(), rtol=1e-6)
    new = w.transform(sp.csr_matrix(np.array([[0.0, 1.0, 1.0]])))  # length 2: the first row's norm
    assert new.toarray()[0, 1] == pytest.approx(got[0, 1])
    with pytest.raises(ModelError, match="k1 > 0"):
        BM25Weights.fit(m, k1=0.0)
    with pytest.raises(ModelError, match="3 items, given 2 columns"):
        w.transform(sp.csr_matrix((1, 2)))


def test_bm25_idf_stays_positive_when_an_item_is_in_every_row() -> None:
    """log(N) - log(1 + N) < 0: an item every user has would get a negative ALS confidence."""
    m = sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 0.0]]))
    w = BM25Weights.fit(m)
    assert (w.idf > 0).all() and (w.transform(m).data > 0).all()
    train_als(w.transform(m), factors=2, iterations=2, seed=1)  # accepted: no negative weight


def test_factors_round_trip(tmp_path) -> None:
    f = Factors(np.ones((2, 3), np.float32), np.zeros((4, 3), np.float32), np.array([5, 6]), np.arange(4),
                {"model": "als"})
    g = load_factors(save_factors(tmp_path / "als", f))
    assert (g.user_ids == f.user_ids).all() and g.meta["dim"] == 3

    with pytest.raises(ModelError, match="missing"):
        load_factors(tmp_path / "nothing")


def test_bm25_factors_round_trip_and_fold_in_through_the_weighting(tmp_path) -> None:
    """Factors trained on BM25 weights keep the weighting on disk, and ALS recall folds an unknown user's
    history in through it (an unweighted fold-in would rank differently)."""
    from pipeline.recall.candidates import als_source

    rng = np.random.default_rng(4)
    m = sp.csr_matrix((rng.random((30, 12)) < 0.3) * rng.integers(1, 5, (30, 12)).astype(np.float32))
    w = BM25Weights.fit(m, k1=3.0, b=0.6)
    uf, itf, meta = train_als(w.transform(m), factors=4, regularization=0.5, iterations=5, seed=2, num_threads=1)
    f = Factors(uf, itf, np.arange(30), np.arange(100, 112), meta, weighting=w)
    g = load_factors(save_factors(tmp_path / "als", f))
    assert g.weighting is not None and g.meta["weighting"]["kind"] == "bm25"
    np.testing.assert_array_equal(g.weighting.idf, w.idf)
    assert (g.weighting.k1, g.weighting.b, g.weighting.scale) == (3.0, 0.6, w.scale)
    assert load_factors(save_factors(tmp_path / "plain", Factors(uf, itf, np.arange(30), np.arange(100, 112)))
                        ).weighting is None

    hist = pd.DataFrame({"user_id": [999, 999, 999], "item_id": [100, 103, 107], "weight": [1.0, 6.0, 2.0]})
    got = als_source(np.array([999]), hist, g, n=5).set_index("item_id")["recall_score"]
    row = sp.csr_matrix((hist["weight"].to_numpy(np.float32), ([0, 0, 0], [0, 3, 7])), shape=(1, 12))
    scores = {}
    for name, x in (("bm25", w.transform(row)), ("raw", row)):
        sc = (fold_in(x, itf, 0.5, alpha=3.0) @ itf.T)[0]
        top = [i for i in np.argsort(-sc, kind="stable") if i not in (0, 3, 7)][:5]  # unseen items
        scores[name] = pd.Series(sc[top] / sc[top[0]], index=[100 + int(i) for i in top])
    assert got.index.tolist() == scores["bm25"].index.tolist()
    np.testing.assert_allclose(got.to_numpy(), scores["bm25"].to_numpy(), rtol=1e-4)
    assert not np.allclose(got.to_numpy(), scores["raw"].reindex(got.index).to_numpy(), rtol=1e-2)

    (tmp_path / "als" / "bm25_idf.npy").unlink()
    with pytest.raises(ModelError, match="bm25_idf.npy is missing"):
        load_factors(tmp_path / "als")


@pytest.mark.parametrize("spread", [3, 60])
def test_als_source_is_each_users_best_unseen_items_in_blocks_with_ties_and_heavy_histories(spread: int) -> None:
    """ALS recall masks the users' seen items in each score block and keeps its n best: the same rows as
    scoring every item, dropping the seen ones and taking the n best by score then item id, over blocks of
    users, tied scores and histories longer than the list. Spread 3: ties across the n-th score in most rows
    (the rows scanned whole); 60: few ties (the top-k alone)."""
    from pipeline.recall import candidates
    from pipeline.recall.candidates import als_source

    rng = np.random.default_rng(8)
    n_users, n_items, n = 2 * candidates.ALS_BLOCK + 37, 300, 15
    # integers: every score is exact in any summation order (no BLAS rounding); small ones tie often
    itf = rng.integers(-spread, spread + 1, size=(n_items, 6)).astype(np.float32)
    uf = rng.integers(-spread, spread + 1, size=(n_users, 6)).astype(np.float32)
    uf[5] = 0.0  # a user without a vector: no ALS rows
    f = Factors(uf, itf, np.arange(n_users) * 2, np.arange(n_items) + 1000, {})
    users = np.arange(n_users) * 2
    heavy = pd.DataFrame({"user_id": 2, "item_id": np.arange(1000, 1000 + 200), "weight": 1.0})  # > n seen
    hist = pd.concat([heavy, pd.DataFrame({"user_id": rng.choice(users, 3000),
                                           "item_id": rng.integers(990, 1000 + n_items, 3000),  # some unknown
                                           "weight": 1.0})]).drop_duplicates(["user_id", "item_id"])
    got = als_source(users, hist, f, n=n)
    want = []
    for i, u in enumerate(users):
        sc = uf[i] @ itf.T
        seen = set(hist.loc[hist["user_id"] == u, "item_id"])
        rows = [(-float(sc[j]), 1000 + j) for j in range(n_items) if sc[j] > 0 and 1000 + j not in seen]
        rows = sorted(rows)[:n]
        want += [(int(u), item, -neg / -rows[0][0]) for neg, item in rows]
    want = pd.DataFrame(want, columns=["user_id", "item_id", "recall_score"])
    assert 5 * 2 not in set(got["user_id"]) and len(got) == len(want) > n * (n_users - 2)
    assert got["user_id"].tolist() == want["user_id"].tolist()
    assert got["item_id"].tolist() == want["item_id"].tolist()
    np.testing.assert_allclose(got["recall_score"].to_numpy(), want["recall_score"].to_numpy(), rtol=1e-5)


@pytest.mark.parametrize("decay_from", ["as_of", "user_last"])
def test_interactions_from_chunks_equal_the_one_frame_build(decay_from: str) -> None:
    """cf_build reads the snapshot's events a date partition at a time: the matrix equals the one-frame build
    (to float32 rounding), users' latest events spanning chunks included; searches and unknown items left out."""
    from pipeline.datagen.build import build_shop
    from pipeline.recall.matrix import interactions_from_chunks

    shop, _ = build_shop(300, 80, 10, seed=5, end=AS_OF)
    ev = shop.events.sort_values(["ts", "event_id"]).reset_index(drop=True)
    ev = pd.concat([ev, ev.iloc[:3].assign(item_id=10**6, event_id=ev["event_id"].max() + np.arange(1, 4))])
    items = np.sort(shop.items["item_id"].to_numpy())
    days = [g for _, g in ev.groupby(ev["ts"].dt.date)]
    assert len(days) > 5 and (ev["event_type"] == "search").any()
    whole = build_interactions(ev, AS_OF, weights=WEIGHTS, half_life_days=HALF_LIFE, item_ids=items,
                               decay_from=decay_from)
    chunked = interactions_from_chunks(lambda: (d.sample(frac=1.0, random_state=1) for d in days), AS_OF,
                                       weights=WEIGHTS, half_life_days=HALF_LIFE, item_ids=items,
                                       decay_from=decay_from)
    np.testing.assert_array_equal(chunked.user_ids, whole.user_ids)
    np.testing.assert_array_equal(chunked.item_ids, whole.item_ids)
    a, b = chunked.user_items, whole.user_items
    assert a.dtype == np.float32 and a.nnz == b.nnz > 500
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-5)


def test_interactions_repeats_add_up_and_decay() -> None:
    ev = pd.DataFrame({"user_id": [1, 1, 1], "item_id": pd.array([7, 7, 8], dtype="Int64"),
                       "event_type": ["view", "view", "purchase"],
                       "ts": [AS_OF - timedelta(days=7), AS_OF, AS_OF - timedelta(days=30)]})
    m = build_interactions(ev, AS_OF, weights=WEIGHTS, half_life_days=HALF_LIFE).user_items.toarray()
    assert m[0, 0] == pytest.approx(1.5)  # 0.5 (one half-life old) + 1.0
    assert m[0, 1] == pytest.approx(4.0)  # purchase 8, one 30-day half-life old
    capped = cap_user_history(sp.csr_matrix(np.array([[1.0, 3.0, 2.0, 3.0]])), 2).toarray()
    assert capped.tolist() == [[0.0, 3.0, 0.0, 3.0]]


def _cfg(**kw) -> RecallConfig:
    return RecallConfig(as_of=AS_OF, n_candidates=5, weights=WEIGHTS, half_life_days=HALF_LIFE, **kw)


def test_merge_contract_every_source_keeps_cluster_order() -> None:
    inter = _inter()
    idx, val = similarity_topk_dense(inter.user_items, k=5)
    nb = neighbours_frame(idx, val, inter.item_ids, "cosine")
    uf, itf, meta = train_als(inter.user_items, factors=2, regularization=0.1, iterations=10, seed=1)
    fac = Factors(uf, itf, inter.user_ids, inter.item_ids, meta)
    content = ContentIndex.from_frame(text_embeddings(_items()))
    ev = _events()
    for source in ("item-cf", "als", "content"):
        c = generate_candidates(np.array([99]), ev, nb, _feats(), _cfg(), factors=fac, content_index=content,
                                sources=(source,))
        assert (c["source"] == source).all(), source
        _cluster_ok([i for i in c["item_id"] if i in CLUSTER])


def test_merge_provenance_filters_and_determinism() -> None:
    ev = _events()
    extra = pd.DataFrame({"event_id": [900, 901, 902], "user_id": [99, 99, 99],
                          "item_id": pd.array([2, 7, None], dtype="Int64"),
                          "event_type": ["purchase", "purchase", "search"], "query": [None, None, "running"],
                          "ts": [AS_OF - timedelta(hours=2)] * 3})
    ev = pd.concat([ev, extra], ignore_index=True)
    inter = build_interactions(ev, AS_OF, weights=WEIGHTS, half_life_days=HALF_LIFE, item_ids=np.arange(1, 8))
    idx, val = similarity_topk_dense(inter.user_items, k=5)
    nb = neighbours_frame(idx, val, inter.item_ids, "cosine")
    feats = _feats()
    feats.loc[feats["item_id"] == 3, "in_stock"] = False
    feats.loc[feats["item_id"] == 6, "visible"] = False
    c = generate_candidates(np.array([99, 12]), ev, nb, feats, _cfg())
    again = generate_candidates(np.array([12, 99]), ev.sample(frac=1, random_state=1), nb, feats, _cfg())
    pd.testing.assert_frame_equal(c, again)
    mine = c[c["user_id"] == 99]
    assert 2 not in set(mine["item_id"])  # bought, not repurchasable
    assert 7 in set(mine["item_id"])  # bought, but Grocery is repurchasable
    assert not {3, 6} & set(c["item_id"])  # out of stock / invisible
    assert not c.duplicated(["user_id", "item_id"]).any()
    # 7 items - 2 unavailable = 5; user 99 bought item 2, so the catalogue allows only 4
    assert c.groupby("user_id").size().to_dict() == {12: 5, 99: 4}
    row = mine[mine["item_id"] == 1].iloc[0]
    assert row["source"] == "retarget" and row["anchor_item_id"] == 1
    assert "retarget" in row["sources"] and row["score_retarget"] == pytest.approx(1.0)
    assert set(SCORE_COLUMNS) <= set(c.columns)
    assert c["p_recall"].between(0, 1).all()
    assert "search" in "|".join(mine.loc[mine["item_id"].isin([4, 5]), "sources"])


def test_new_user_gets_full_sensible_list() -> None:
    items = pd.DataFrame({"item_id": np.arange(1, 41), "title": [f"thing {i}" for i in range(40)], "brand": "b",
                          "category": [f"{c}>x" for c in ["Home", "Sports", "Books", "Toys"] * 10],
                          "in_stock": [i % 10 != 0 for i in range(40)], "visible": True})
    feats = items.assign(activity=np.linspace(10, 1, 40), recent_events=1, trend=0.1,
                         top_category=items["category"].str.split(">").str[0])
    feats.loc[feats["item_id"] > 36, "activity"] = 0.0  # never seen items can still fill a list
    cfg = RecallConfig(as_of=AS_OF, n_candidates=30, weights=WEIGHTS, half_life_days=HALF_LIFE)
    c = generate_candidates(np.array([12345]), _events().iloc[:0], pd.DataFrame(
        {"item_id": [], "similar_item_id": [], "score": []}), feats, cfg)
    assert len(c) == 30 and c["item_id"].is_unique
    assert c["item_id"].isin(feats.loc[feats["in_stock"], "item_id"]).all()
    top8 = feats.set_index("item_id").loc[c["item_id"].head(8), "top_category"]
    assert top8.nunique() == 4  # the head of a cold list spans the shop, not one category
    assert c["p_recall"].is_monotonic_decreasing


# -- item-CF memory work: chunked blocks, operands, no caller mutation -------------------------------------------
def _random_matrix(seed: int = 3, users: int = 300, items: int = 120) -> sp.csr_matrix:
    m = sp.random(users, items, density=0.05, format="csr", random_state=seed, dtype=np.float32)
    m.data = np.rint(m.data * 4) + 1  # small integer weights: many equal similarities (tie handling)
    return m


@pytest.mark.parametrize("method", ["cosine", "jaccard", "lift", "count"])
def test_itemcf_chunks_and_blocks_do_not_change_results(method: str) -> None:
    from pipeline.recall.itemcf import _prepare, block_topk

    m = _random_matrix()
    ref_idx, ref_val = similarity_topk_dense(m, k=15, method=method, shrink=2.0)
    X, XT, norms = _prepare(m, method, False)
    for chunk_cells in (1, m.shape[1] * 7, 10**9):  # one row per chunk, a few rows, the whole block
        for start, stop in ((0, 50), (50, 120)):
            idx, val = block_topk(XT[start:stop], X, norms, start, method=method, shrink=2.0, k=15,
                                  chunk_cells=chunk_cells)
            assert np.array_equal(val, ref_val[start:stop]) and np.array_equal(idx, ref_idx[start:stop])
    small_idx, small_val = similarity_topk_dense(m, k=15, method=method, shrink=2.0, block_size=7)
    assert np.array_equal(small_val, ref_val) and np.array_equal(small_idx, ref_idx)


def test_itemcf_cosine_matches_a_dense_reference_and_leaves_input_alone() -> None:
    # a non-canonical CSR (row 0 holds column 2 twice, un-summed): the build must sum it on its own copy
    odd = sp.csr_matrix((np.array([1.0, 2.0, 1.0, 3.0], np.float32), np.array([2, 2, 0, 1]),
                         np.array([0, 2, 3, 4])), shape=(3, 4))
    before = (odd.data.copy(), odd.indices.copy(), odd.indptr.copy())
    idx, val = similarity_topk_dense(odd, k=2, method="cosine")
    assert all(np.array_equal(a, b) for a, b in zip(before, (odd.data, odd.indices, odd.indptr), strict=True))
    assert not odd.has_canonical_format
    m = _random_matrix(seed=5)
    idx, val = similarity_topk_dense(m, k=10, method="cosine")
    d = m.toarray().astype(np.float64)
    norms = np.linalg.norm(d, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.nan_to_num(d.T @ d / np.outer(norms, norms))
    np.fill_diagonal(sim, 0.0)
    want = -np.sort(-sim, axis=1)[:, :10]
    np.testing.assert_allclose(val, want, rtol=1e-5, atol=1e-6)


def test_repeat_positives_and_rating_weighted_bpr() -> None:
    from pipeline.recall.factors import repeat_positives

    m = sp.csr_matrix(np.array([[0, 2.6, 0, 1], [0, 0, 0, 0], [3, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    r = repeat_positives(m)
    assert r.indptr.tolist() == [0, 4, 4, 7, 7] and r.indices.tolist() == [1, 1, 1, 3, 0, 0, 0]
    # item 1 is liked 20 times as strongly as item 0 by everyone: only rating weighting may rank it above
    rng = np.random.default_rng(0)
    w = (rng.random((300, 30)) < 0.15).astype(np.float32)
    w[:, 0], w[:, 1] = 1.0, 20.0
    gaps = {}
    for mode in ("presence", "ratings"):
        uf, itf, meta = train_bpr(sp.csr_matrix(w), factors=8, iterations=50, num_threads=1, seed=3,
                                  sample_weighting=mode)
        s = uf @ itf.T
        gaps[mode] = float((s[:, 1] - s[:, 0]).mean())
        assert meta["sample_weighting"] == mode
    assert gaps["ratings"] > gaps["presence"] + 0.1, gaps
    with pytest.raises(ModelError, match="sample_weighting"):
        train_bpr(sp.csr_matrix(w), sample_weighting="clicks")


def test_recall_audit_on_a_small_generated_shop(tmp_path) -> None:
    from pipeline.datagen import build_shop
    from pipeline.recall.audit import source_recall, write_outputs

    frames, _ = build_shop(200, 150, 10, seed=3)
    res = source_recall(frames, n=30, factors=8)
    assert res["test_pairs"] > 0 and res["catalogue_mode"] == "as-of"
    for name in ("item-cf", "als", "content", "popularity", "merge"):
        assert 0.0 <= res["recall"][name] <= 1.0
        assert abs(res["hits"][name] / res["test_pairs"] - res["recall"][name]) <= 5e-5
    assert res["recall"]["retarget"] == 0.0  # test pairs are items the user never touched: nothing to re-target
    assert res["recall"]["merge"] > 0.0
    assert res["content_only_share"] <= res["recall"]["content"]
    assert res["cold_reached_by_content_share"] <= res["cold_test_share"]
    for s, v in res["cold_recall"].items():
        if s in ("item-cf", "als"):  # CF cannot reach an item with no training interaction
            assert v == 0.0
    d = write_outputs({"dataset": "tiny", **res}, tmp_path / "audit")
    table = pd.read_csv(d / "recall.csv")
    assert set(table["source"]) == set(res["recall"]) and (d / "audit.json").exists()


@pytest.mark.parametrize("method", ["cosine", "jaccard", "lift", "count"])
def test_itemcf_sparse_topk_same_scores_ties_to_lower_index(method: str) -> None:
    from pipeline.recall.itemcf import item_similarity_topk

    m = _random_matrix(seed=11, users=400, items=150)
    d_idx, d_val = similarity_topk_dense(m, k=12, method=method, shrink=1.0)
    s_idx, s_val = similarity_topk_dense(m, k=12, method=method, shrink=1.0, algorithm="sparse", block_size=9)
    assert np.array_equal(d_val, s_val)  # the same scores in every slot, bit for bit
    S_dense = item_similarity_topk(m, k=m.shape[1] - 1, method=method, shrink=1.0)
    S_full = item_similarity_topk(m, k=m.shape[1] - 1, method=method, shrink=1.0, algorithm="sparse")
    assert (S_dense != S_full).nnz == 0  # all neighbours kept: no k-th place, identical matrices
    boundary_ties = 0
    for i in range(m.shape[1]):
        strict = d_val[i] > d_val[i][-1]  # above the k-th score both paths agree exactly
        assert np.array_equal(d_idx[i][strict], s_idx[i][strict])
        pos = s_val[i] > 0
        row = s_idx[i][pos]
        assert len(set(row.tolist())) == len(row) and i not in row
        if pos.all():  # a full row: of all items tied at the k-th score, the lowest indices are kept
            full = S_full.getrow(i)
            tied_all = np.sort(full.indices[full.data == s_val[i][-1]])
            kept = np.sort(row[s_val[i] == s_val[i][-1]])
            assert np.array_equal(kept, tied_all[: len(kept)])
            boundary_ties += len(tied_all) > len(kept)
    assert boundary_ties > 0  # the matrix does exercise ties at the k-th place
    with pytest.raises(ValueError, match="algorithm"):
        similarity_topk_dense(m, algorithm="fast")


def test_cap_user_history_rows_and_empty_rows() -> None:
    m = sp.csr_matrix(np.array([[1.0, 3.0, 2.0, 3.0, 0.5], [0, 0, 0, 0, 0], [0, 4.0, 0, 0, 1.0], [0, 0, 0, 0, 0]],
                               dtype=np.float32))
    capped = cap_user_history(m, 2)
    assert capped.toarray().tolist() == [[0, 3, 0, 3, 0], [0] * 5, [0, 4, 0, 0, 1], [0] * 5]
    assert capped.indptr.tolist() == [0, 2, 2, 4, 4] and capped.has_sorted_indices
    # a repeated entry counts once, with its summed weight (and the caller's matrix is left alone)
    odd = sp.csr_matrix((np.array([1.0, 1.5, 2.0, 1.0], np.float32), np.array([0, 0, 1, 2]), np.array([0, 4])),
                        shape=(1, 3))
    assert cap_user_history(odd, 1).toarray().tolist() == [[2.5, 0, 0]]
    assert odd.data.tolist() == [1.0, 1.5, 2.0, 1.0]


def test_sparse_prefilter_keeps_every_top_k_entry_and_ties() -> None:
    from pipeline.recall.itemcf import _above_kth_bucket

    rng = np.random.default_rng(4)
    r, k = 700, 5  # more rows than one histogram group, to cross a group boundary
    counts = rng.integers(0, 40, size=r)
    rows = np.repeat(np.arange(r), counts)
    sim = rng.choice(np.array([0.5, 0.25, 0.2, 0.2001, 1e-3, 3.0], np.float32), size=len(rows))
    sim = (sim * rng.integers(1, 4, size=len(rows))).astype(np.float32)  # heavy ties
    keep = _above_kth_bucket(sim, rows, r, k)
    assert keep.sum() < len(sim)  # it does filter
    for i in range(r):
        s = sim[rows == i]
        if len(s) == 0:
            continue
        kth = np.sort(s)[::-1][min(k, len(s)) - 1]
        assert keep[rows == i][s >= kth].all()  # every top-k value and every tie with the k-th survives


@pytest.mark.parametrize("blend", [1.0, 0.5])
def test_category_source_ranks_the_users_own_shelves_by_share_times_shelf_popularity(blend: float) -> None:
    """Two shelves of one top category: a user with 3/4 of their (decayed) weight on the knives shelf and
    1/4 on the boards shelf gets blend * share * activity / shelf activity + (1 - blend) * activity / the
    shop's activity, normalised to the user's best; the shop's best seller comes in only with the shop term."""
    items = pd.DataFrame({"item_id": [1, 2, 3, 4, 5], "title": ["k1", "k2", "b1", "b2", "s1"], "brand": "b",
                          "category": ["Home>Kitchen>Knives"] * 2 + ["Home>Kitchen>Boards"] * 2
                          + ["Sports>Running>Shoes"], "in_stock": True, "visible": True})
    feats = _feats(items)
    feats["activity"] = [6.0, 2.0, 1.0, 3.0, 50.0]
    ev = pd.DataFrame({"event_id": [1, 2, 3, 4], "user_id": 7, "item_id": pd.array([1, 1, 1, 3], dtype="Int64"),
                       "event_type": "view", "query": None, "ts": AS_OF - timedelta(hours=1)})
    cfg = RecallConfig(as_of=AS_OF, n_candidates=5, weights={"view": 1.0}, half_life_days={"view": 1e9},
                       category_blend=blend)
    c = generate_candidates(np.array([7]), ev, pd.DataFrame(columns=["item_id", "neighbour_id", "score"]), feats,
                            cfg, sources=("category",))
    got = c.set_index("item_id")["score_category"]
    own = {1: 0.75 * 6 / 8, 2: 0.75 * 2 / 8, 3: 0.25 * 1 / 4, 4: 0.25 * 3 / 4, 5: 0.0}
    act = dict(zip(feats["item_id"], feats["activity"], strict=True))
    raw = {i: blend * o + (1 - blend) * act[i] / 62 for i, o in own.items() if blend < 1 or o > 0}
    top = max(raw.values())
    assert got.reindex(list(raw)).round(6).tolist() == [round(v / top, 6) for v in raw.values()]
    assert (5 in got.index) == (blend < 1)  # the shop's best seller is on none of the user's shelves


@pytest.mark.parametrize("blend", [1.0, 0.5])
def test_category_source_on_coarse_shelves_equals_share_times_popularity_over_every_item(blend: float) -> None:
    """Three shelves of 200 items each with tied activities (a catalogue with coarse categories): each user's
    category rows are the brute-force top n of blend * share * in-shelf popularity + (1 - blend) * the item's
    share of the shop over every item (ties by item id), though the source only ever joins each shelf's top n
    items and the shop's top n."""
    rng = np.random.default_rng(5)
    n_items = 600
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": "x", "brand": "b",
                          "category": np.array(["A>a", "B>b", "C>c"])[np.arange(n_items) // 200], "in_stock": True,
                          "visible": True})
    feats = _feats(items.head(7)).head(0)  # the helper's columns, then this catalogue's rows
    feats = items.assign(activity=rng.integers(1, 6, n_items).astype(float), recent_events=1, trend=0.1,
                         top_category=items["category"].str.split(">").str[0])[list(feats.columns)]
    users = np.arange(1, 41)
    ev = pd.DataFrame({"event_id": np.arange(1, 201), "user_id": np.repeat(users, 5),
                       "item_id": pd.array(rng.integers(1, 401, 200), dtype="Int64"), "event_type": "view",
                       "query": None, "ts": AS_OF - timedelta(hours=1)})
    n = 25
    cfg = RecallConfig(as_of=AS_OF, n_candidates=n, weights={"view": 1.0}, half_life_days={"view": 1e9},
                       per_source={"category": n}, category_blend=blend)
    got = generate_candidates(users, ev, pd.DataFrame(columns=["item_id", "neighbour_id", "score"]), feats, cfg,
                              sources=("category",))
    shelf_of = dict(zip(items["item_id"], items["category"], strict=True))
    act = dict(zip(feats["item_id"], feats["activity"], strict=True))
    total = {c: sum(a for i, a in act.items() if shelf_of[i] == c) for c in ("A>a", "B>b", "C>c")}
    shop = sum(act.values())
    for u in users:
        mine = ev.loc[ev["user_id"] == u, "item_id"].astype(int)
        share = mine.map(shelf_of).value_counts(normalize=True)
        brute = sorted(((blend * share.get(shelf_of[i], 0.0) * act[i] / total[shelf_of[i]]
                         + (1 - blend) * act[i] / shop, i) for i in act
                        if blend < 1 or shelf_of[i] in share.index), key=lambda t: (-t[0], t[1]))
        want = [i for _, i in brute][:n]
        have = got[got["user_id"] == u].sort_values(["score_category", "item_id"], ascending=[False, True])
        assert have["item_id"].tolist() == want


def test_category_source_falls_back_to_the_top_level_when_the_users_shelves_sell_nothing() -> None:
    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["k1", "b1", "b2"], "brand": "b",
                          "category": ["Home>Kitchen>Knives", "Home>Kitchen>Boards", "Home>Kitchen>Boards"],
                          "in_stock": True, "visible": True})
    feats = _feats(items)
    feats["activity"] = [0.0, 2.0, 4.0]  # nothing on the knives shelf has sold (a new shelf)
    ev = pd.DataFrame({"event_id": [1], "user_id": 7, "item_id": pd.array([1], dtype="Int64"),
                       "event_type": "view", "query": None, "ts": AS_OF - timedelta(hours=1)})
    c = generate_candidates(np.array([7]), ev, pd.DataFrame(columns=["item_id", "neighbour_id", "score"]), feats,
                            replace(_cfg(), category_blend=1.0), sources=("category",))
    assert c.sort_values("score_category", ascending=False)["item_id"].tolist() == [3, 2]


def test_search_rows_pruned_per_query_keep_each_rows_best_and_ties() -> None:
    """The search source keeps, per distinct query, the cosines at or above the floor and at least as large
    as the row's n-th best (ties kept), before copying a query's row to each user who typed it."""
    import scipy.sparse as sp

    from pipeline.recall.text import rows_top_n

    m = sp.csr_matrix(np.array([[0.9, 0.5, 0.5, 0.2, 0.05], [0.1, 0.0, 0.3, 0.0, 0.0]]))
    out = rows_top_n(m, 2, floor=0.1).toarray()
    np.testing.assert_array_equal(out, [[0.9, 0.5, 0.5, 0.0, 0.0], [0.1, 0.0, 0.3, 0.0, 0.0]])
    assert m.toarray()[0, 3] == 0.2  # the input is left alone


def test_search_matches_cached_per_query_equal_a_fresh_match() -> None:
    """The index keeps each distinct query's pruned row for the next shard: repeated, reordered and new
    queries give the rows a fresh index gives, and the cache stays within its bound."""
    from pipeline.recall import text as T

    ids = np.arange(1, 41)
    colours, things = ["red", "blue", "green", "black"] * 10, ["shoe", "lamp", "mug", "sofa", "bag"] * 8
    texts = [f"{c} {w} item {i}" for i, (c, w) in enumerate(zip(colours, things, strict=True))]
    queries = ["red shoe", "blue lamp", "red shoe", "green mug sofa", "black bag"]
    fresh = T.rows_top_n(T.TextIndex(ids, texts).query(queries).tocsr(), 3, floor=0.05).toarray()
    idx = T.TextIndex(ids, texts)
    np.testing.assert_allclose(idx.top_matches(queries, 3, 0.05).toarray(), fresh)
    again = idx.top_matches(queries[::-1] + ["mug"], 3, 0.05).toarray()
    np.testing.assert_allclose(again[:5], fresh[::-1])
    np.testing.assert_allclose(again[5], T.rows_top_n(idx.query(["mug"]).tocsr(), 3, floor=0.05).toarray()[0])
    assert len(idx._top_cache) == 5  # four distinct queries, then "mug"
    assert idx.top_matches([], 3, 0.05).shape == (0, 40)


def test_content_index_above_the_exact_size_is_an_inverted_file_close_to_exact_and_batch_independent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalogue above EXACT_MAX_ITEMS is searched through faiss' inverted file: nearly the exact top items,
    the same index from the same input, and each query's answer independent of the others in its batch (a
    user's list must not depend on the shard it lands in)."""
    from pipeline.recall import content
    from pipeline.recall.content import ContentIndex

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    vecs = centres[rng.integers(0, 40, 4000)] + 0.6 * rng.standard_normal((4000, 32)).astype(np.float32)
    ids = np.arange(1, 4001)
    exact = ContentIndex(ids, vecs)
    monkeypatch.setattr(content, "EXACT_MAX_ITEMS", 1000)
    ann, again = ContentIndex(ids, vecs), ContentIndex(ids, vecs)
    assert type(exact.index).__name__ == "IndexFlatIP" and type(ann.index).__name__ == "IndexIVFFlat"
    hist = pd.DataFrame({"user_id": np.repeat(np.arange(300), 3), "item_id": rng.choice(ids, 900),
                         "weight": rng.random(900) + 0.1}).drop_duplicates(["user_id", "item_id"])
    want = content_candidates(hist, exact, n=20)
    got = content_candidates(hist, ann, n=20)
    pd.testing.assert_frame_equal(got, content_candidates(hist, again, n=20))
    overlap = (got.merge(want, on=["user_id", "item_id"]).shape[0]) / len(want)
    assert overlap >= 0.9, overlap
    one = pd.concat([content_candidates(hist[hist["user_id"] == u], ann, n=20) for u in (5, 77, 250)])
    pd.testing.assert_frame_equal(one.reset_index(drop=True),
                                  got[got["user_id"].isin([5, 77, 250])].reset_index(drop=True))
