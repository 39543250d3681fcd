"""One known-answer contract that every named model passes (implicit's shared test mixin, in spirit).

The tiny matrix has two clusters: users 0-3 like items 10-12, users 4-6 like items 13-15. User 3 has
10 and 11, so a personalised model must put 12 first; user 6 has 13 and 14, so it must put 15 first
(popularity instead puts 10 first for user 6: items 10 and 11 are the most popular it has not seen).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ModelError
from pipeline.evaluate import models as registry
from pipeline.evaluate.models import Recommender, get_model, model_names, register_model

TRAIN = pd.DataFrame(
    [(u, i) for u in (0, 1, 2) for i in (10, 11, 12)] + [(3, 10), (3, 11)]
    + [(u, i) for u in (4, 5) for i in (13, 14, 15)] + [(6, 13), (6, 14)],
    columns=["user_id", "item_id"],
).assign(rating=4.0)
ITEMS = pd.DataFrame({"item_id": [10, 11, 12, 13, 14, 15, 16]})  # 16: in the catalogue, never seen


class ModelContract:
    """Subclasses set ``name``, ``params`` and the expected first item for users 3 and 6 (None: any)."""

    name: str
    params: dict = {}
    first_for_3: int | None = 12
    first_for_6: int | None = 15

    def model(self) -> Recommender:
        return get_model(self.name, **self.params).fit(TRAIN, ITEMS)

    def test_known_answer(self) -> None:
        recs = self.model().recommend([3, 6], k=3)
        first = recs[recs["rank"] == 1].set_index("user_id")["item_id"]
        if self.first_for_3 is not None:
            assert first[3] == self.first_for_3
        if self.first_for_6 is not None:
            assert first[6] == self.first_for_6

    def test_output_contract(self) -> None:
        recs = self.model().recommend([0, 3, 6], k=3)
        assert list(recs.columns) == ["user_id", "item_id", "rank", "score"]
        for u, g in recs.groupby("user_id"):
            assert g["rank"].tolist() == [1, 2, 3]
            assert (np.diff(g["score"].to_numpy()) <= 1e-6).all()  # best first
            seen = set(TRAIN.item_id[TRAIN.user_id == u])
            assert seen.isdisjoint(g["item_id"])
            assert g["item_id"].is_unique

    def test_short_lists_unknown_users_and_seen(self) -> None:
        m = self.model()
        recs = m.recommend([0], k=50)  # 7 catalogue items - 3 seen
        assert sorted(recs["item_id"]) == [13, 14, 15, 16]
        cold = m.recommend([999], k=3)  # an unknown user still gets a full list
        assert len(cold) == 3 and cold["rank"].tolist() == [1, 2, 3]
        with_seen = m.recommend([0], k=7, exclude_seen=False)
        assert len(with_seen) == 7
        with pytest.raises(ModelError):
            m.recommend([0], k=0)

    def test_deterministic(self) -> None:
        a = self.model().recommend([0, 3, 6], k=3)
        b = self.model().recommend([0, 3, 6], k=3)
        pd.testing.assert_frame_equal(a[["user_id", "item_id", "rank"]], b[["user_id", "item_id", "rank"]])

    def test_score_shape_and_history(self) -> None:
        m = self.model()
        s = m.score([3, 6])
        assert s.shape == (2, len(m.item_ids)) and np.isfinite(s).all()
        # a supplied history (e.g. leave-one-out's items[:-1]) is excluded from the list
        h = m.matrix(pd.DataFrame({"user_id": [3, 3, 3], "item_id": [10, 11, 12]}))[[3]]
        recs = m.recommend([3], k=10, history=h)
        assert {10, 11, 12}.isdisjoint(recs["item_id"])

    def test_rejects_bad_input(self) -> None:
        with pytest.raises(ModelError, match="item_id"):
            get_model(self.name, **self.params).fit(TRAIN.rename(columns={"item_id": "sku"}))
        with pytest.raises(ModelError, match="empty"):
            get_model(self.name, **self.params).fit(TRAIN.iloc[0:0])


class TestRandom(ModelContract):
    name = "random"
    first_for_3 = first_for_6 = None


class TestPopularity(ModelContract):
    name = "popularity"
    first_for_6 = 10


class TestItemCF(ModelContract):
    name = "item-cf"


class TestSAR(ModelContract):
    name = "sar"


class TestALS(ModelContract):
    name = "als"
    params = {"factors": 4, "regularization": 0.1, "iterations": 30}


class TestBPR(ModelContract):
    name = "bpr"
    params = {"factors": 8, "learning_rate": 0.05, "regularization": 0.001, "iterations": 300}


class TestRP3beta(ModelContract):
    name = "rp3beta"


class TestRP3betaNeighbours(ModelContract):
    name = "rp3beta"
    params = {"neighbours": 2, "alpha": 1.0, "beta": 0.0, "use_ratings": True}


class TestUserKNN(ModelContract):
    name = "user-knn"


class TestUserKNNRatings(ModelContract):
    name = "user-knn"
    params = {"neighbours": 2, "power": 1.0, "use_ratings": True}


def test_rp3beta_known_weights() -> None:
    """Two users, three items: the walk's probabilities by hand, and beta dividing by popularity."""
    train = pd.DataFrame({"user_id": [0, 0, 1, 1], "item_id": [10, 11, 11, 12]})
    m = get_model("rp3beta", alpha=1.0, beta=0.0).fit(train)
    # from item 10: user 0 (p=1), then items 10/11 (1/2 each): W[10, 11] = 1/2, W[10, 12] = 0
    # from item 11: users 0/1 (1/2 each), then 10 (1/4) or 11 (1/4 + 1/4) or 12 (1/4)
    expect = np.array([[0.0, 0.5, 0.0], [0.25, 0.0, 0.25], [0.0, 0.5, 0.0]], np.float32)
    np.testing.assert_allclose(m.W, expect, atol=1e-7)
    m2 = get_model("rp3beta", alpha=1.0, beta=1.0).fit(train)  # item 11 has 2 users: its column halves
    np.testing.assert_allclose(m2.W, expect * np.array([1.0, 0.5, 1.0], np.float32)[None, :], atol=1e-7)
    np.testing.assert_allclose(m.score([0]), expect[[0, 1]].sum(0, keepdims=True), atol=1e-7)
    with pytest.raises(ModelError, match="max_items"):
        get_model("rp3beta", max_items=2).fit(train)


