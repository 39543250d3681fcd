"""Feature transforms and finalizers on tiny frames whose right answers are known (no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.features.images import dhash, hamming, image_features, image_row
from pipeline.features.items import (
    FIXED_POINT,
    PRIOR_STRENGTH,
    finalize_item_features,
    item_event_sums,
    smoothed_rate,
)
from pipeline.features.tables import item_rows, user_rows
from pipeline.features.text import embed_tfidf, item_texts, l2_normalise
from pipeline.features.users import finalize_user_features, merge_partials, user_partials

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
W = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
HL = {"view": 7.0, "click": 10.0, "add_to_cart": 14.0, "purchase": 30.0}


def _events(rows: list[tuple]) -> pd.DataFrame:
    """rows: (event_id, user_id, item_id, event_type, days_before_as_of, query, session)."""
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event_type", "days", "query", "session_id"])
    df["ts"] = [AS_OF - timedelta(days=d) for d in df["days"]]
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df["item_id"] = df["item_id"].astype("Int64")
    df["quantity"] = 1
    return df.drop(columns="days")


ITEMS = pd.DataFrame({
    "item_id": [1, 2, 3], "title": ["Red kettle", "Blue kettle", "积木 玩具"], "description": ["", "", ""],
    "category": ["Home>Kitchen", "Home>Kitchen", "Toys>Blocks"], "brand": ["A", "B", None],
    "price": [10.0, 30.0, 5.0], "in_stock": [True] * 3, "visible": [True] * 3,
    "created_at": pd.to_datetime(["2026-11-14", "2026-11-20", "2026-01-01"], utc=True),
})

EVENTS = _events([
    (1, 10, 1, "view", 7.0, None, "s1"),
    (2, 10, 1, "click", 0.0, None, "s1"),
    (3, 10, 2, "view", 1.0, None, "s2"),
    (4, 10, 2, "purchase", 1.0, None, "s2"),
    (5, 11, None, "search", 2.0, "Kettle ", "s3"),
    (6, 11, 3, "view", 10.0, None, "s3"),
    (7, 10, None, "search", 0.5, "kettle", "s2"),
])


def test_item_sums_decay_by_type_half_life() -> None:
    s = item_event_sums(EVENTS, AS_OF, W, HL)
    assert len(s) == 5  # searches carry no item
    row = s[s["item_id"] == 1].sum()
    # view 7 days old, half-life 7: weight 1 * 0.5; click now: 2 * 1.
    assert row["activity"] / FIXED_POINT == pytest.approx(2.5)  # exact sums: fixed point
    assert row["decayed_view"] / FIXED_POINT == pytest.approx(0.5)
    assert row["n_click"] == 1 and row["events"] == 2 and row["recent_events"] == 1


def test_finalize_rates_price_and_new_items() -> None:
    sums = item_event_sums(EVENTS, AS_OF, W, HL).groupby("item_id").sum()
    f = finalize_item_features(ITEMS, sums, AS_OF).set_index("item_id")
    # Prior: clicks / (views + clicks) over the catalogue = 1 / 4.
    assert f.loc[1, "ctr"] == pytest.approx(smoothed_rate(1, 2, 0.25))
    assert f.loc[1, "ctr"] == pytest.approx((1 + PRIOR_STRENGTH * 0.25) / (2 + PRIOR_STRENGTH))
    assert f.loc[2, "cvr"] > f.loc[3, "cvr"]  # one purchase on one view beats none
    assert f.loc[1, "price_rel_category"] == pytest.approx(0.5)  # 10 vs the median 20 of Home>Kitchen
    assert f.loc[3, "price_rel_category"] == pytest.approx(1.0)
    assert f.loc[1, "age_days"] == pytest.approx(10.0)
    assert f.loc[1, "top_category"] == "Home"
    assert list(f.index) == [1, 2, 3]
    assert {"item_id", "category", "brand", "price", "in_stock", "visible", "created_at", "activity", "events",
            "recent_events", "purchases", "trend", "top_category"} <= set(f.reset_index().columns)


def test_smoothed_rate_without_data_is_the_prior() -> None:
    assert smoothed_rate(pd.Series([0]), pd.Series([0]), 0.1).iloc[0] == pytest.approx(0.1)


def _user_feats(parts: list[pd.DataFrame], seq_len: int = 50) -> pd.DataFrame:
    partials = [user_partials(p, ITEMS, AS_OF, W, HL, seq_len) for p in parts]
    users = pd.DataFrame({"user_id": [10, 11, 12], "created_at": pd.to_datetime(["2026-01-01"] * 3, utc=True)})
    return finalize_user_features(users, merge_partials(partials, seq_len), ITEMS, AS_OF).set_index("user_id")


def test_user_features_known_answer() -> None:
    f = _user_feats([EVENTS])
    assert f.loc[10, "n_view"] == 2 and f.loc[10, "n_purchase"] == 1 and f.loc[10, "monetary"] == 30.0
    assert f.loc[10, "recency_days"] == pytest.approx(0.0)
    assert f.loc[10, "seq_item_ids"] == [1, 2, 2, 1]  # oldest first, searches left out
    assert f.loc[10, "seq_event_types"] == ["view", "view", "purchase", "click"]
    assert f.loc[10, "seq_gap_s"][:2] == [0.0, 6 * 86400.0]
    assert f.loc[10, "category_affinity_keys"] == ["Home"]
    assert f.loc[11, "category_affinity_keys"] == ["Toys"]
    assert f.loc[11, "search_terms"] == ["kettle"]  # trimmed and lower-cased
    assert f.loc[10, "sessions"] == 2 and f.loc[10, "items"] == 2
    assert bool(f.loc[12, "new_user"]) and f.loc[12, "seq_item_ids"] == [] and f.loc[12, "events"] == 0


def test_user_partials_merge_like_one_partition() -> None:
    """Split by event_id ranges (as extraction does): the merged result equals the single-partition one."""
    whole = _user_feats([EVENTS], seq_len=2)
    split = _user_feats([EVENTS.iloc[:3], EVENTS.iloc[3:5], EVENTS.iloc[5:]], seq_len=2)
    pd.testing.assert_frame_equal(whole, split)
    assert whole.loc[10, "seq_item_ids"] == [2, 1]


def test_tfidf_embeddings_are_unit_length_and_group_similar_titles() -> None:
    titles = ["红色 水壶 电热", "红色 水壶 不锈钢", "running shoes", "trail running shoes"]
    texts = item_texts(pd.DataFrame({"title": titles, "description": [None, "", "", ""]})).tolist()
    z = embed_tfidf(texts, dim=8)
    assert z.shape == (4, 8) and z.dtype == np.float32
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    sim = z @ z.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[1, 3]
    assert np.array_equal(z, embed_tfidf(texts, dim=8))  # deterministic
    assert np.allclose(l2_normalise(np.zeros((1, 3))), 0.0)


def test_image_features_and_hash(tmp_path) -> None:
    from PIL import Image

    a = np.zeros((16, 16, 3), dtype=np.uint8)
    a[:, :8] = 255
    Image.fromarray(a).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    r = image_row(tmp_path / "a.png")
    assert r["has_image"] and len(r["img_hist"]) == 64 and sum(r["img_hist"]) == pytest.approx(1.0)
    assert r["img_mean_r"] == pytest.approx(0.5, abs=0.05)
    assert image_row(tmp_path / "broken.png") == {"has_image": False, "img_error": "UnidentifiedImageError"}
    assert hamming(dhash(Image.fromarray(a)), r["img_hash"]) == 0
    items = pd.DataFrame({"item_id": [1, 2, 3], "image_path": ["a.png", "broken.png", None]})
    f = image_features(items, None, root=tmp_path)
    assert f["item_id"].tolist() == [1, 2] and f["has_image"].tolist() == [True, False]


def test_synthetic_images_are_deterministic(tmp_path) -> None:
    from pipeline.datagen.images import write_item_images

    items = ITEMS.assign(image_path=None)
    a = write_item_images(items, tmp_path / "a", share=1.0, seed=3)
    b = write_item_images(items, tmp_path / "b", share=1.0, seed=3)
    assert a["image_path"].notna().all()
    for pa_, pb in zip(a["image_path"], b["image_path"], strict=True):
        assert Path(pa_).read_bytes() == Path(pb).read_bytes()
    assert items["image_path"].isna().all()  # the input is not modified


def test_table_rows_turn_lists_into_json() -> None:
    import json

    users = _user_feats([EVENTS]).reset_index()
    rows = user_rows(users).set_index("user_id")
    assert json.loads(rows.loc[10, "category_affinity"]) == {"Home": 1.0}
    assert json.loads(rows.loc[10, "sequence"])[0] == {"item_id": 1, "event_type": "view", "gap_s": 0.0}
    assert json.loads(rows.loc[11, "search_terms"]) == ["kettle"]
    sums = item_event_sums(EVENTS, AS_OF, W, HL).groupby("item_id").sum()
    items = item_rows(finalize_item_features(ITEMS, sums, AS_OF))
    assert items["has_image"].eq(False).all() and items["image"].isna().all()
