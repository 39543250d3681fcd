"""Known-answer contract for every recall source, plus the pieces they share (no services needed).

The tiny shop has two item clusters, {1, 2, 3} and {4, 5, 6}; users stay inside one cluster. Whatever the
source, a user whose history is item 1 must get 2 and 3 before any item of the other cluster.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.recall.candidates import SCORE_COLUMNS, RecallConfig, generate_candidates
from pipeline.recall.content import ContentIndex, content_candidates
from pipeline.recall.factors import Factors, fold_in, load_factors, save_factors, train_als, train_bpr
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


@pytest.mark.parametrize("method", ["cosine", "jaccard", "lift", "count"])
def test_itemcf_contract(method: str) -> None:
    inter = _inter()
    idx, val = similarity_topk_dense(inter.user_items, k=5, method=method)
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


def test_factors_round_trip(tmp_path) -> None:
    f = Factors(np.ones((2, 3), np.float32), np.zeros((4, 3), np.float32), np.array([5, 6]), np.arange(4),
                {"model": "als"})
    g = load_factors(save_factors(tmp_path / "als", f))
    assert (g.user_ids == f.user_ids).all() and g.meta["dim"] == 3
    from pipeline.errors import ModelError

    with pytest.raises(ModelError, match="missing"):
        load_factors(tmp_path / "nothing")


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