def test_user_knn_known_scores() -> None:
    """Cosine between users, the user itself excluded, top-1 neighbour kept; a supplied history folds in."""
    train = pd.DataFrame({"user_id": [0, 0, 1, 1, 2], "item_id": [10, 11, 10, 12, 13]})
    m = get_model("user-knn", neighbours=1, power=1.0).fit(train)
    # user 0 = {10, 11}: cosine to user 1 = 1/2, to user 2 = 0, so the list is user 1's items
    s = m.score([0])[0]
    np.testing.assert_allclose(s, [0.5, 0.0, 0.5, 0.0], atol=1e-6)
    recs = m.recommend([0], k=1)
    assert recs["item_id"].tolist() == [12]
    # a new history {13} is most like user 2 (cosine 1): item 13 is seen, the rest score 0
    h = m.matrix(pd.DataFrame({"user_id": [0], "item_id": [13]}))[[0]]
    np.testing.assert_allclose(m.score([0], h)[0], [0.0, 0.0, 0.0, 1.0], atol=1e-6)


def test_registry_errors_and_hooks() -> None:
    assert {"random", "popularity", "item-cf", "als", "bpr", "sar", "rp3beta", "user-knn"} <= set(model_names())
    with pytest.raises(ModelError, match="unknown model 'nope'.*valid names: als, bpr"):
        get_model("nope")
    # reserved names import their module on first use, which registers them
    assert get_model("ranker").name == "ranker" and get_model("research-stack").name == "research-stack"
    registry.RESERVED["later"] = "pipeline.no_such_module"
    try:
        with pytest.raises(ModelError, match="'later' is provided by pipeline.no_such_module"):
            get_model("later")
    finally:
        registry.RESERVED.pop("later", None)

    class Echo(registry.PopularityModel):
        name = "echo"

    try:
        register_model("echo", Echo)
        assert isinstance(get_model("echo"), Echo)
        with pytest.raises(ModelError, match="already registered"):
            register_model("echo", Echo)
    finally:
        registry._REGISTRY.pop("echo", None)


