"""The ranker's recall-score and user-affinity inputs, and what models saved before them still do."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.errors import ModelError
from pipeline.rank.features import (
    AFFINITY_FEATURES,
    BASE_NUMERIC,
    CONTENT_FEATURES,
    NUMERIC_FEATURES,
    PROFILE_FEATURES,
    FeatureSpace,
    UserAffinity,
    UserProfile,
    candidate_tensors,
    item_stats_at,
    user_profile_at,
)
from pipeline.rank.model import SIDECAR_FILE, RankerConfig, RankerModel
from pipeline.recall.candidates import SCORE_COLUMNS

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
W = {"view": 1.0, "purchase": 8.0}
HL = {"view": 1.0, "purchase": 2.0}


def _items() -> pd.DataFrame:
    return pd.DataFrame({"item_id": [1, 2, 3, 4], "category": ["A>x", "A>x", "A>y", "B>z"],
                         "brand": ["p", "q", "p", "r"], "price": [1.0, 2.0, 3.0, 40.0]})


def _events() -> pd.DataFrame:
    """User 5: a view of item 1 one day before the cut-off, a purchase of item 3 two days before, and a
    view of item 4 after the cut-off (must not count)."""
    df = pd.DataFrame({"event_id": [1, 2, 3], "user_id": 5, "item_id": pd.array([1, 3, 4], dtype="Int64"),
                       "event_type": ["view", "purchase", "view"],
                       "ts": [AS_OF - timedelta(days=1), AS_OF - timedelta(days=2), AS_OF + timedelta(hours=1)]})
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def _space(items: pd.DataFrame, numeric: tuple[str, ...] = NUMERIC_FEATURES) -> FeatureSpace:
    return replace(FeatureSpace.fit(items, items["item_id"].to_numpy(), ["als", "popularity"]), numeric=numeric)


@pytest.mark.parametrize("dense", [True, False], ids=["dense tables", "sorted keys"])
def test_affinity_is_the_users_decayed_share_before_the_cutoff(dense: bool, monkeypatch) -> None:
    if not dense:  # the layout a shard with many users x many brands gets
        monkeypatch.setattr("pipeline.rank.features.DENSE_AFFINITY_CELLS", 0)
    items = _items()
    space = _space(items)
    side = space.side_table(items)
    aff = UserAffinity.of(_events(), AS_OF, side, W, HL)
    assert all(isinstance(t, np.ndarray) == dense for t in aff.shares.values())
    w_view, w_buy = 1.0 * 0.5, 8.0 * 0.5  # one half-life old each
    total = w_view + w_buy
    cand = pd.DataFrame({"user_id": [5, 5, 5, 5, 6], "item_id": [1, 2, 3, 4, 1], "source": "als"})
    num = candidate_tensors(cand, side, item_stats_at(_events(), AS_OF, W, HL), space, affinity=aff)["num"]
    got = num[:, [NUMERIC_FEATURES.index(f) for f in AFFINITY_FEATURES]].astype(np.float64)
    price = {1: w_view / total, 2: 0.0, 3: w_buy / total, 4: 0.0}  # four distinct price buckets
    want = np.array([
        # item weight, category share, top share, brand share, price share
        [np.log1p(w_view), w_view / total, 1.0, w_view / total + w_buy / total, price[1]],
        [0.0, w_view / total, 1.0, 0.0, price[2]],  # same shelf as item 1, never touched
        [np.log1p(w_buy), w_buy / total, 1.0, 1.0, price[3]],  # brand p: items 1 and 3
        [0.0, 0.0, 0.0, 0.0, price[4]],  # item 4's only event is after the cut-off
        [0.0] * 5,  # a user without history
    ])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # without an affinity table the same columns are 0 (a caller that has no history)
    bare = candidate_tensors(cand, side, item_stats_at(_events(), AS_OF, W, HL), space)["num"]
    assert not bare[:, [NUMERIC_FEATURES.index(f) for f in AFFINITY_FEATURES]].any()


def test_content_inputs_are_cosines_to_the_users_profile_and_best_recent_item() -> None:
    items = _items()
    space = _space(items)
    side = space.side_table(items)
    aff = UserAffinity.of(_events(), AS_OF, side, W, HL)
    # 2-d vectors: item 1 points along x, item 3 along y (the user's history), 2 between them, 4 opposite to 1
    vec = {1: [1.0, 0.0], 2: [1.0, 1.0], 3: [0.0, 1.0], 4: [-1.0, 0.0]}
    emb = pd.DataFrame({"item_id": list(vec), "embedding": [np.asarray(v, np.float32) for v in vec.values()]})
    cand = pd.DataFrame({"user_id": [5, 5, 5, 6], "item_id": [2, 4, 1, 2], "source": "als"})
    num = candidate_tensors(cand, side, item_stats_at(_events(), AS_OF, W, HL), space, emb=emb, affinity=aff)["num"]
    got = num[:, [NUMERIC_FEATURES.index(f) for f in CONTENT_FEATURES]].astype(np.float64)
    w_view, w_buy = 0.5, 4.0  # the profile leans to item 3 (the purchase): (0.5, 4) / |.|
    prof = np.array([w_view, w_buy]) / np.hypot(w_view, w_buy)
    want = np.array([
        [prof @ np.array([1, 1]) / np.sqrt(2), 1 / np.sqrt(2)],  # between both history items
        [-prof[0], 0.0],  # opposite to item 1, orthogonal to item 3: best single match 0
        [prof[0], 1.0],  # item 1 itself is in the history
        [0.0, 0.0],  # no history
    ])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    bare = candidate_tensors(cand, side, item_stats_at(_events(), AS_OF, W, HL), space, affinity=aff)["num"]
    assert not bare[:, [NUMERIC_FEATURES.index(f) for f in CONTENT_FEATURES]].any()  # no vectors: 0
    # a chunk of one candidate row at a time gives the same figures (memory follows the chunk)
    rows = np.vstack([np.asarray(vec[i], np.float32) for i in cand["item_id"]])
    hist = np.vstack([np.asarray(vec.get(i, [0.0, 0.0]), np.float32) for i in aff.items])
    users = cand["user_id"].to_numpy(dtype=np.int64)
    np.testing.assert_allclose(aff.content_features(users, rows, hist, chunk_rows=1), want, rtol=1e-5, atol=1e-6)


def _profile_want(price: float) -> list[float]:
    """User 5's profile at AS_OF (view of item 1 one day before, purchase of item 3 at 3.0 two days before)
    for a candidate at ``price``: the decayed mean price weighs the view 0.5 and the purchase 8 * 0.5."""
    mean = (0.5 * 1.0 + 4.0 * 3.0) / 4.5
    return [np.log1p(1.0), np.log1p(2), np.log1p(1), np.log1p(3.0), 0.5, 0.0, 0.0, 0.5, 0.0, 0.0, np.log1p(2),
            np.log(price / mean)]


def test_profile_is_the_user_features_stage_definition_before_the_cutoff() -> None:
    """RFM, event-type shares, sessions, items and price vs the user's mean, from the user_features
    functions; a user without events gets the capped recency and zeros."""
    items = _items()
    space = _space(items)
    feats = user_profile_at(_events(), np.array([5, 6]), AS_OF, items, W, HL)
    assert feats["events"].tolist() == [2, 0] and feats["recency_days"].iloc[0] == pytest.approx(1.0)
    cand = pd.DataFrame({"user_id": [5, 5, 6], "item_id": [1, 4, 4], "source": "als"})
    num = candidate_tensors(cand, space.side_table(items), item_stats_at(_events(), AS_OF, W, HL), space,
                            profile=UserProfile.of(feats, items))["num"]
    got = num[:, [NUMERIC_FEATURES.index(f) for f in PROFILE_FEATURES]].astype(np.float64)
    new_user = [np.log1p(365.0)] + [0.0] * (len(PROFILE_FEATURES) - 1)
    np.testing.assert_allclose(got, [_profile_want(1.0), _profile_want(40.0), new_user], rtol=1e-5, atol=1e-6)


def test_training_window_profile_ignores_events_after_the_cutoff() -> None:
    """The training path (encode_groups at a window's cut-off) gives the same inputs whether or not the
    history holds events at or after the cut-off; a later cut-off does see them."""
    from pipeline.rank.data import Groups, events_before

    items = _items()
    m = RankerModel(RankerConfig(seq_len=4, event_weights=W, half_life_days=HL))
    m.space = _space(items)
    side = m.space.side_table(items)
    ev = _events()  # its view of item 4 one hour after AS_OF must not count
    later = pd.DataFrame({"event_id": [10, 11, 12], "user_id": 5, "item_id": pd.array([4, 4, None], dtype="Int64"),
                          "event_type": ["purchase", "purchase", "search"], "query": [None, None, "lamp"],
                          "ts": pd.to_datetime([AS_OF, AS_OF + timedelta(hours=2), AS_OF + timedelta(hours=3)],
                                               utc=True)})
    full = pd.concat([ev, later], ignore_index=True)
    rows = pd.DataFrame({"user_id": [5, 5], "item_id": [1, 4], "seq": [0, 0], "source": "als",
                         "recall_score": 0.5, "p_recall": 0.3})
    g = Groups(rows, np.ones(1), np.array([5]), np.array([5]), [AS_OF], 2)
    stats = item_stats_at(ev, AS_OF, W, HL)
    cols = [NUMERIC_FEATURES.index(f) for f in PROFILE_FEATURES]
    a = m.encode_groups(g, events_before(ev, AS_OF), AS_OF, side, stats, items=items).cand["num"]
    b = m.encode_groups(g, full, AS_OF, side, stats, items=items).cand["num"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a[0][:, cols], [_profile_want(1.0), _profile_want(40.0)], rtol=1e-5, atol=1e-6)
    c = m.encode_groups(g, full, AS_OF + timedelta(days=1), side, stats, items=items).cand["num"]
    assert c[0, 0, cols[1]] == pytest.approx(np.log1p(6), rel=1e-6)  # the later cut-off sees all six


def test_each_sources_own_score_is_an_input_and_absent_is_zero() -> None:
    items = _items()
    space = _space(items)
    cand = pd.DataFrame({"user_id": [5, 5], "item_id": [1, 2], "source": ["als", None],
                         "score_als": [0.7, np.nan], "score_item_cf": [0.2, 0.0]})
    num = candidate_tensors(cand, space.side_table(items), item_stats_at(_events(), AS_OF, W, HL), space)["num"]
    cols = {c: num[:, NUMERIC_FEATURES.index(c)] for c in SCORE_COLUMNS}
    np.testing.assert_allclose(cols["score_als"], [0.7, 0.0], rtol=1e-6)
    np.testing.assert_allclose(cols["score_item_cf"], [0.2, 0.0], rtol=1e-6)
    assert not cols["score_content"].any()  # a column the frame lacks


def test_unknown_numeric_feature_names_the_cause() -> None:
    items = _items()
    space = _space(items, numeric=(*BASE_NUMERIC, "from_a_newer_build"))
    cand = pd.DataFrame({"user_id": [5], "item_id": [1]})
    with pytest.raises(ModelError, match="from_a_newer_build"):
        candidate_tensors(cand, space.side_table(items), item_stats_at(_events(), AS_OF, W, HL), space)


def _tiny_model(numeric: tuple[str, ...]) -> RankerModel:
    torch.manual_seed(0)
    items = _items()
    m = RankerModel(RankerConfig(dim=8, heads=2, hidden=16, seq_len=4))
    m.space = _space(items, numeric)
    m.net = m._build_net(m.space.side_table(items)).eval()
    with torch.no_grad():
        for p in m.net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def test_a_model_saved_before_the_new_inputs_loads_and_scores_as_it_did(tmp_path) -> None:
    """A sidecar without ``numeric`` (saved by the build before these inputs): it loads with the first
    six inputs, its digest still checks, and it scores as the model in memory (within float rounding)."""
    old = _tiny_model(BASE_NUMERIC)
    old.save(tmp_path / "m")
    side = json.loads((tmp_path / "m" / SIDECAR_FILE).read_text())
    del side["feature_space"]["numeric"]
    (tmp_path / "m" / SIDECAR_FILE).write_text(json.dumps(side))
    back = RankerModel.load(tmp_path / "m")
    assert back.space.numeric == BASE_NUMERIC and back.net.cfg.n_numeric == len(BASE_NUMERIC)
    cand = pd.DataFrame({"user_id": [5, 5, 5], "item_id": [1, 2, 4], "source": "als", "recall_score": 0.5,
                         "p_recall": 0.3, "score_als": 0.9})
    np.testing.assert_allclose(back.score(cand, _events(), _items(), AS_OF),
                               old.score(cand, _events(), _items(), AS_OF), rtol=1e-6)
    new = _tiny_model(NUMERIC_FEATURES)
    assert new.net.cfg.n_numeric == len(NUMERIC_FEATURES) and new.config_digest != old.config_digest


def test_calibration_of_separable_logits_stays_finite_and_below_one() -> None:
    """Positives far above their negatives (a fully predictive sequence): Platt's smoothed targets keep
    the slope finite, so the best candidates do not all score exactly 1.0 (a tie in the fused order)."""
    m = RankerModel(RankerConfig())
    g = torch.Generator().manual_seed(0)
    pos = 12 + 30 * torch.rand(200, 1, generator=g)
    neg = -14 + 40 * torch.rand(200, 8, generator=g)
    neg = torch.minimum(neg, pos - 1)

    class _Data:
        def __len__(self) -> int:
            return 200

    m._group_logits = lambda data, dev: torch.cat([pos, neg], dim=1)  # type: ignore[method-assign]
    a, b = m._calibrate(_Data())  # type: ignore[arg-type]
    assert 0 < a < 1
    p = torch.sigmoid(a * torch.cat([pos, neg], dim=1) + b)
    assert float(p.max()) < 1.0 and float(p[:, 0].min()) > float(p[:, 1:].median())


def test_embedding_rows_are_stacked_once_per_frame_and_dropped_with_it() -> None:
    """The scoring path reads the run's one embeddings frame per shard: its rows are stacked once, a new frame
    (other vectors) is read afresh, and the stacked matrix goes when its frame does."""
    import gc

    from pipeline.rank import features as F

    a = pd.DataFrame({"item_id": [3, 1, 2], "embedding": [np.array([3.0, 0.0]), np.array([1.0, 0.0]),
                                                           np.array([2.0, 0.0])]})
    np.testing.assert_array_equal(F.embedding_matrix(a, np.array([2, 9, 3]), 2), [[2, 0], [0, 0], [3, 0]])
    assert F._STACKED[0] is not None and F._STACKED[0][0]() is a
    b = a.assign(embedding=[np.array([0.0, 3.0]), np.array([0.0, 1.0]), np.array([0.0, 2.0])])
    np.testing.assert_array_equal(F.embedding_matrix(b, np.array([1]), 3), [[0, 1, 0]])
    del a, b
    gc.collect()
    assert F._STACKED[0] is None
