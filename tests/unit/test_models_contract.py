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
    assert get_model("ranker").name == "ranker" and get_model("pipeline").name == "pipeline"
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