class TestALSBagged(ModelContract):
    name = "als"
    params = {"factors": 4, "regularization": 0.1, "iterations": 30, "seeds": 3, "num_threads": 1}


class TestALSBM25(ModelContract):
    name = "als"
    params = {"factors": 4, "regularization": 0.1, "iterations": 30, "weighting": "bm25", "num_threads": 1}


def test_als_bm25_fits_and_folds_in_on_the_weighted_matrix() -> None:
    """``weighting="bm25"``: the fit is train_als on the BM25-weighted matrix, and a supplied history is
    weighted with the training statistics before the fold-in (an unweighted fold-in scores differently)."""
    from pipeline.recall.factors import BM25Weights, fold_in, train_als

    kw = {"factors": 4, "regularization": 0.1, "iterations": 10, "seed": 3, "num_threads": 1}
    m = get_model("als", weighting="bm25", bm25_k1=5.0, bm25_b=0.75, **kw).fit(TRAIN, ITEMS)
    w = BM25Weights.fit(m.user_items, k1=5.0, b=0.75)
    uf, itf, _ = train_als(w.transform(m.user_items), factors=4, regularization=0.1, alpha=3.0, iterations=10,
                           seed=3, num_threads=1)
    np.testing.assert_array_equal(m.item_factors, itf)
    np.testing.assert_array_equal(m.user_factors, uf)
    h = m.matrix(pd.DataFrame({"user_id": [3, 3, 3], "item_id": [10, 11, 13]}))[[3]]
    want = fold_in(w.transform(h), itf, 0.1, alpha=3.0) @ itf.T
    np.testing.assert_allclose(m.score([3], h), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(m.score([3], h), fold_in(h, itf, 0.1, alpha=3.0) @ itf.T, atol=1e-3)
    plain = get_model("als", **kw).fit(TRAIN, ITEMS)
    assert not np.allclose(plain.item_factors, m.item_factors)
    with pytest.raises(ModelError, match="unknown weighting"):
        get_model("als", weighting="tfidf")


class TestEASE(ModelContract):
    name = "ease"
    params = {"l2": 1.0}


class TestEDLAE(ModelContract):
    name = "edlae"
    params = {"l2": 1.0, "dropout": 0.25}


class TestDLAE(ModelContract):
    name = "edlae"
    params = {"l2": 1.0, "dropout": 0.25, "zero_diagonal": False}


def test_als_one_seed_is_the_single_fit() -> None:
    """``seeds=1`` (the default) is the plain fit: the same factors and scores as before bagging."""
    from pipeline.recall.factors import fold_in, train_als

    kw = {"factors": 4, "regularization": 0.1, "iterations": 10, "seed": 3, "num_threads": 1}
    m = get_model("als", **kw).fit(TRAIN, ITEMS)
    m1 = get_model("als", seeds=1, **kw).fit(TRAIN, ITEMS)
    uf, itf, _ = train_als(m.user_items, factors=4, regularization=0.1, alpha=3.0, iterations=10, seed=3,
                           num_threads=1)
    np.testing.assert_array_equal(m.user_factors, uf)
    np.testing.assert_array_equal(m.item_factors, itf)
    np.testing.assert_array_equal(m.score([0, 3, 6]), m1.score([0, 3, 6]))
    h = m.matrix(pd.DataFrame({"user_id": [3, 3], "item_id": [10, 13]}))[[3]]
    np.testing.assert_allclose(m.score([3], h), fold_in(h, itf, 0.1, alpha=3.0) @ itf.T, rtol=1e-5, atol=1e-6)


def test_als_bagging_averages_the_fits_and_is_deterministic() -> None:
    """``seeds=n`` scores are the mean of n single fits with seeds seed..seed+n-1, fitted or folded in."""
    kw = {"factors": 4, "regularization": 0.1, "iterations": 10, "num_threads": 1}
    bag = get_model("als", seed=5, seeds=3, **kw).fit(TRAIN, ITEMS)
    singles = [get_model("als", seed=5 + k, **kw).fit(TRAIN, ITEMS) for k in range(3)]
    users = [0, 3, 6, 999]  # 999: unknown, popularity as for any model
    mean = np.mean([s.score(users) for s in singles], axis=0)
    np.testing.assert_allclose(bag.score(users), mean, rtol=1e-5, atol=1e-6)
    assert bag.user_factors.shape == (7, 12) and bag.item_factors.shape == (7, 12)
    h = bag.matrix(pd.DataFrame({"user_id": [3, 3, 3], "item_id": [10, 13, 14]}))[[3]]
    np.testing.assert_allclose(bag.score([3], h), np.mean([s.score([3], h) for s in singles], axis=0),
                               rtol=1e-5, atol=1e-6)
    again = get_model("als", seed=5, seeds=3, **kw).fit(TRAIN, ITEMS)
    np.testing.assert_array_equal(bag.score(users), again.score(users))
    assert not np.array_equal(bag.score(users), singles[0].score(users))
    with pytest.raises(ModelError, match="seeds"):
        get_model("als", seeds=0)


def test_bpr_bagging_averages_the_fits() -> None:
    kw = {"factors": 4, "learning_rate": 0.05, "iterations": 20, "num_threads": 1}
    bag = get_model("bpr", seed=1, seeds=2, **kw).fit(TRAIN, ITEMS)
    singles = [get_model("bpr", seed=1 + k, **kw).fit(TRAIN, ITEMS) for k in range(2)]
    np.testing.assert_allclose(bag.score([0, 3]), np.mean([s.score([0, 3]) for s in singles], axis=0),
                               rtol=1e-5, atol=1e-6)


def test_edlae_known_weights() -> None:
    """Two items always together: G = [[2, 2], [2, 2]]. EASE with l2: B[0, 1] = 2 / (2 + l2); EDLAE adds
    p / (1 - p) * G_ii to each l2, DLAE keeps the diagonal and solves (G + L) B = G."""
    train = pd.DataFrame({"user_id": [0, 0, 1, 1], "item_id": [10, 11, 10, 11]})
    ease = get_model("ease", l2=1.0).fit(train)
    np.testing.assert_allclose(ease.B, [[0.0, 2 / 3], [2 / 3, 0.0]], atol=1e-6)
    # p = 0.5: lambda_i = 1 + 1 * 2 = 3, so B[0, 1] = 2 / (2 + 3)
    ed = get_model("edlae", l2=1.0, dropout=0.5).fit(train)
    np.testing.assert_allclose(ed.B, [[0.0, 0.4], [0.4, 0.0]], atol=1e-6)
    np.testing.assert_allclose(get_model("ease", l2=1.0, dropout=0.5).fit(train).B, ed.B)
    # DLAE: (G + 3 I) B = G  ->  B = [[5, 2], [2, 5]]^-1 [[2, 2], [2, 2]] = 2/7 everywhere
    dl = get_model("edlae", l2=1.0, dropout=0.5, zero_diagonal=False).fit(train)
    np.testing.assert_allclose(dl.B, np.full((2, 2), 2 / 7), atol=1e-6)
    # per-item l2 differs with popularity: item 12 (1 user) is shrunk less than item 10 (3 users)
    t2 = pd.DataFrame({"user_id": [0, 0, 1, 1, 2, 2], "item_id": [10, 11, 10, 11, 10, 12]})
    G = np.array([[3, 2, 1], [2, 2, 0], [1, 0, 1]], float)
    L = 1.0 + 0.5 / 0.5 * np.diag(G)
    P = np.linalg.inv(G + np.diag(L))
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0.0)
    np.testing.assert_allclose(get_model("edlae", l2=1.0, dropout=0.5).fit(t2).B, B, atol=1e-6)
    assert get_model("edlae").dropout == 0.5 and get_model("ease").dropout == 0.0
    with pytest.raises(ModelError, match="dropout"):
        get_model("edlae", dropout=1.0)


class TestUserEASE(ModelContract):
    name = "user-ease"
    params = {"l2": 1.0}


class TestMultVAE(ModelContract):
    name = "mult-vae"
    params = {"hidden": 16, "latent": 4, "dropout": 0.0, "epochs": 150, "anneal_steps": 50,
              "learning_rate": 0.01}


def test_user_ease_known_scores() -> None:
    """Users 0 and 1 both have {10, 11}, user 2 has {12}: with l2 = 1, (X X^T + I)^-1 gives
    B[1, 0] = B[0, 1] = 2/3, so user 0 scores 2/3 x user 1's row; a new history {10} folds in as
    b = h X^T P = [1/5, 1/5, 0] and scores b X = [2/5, 2/5, 0]."""
    train = pd.DataFrame({"user_id": [0, 0, 1, 1, 2], "item_id": [10, 11, 10, 11, 12]})
    m = get_model("user-ease", l2=1.0).fit(train)
    np.testing.assert_allclose(m.score([0, 2]), [[2 / 3, 2 / 3, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)
    h = m.matrix(pd.DataFrame({"user_id": [0], "item_id": [10]}))[[0]]
    np.testing.assert_allclose(m.score([0], h), [[0.4, 0.4, 0.0]], atol=1e-6)
    with pytest.raises(ModelError, match="max_users"):
        get_model("user-ease", max_users=2).fit(train)


def test_mult_vae_deterministic_and_folds_in() -> None:
    """Same seed, same scores; another seed differs; a supplied history changes the scores."""
    kw = {"hidden": 8, "latent": 2, "epochs": 5}
    a = get_model("mult-vae", seed=1, **kw).fit(TRAIN, ITEMS)
    np.testing.assert_array_equal(a.score([0, 3]), get_model("mult-vae", seed=1, **kw).fit(TRAIN, ITEMS).score([0, 3]))
    assert not np.array_equal(a.score([0, 3]), get_model("mult-vae", seed=2, **kw).fit(TRAIN, ITEMS).score([0, 3]))
    h = a.matrix(pd.DataFrame({"user_id": [3], "item_id": [13]}))[[3]]
    assert not np.allclose(a.score([3], h), a.score([3]))


def test_mult_vae_bagging_averages_the_nets() -> None:
    kw = {"hidden": 8, "latent": 2, "epochs": 3}
    bag = get_model("mult-vae", seed=4, seeds=2, **kw).fit(TRAIN, ITEMS)
    singles = [get_model("mult-vae", seed=4 + k, **kw).fit(TRAIN, ITEMS) for k in range(2)]
    np.testing.assert_allclose(bag.score([0, 6]), np.mean([s.score([0, 6]) for s in singles], axis=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(get_model("mult-vae", seed=4, **kw).fit(TRAIN, ITEMS).score([0]),
                                  singles[0].score([0]))


def test_item_cf_with_every_neighbour_refuses_a_catalogue_too_large_for_memory() -> None:
    train = pd.DataFrame({"user_id": np.repeat(np.arange(20), 5), "item_id": np.arange(100) % 37})
    # 37 items x 36 neighbours x 12 bytes = 1.5e-5 GiB; 5 neighbours = 2.1e-6 GiB
    with pytest.raises(ModelError, match="36 neighbours for each of 37 items") as err:
        get_model("item-cf", max_gib=1e-5).fit(train)
    assert "neighbours" in err.value.hint
    assert get_model("item-cf", neighbours=5, max_gib=1e-5).fit(train).similarity.shape == (37, 37)


class TestSLIM(ModelContract):
    name = "slim"
    params = {"alpha": 0.01, "l1_ratio": 0.01}


class TestSLIMNeighboursRatings(ModelContract):
    name = "slim"
    params = {"alpha": 0.05, "l1_ratio": 0.1, "neighbours": 2, "use_ratings": True}


class TestHigherEASE(ModelContract):
    name = "ease-pairs"
    params = {"l2": 1.0, "l2_pairs": 1.0, "pairs": 6, "min_support": 1, "rho": 1.0}


def test_slim_known_weights() -> None:
    """Two items always together, two users: item 10's column is y = [1, 1] on x = [1, 1], so
    scikit-learn's 1/(2n) |y - w x|^2 + a r |w| + a (1 - r) / 2 w^2 has its minimum at
    w = (1 - a r) / (1 + a (1 - r)); a = 0.1, r = 0.5: 0.95 / 1.05. The own weight stays 0."""
    train = pd.DataFrame({"user_id": [0, 0, 1, 1], "item_id": [10, 11, 10, 11]})
    m = get_model("slim", alpha=0.1, l1_ratio=0.5).fit(train)
    w = 0.95 / 1.05
    np.testing.assert_allclose(m.W, [[0.0, w], [w, 0.0]], atol=1e-6)
    h = m.matrix(pd.DataFrame({"user_id": [0], "item_id": [11]}))[[0]]
    np.testing.assert_allclose(m.score([0], h), [[w, 0.0]], atol=1e-6)
    # an L1 share past the fit's gain zeroes the weight: a r >= 1
    assert (get_model("slim", alpha=2.0, l1_ratio=0.5).fit(train).W == 0).all()
    # non-negative weights, zero diagonal on the contract's two clusters
    big = get_model("slim", alpha=0.01, l1_ratio=0.01).fit(TRAIN, ITEMS)
    assert (big.W >= 0).all() and (np.diag(big.W) == 0).all()
    with pytest.raises(ModelError, match="l1_ratio"):
        get_model("slim", l1_ratio=1.5)
    with pytest.raises(ModelError, match="max_items"):
        get_model("slim", max_items=1).fit(train)


def test_ease_pairs_learns_an_and() -> None:
    """Item 12 is had exactly by the user who has both 10 and 11 (users with only 10 or only 11 do not):
    no sum of single-item weights says "both", the pair (10, 11) does. As the penalties go to 0 the
    exact fit is D[(10, 11), 12] = 1 and B[10, 12] = B[11, 12] = 0, where plain EASE spreads it over
    the single items (B[10, 12] = 1/4 at l2 = 0.01). A pair never predicts its own items."""
    train = pd.DataFrame({"user_id": [0, 1, 2, 2, 2, 3, 4], "item_id": [10, 11, 10, 11, 12, 10, 11]})
    kw = {"l2": 0.01, "l2_pairs": 0.01, "min_support": 1, "rho": 1.0, "iterations": 50}
    m = get_model("ease-pairs", pairs=1, **kw).fit(train)
    assert m.pair_items.tolist() == [[0, 1]]  # all three pairs have 1 user: ties go by index
    assert m.D[0, 0] == 0.0 and m.D[0, 1] == 0.0
    np.testing.assert_allclose(m.D[0, 2], 1.0, atol=0.03)
    np.testing.assert_allclose(m.B[:2, 2], [0.0, 0.0], atol=0.03)
    ease = get_model("ease", l2=0.01).fit(train)
    np.testing.assert_allclose(ease.B[:2, 2], [0.25, 0.25], atol=0.01)
    h_one = m.matrix(pd.DataFrame({"user_id": [0], "item_id": [10]}))[[0]]
    h_both = m.matrix(pd.DataFrame({"user_id": [0, 0], "item_id": [10, 11]}))[[0]]
    assert m.score([0], h_one)[0, 2] < 0.03 < 0.97 < m.score([0], h_both)[0, 2]
    # no pair selected (pairs=0, or none frequent enough): plain EASE
    for extra in ({"pairs": 0}, {"pairs": 5, "min_support": 2}):
        plain = get_model("ease-pairs", **{**kw, **extra}).fit(train)
        assert len(plain.pair_items) == 0
        np.testing.assert_allclose(plain.B, ease.B, atol=1e-6)
    with pytest.raises(ModelError, match="pairs"):
        get_model("ease-pairs", pairs=-1)


class TestRecVAE(ModelContract):
    name = "recvae"
    params = {"hidden": 16, "latent": 4, "dropout": 0.0, "epochs": 60, "learning_rate": 0.02}


def test_recvae_deterministic_and_folds_in() -> None:
    """Same seed, same scores; another seed differs; a supplied history changes the scores; the composite
    prior's previous-encoder copy and the alternating passes do not break the seeding."""
    kw = {"hidden": 8, "latent": 2, "epochs": 3, "enc_epochs": 2, "batch_size": 4}
    a = get_model("recvae", seed=1, **kw).fit(TRAIN, ITEMS)
    np.testing.assert_array_equal(a.score([0, 3]), get_model("recvae", seed=1, **kw).fit(TRAIN, ITEMS).score([0, 3]))
    assert not np.array_equal(a.score([0, 3]), get_model("recvae", seed=2, **kw).fit(TRAIN, ITEMS).score([0, 3]))
    h = a.matrix(pd.DataFrame({"user_id": [3], "item_id": [13]}))[[3]]
    assert not np.allclose(a.score([3], h), a.score([3]))
    with pytest.raises(ModelError, match="epochs"):
        get_model("recvae", epochs=0)


def test_recvae_seeds_bag_the_fits_of_consecutive_seeds() -> None:
    """``seeds=3`` scores the mean of the logits of the fits with seeds s, s + 1, s + 2 (as the ml-100k
    probe's bag was measured); ``seeds=1`` is the single fit."""
    kw = {"hidden": 8, "latent": 2, "epochs": 2, "enc_epochs": 1, "batch_size": 4}
    singles = [get_model("recvae", seed=5 + k, **kw).fit(TRAIN, ITEMS).score([0, 3]) for k in range(3)]
    bag = get_model("recvae", seed=5, seeds=3, **kw).fit(TRAIN, ITEMS).score([0, 3])
    np.testing.assert_allclose(bag, np.mean(singles, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(get_model("recvae", seed=5, seeds=1, **kw).fit(TRAIN, ITEMS).score([0, 3]),
                                  singles[0])
    with pytest.raises(ModelError, match="seeds"):
        get_model("recvae", seeds=0)


def test_nightly_shop_takes_the_datasets_item_descriptors() -> None:
    """The nightly model's shop has the dataset's categories, brands and titles (a shop would), not stubs;
    an item the descriptors lack, or whose category is blank, keeps the stub's values."""
    from pipeline.evaluate.nightly_model import NightlyModel

    m = NightlyModel()
    m.set_item_descriptors(pd.DataFrame({"item_id": [10, 11, 12, 99], "title": ["Tea", None, "Pot", "x"],
                                         "category": ["Grocery>Tea", " ", "Home>Kitchen", "y"],
                                         "brand": ["b1", "b2", None, "z"]}))
    m.user_ids, m.item_ids = np.array([0, 1]), np.array([10, 11, 12, 13])
    items = m._shop(TRAIN.head(2).assign(user_id=[0, 1], item_id=[10, 11])).items.set_index("item_id")
    assert items.loc[[10, 11, 12, 13], "category"].tolist() == ["Grocery>Tea", "unknown", "Home>Kitchen", "unknown"]
    assert items.loc[[10, 11, 12, 13], "title"].tolist() == ["Tea", "item 11", "Pot", "item 13"]
    assert items.loc[10, "brand"] == "b1" and items.loc[11, "brand"] == "b2" and pd.isna(items.loc[13, "brand"])
    assert 99 not in items.index  # descriptors never add items: the catalogue is the protocol's
