"""The synthetic shop generator: determinism, structure, funnels, timing and distribution checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.datagen import TIERS, build_shop, tier_sizes
from pipeline.errors import ConfigError
from pipeline.frames import EVENT_COLUMNS, EVENT_TYPES, ITEM_COLUMNS, USER_COLUMNS, ShopFrames

END = datetime(2026, 11, 24, tzinfo=UTC)
DAYS = 10
FUNNEL = ["view", "click", "add_to_cart", "purchase"]


@pytest.fixture(scope="module")
def shop() -> tuple[ShopFrames, pd.DataFrame]:
    return build_shop(300, 100, DAYS, seed=7, end=END)


@pytest.fixture(scope="module")
def big_catalog() -> ShopFrames:
    """Many items, few users: for shares of items that 100 items would make noisy."""
    return build_shop(20, 5_000, 2, seed=3, end=END)[0]


def test_contract_columns_and_types(shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    frames, tastes = shop
    assert list(frames.users.columns) == USER_COLUMNS
    assert list(frames.items.columns) == ITEM_COLUMNS
    assert list(frames.events.columns) == EVENT_COLUMNS
    assert list(tastes.columns) == ["user_id", "dimension", "key", "weight"]
    for df, col in [(frames.users, "created_at"), (frames.items, "created_at"), (frames.events, "ts")]:
        assert str(df[col].dt.tz) == "UTC"
    assert set(frames.events["event_type"]) == set(EVENT_TYPES)
    assert frames.users["user_id"].is_unique and frames.items["item_id"].is_unique
    assert (frames.events["quantity"] >= 1).all()
    assert frames.events["session_id"].map(type).eq(str).all()


def test_same_seed_same_shop_other_seed_differs(shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    frames, tastes = shop
    again, tastes2 = build_shop(300, 100, DAYS, seed=7, end=END)
    for a, b in [(frames.users, again.users), (frames.items, again.items), (frames.events, again.events),
                 (tastes, tastes2)]:
        pd.testing.assert_frame_equal(a, b)
    other, _ = build_shop(300, 100, DAYS, seed=8, end=END)
    assert not other.items["title"].equals(frames.items["title"])
    assert not (len(other.events) == len(frames.events)
                and other.events["item_id"].equals(frames.events["item_id"]))


def test_funnel_steps_follow_an_earlier_step_on_the_same_item_in_the_same_session(
        shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    ev = shop[0].events
    for earlier, later in zip(FUNNEL, FUNNEL[1:], strict=False):
        first = (ev[ev["event_type"] == earlier].groupby(["session_id", "item_id"])
                 .agg(first_ts=("ts", "min"), first_id=("event_id", "min")).reset_index())
        steps = ev[ev["event_type"] == later].merge(first, on=["session_id", "item_id"], how="left")
        assert len(steps) > 0, later
        assert steps["first_ts"].notna().all(), f"{later} without an earlier {earlier}"
        assert (steps["first_ts"] < steps["ts"]).all(), f"{later} not after its {earlier}"
        assert (steps["first_id"] < steps["event_id"]).all()
    # a session belongs to one user
    assert (ev.groupby("session_id")["user_id"].nunique() == 1).all()


def test_search_events_carry_a_query_and_no_item(shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    ev = shop[0].events
    search = ev["event_type"] == "search"
    assert search.sum() > 0
    assert ev.loc[search, "item_id"].isna().all()
    assert ev.loc[search, "query"].str.len().gt(0).all()
    assert ev.loc[~search, "item_id"].notna().all()
    assert ev.loc[~search, "query"].isna().all()


def test_timestamps_in_window_after_creation_and_ids_follow_time(
        shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    frames, _ = shop
    ev = frames.events
    start = END - timedelta(days=DAYS)
    assert ev["ts"].min() >= pd.Timestamp(start) and ev["ts"].max() < pd.Timestamp(END)
    assert ev["event_id"].is_unique and ev["event_id"].is_monotonic_increasing
    assert ev["ts"].is_monotonic_increasing
    users = ev.merge(frames.users[["user_id", "created_at"]], on="user_id")
    assert (users["ts"] >= users["created_at"]).all()
    items = ev.dropna(subset=["item_id"]).merge(frames.items[["item_id", "created_at"]], on="item_id")
    assert (items["ts"] >= items["created_at"]).all()


def test_new_users_and_items_arrive_every_day_and_some_last_day_users_are_cold(
        shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    frames, _ = shop
    start = pd.Timestamp(END - timedelta(days=DAYS))
    for df in (frames.users, frames.items):
        new = df[df["created_at"] >= start]
        days = ((new["created_at"] - start) // pd.Timedelta(days=1)).unique()
        assert len(days) == DAYS
    last_day = frames.users[frames.users["created_at"] >= pd.Timestamp(END - timedelta(days=1))]
    assert len(last_day) > 0
    active = frames.events.groupby("user_id").size()
    counts = active.reindex(last_day["user_id"], fill_value=0)
    assert (counts == 0).any()
    assert counts.mean() < active.mean() / 3


def test_categories_have_three_levels_and_brands_per_top(big_catalog: ShopFrames) -> None:
    items = big_catalog.items
    levels = items["category"].str.split(">")
    assert levels.map(len).eq(3).all()
    tops = levels.str[0]
    assert tops.nunique() >= 6
    assert items["category"].nunique() > 50
    # brands belong to one top category each, several per top
    assert (items.groupby("brand")["category"].agg(lambda c: c.str.split(">").str[0].nunique()) == 1).all()
    assert (items.assign(top=tops).groupby("top")["brand"].nunique() >= 5).all()


def test_some_titles_are_chinese(big_catalog: ShopFrames) -> None:
    items = big_catalog.items
    zh = items["title"].str.contains(r"[\u4e00-\u9fff]", regex=True)
    assert 0.07 < zh.mean() < 0.13
    assert items.loc[zh, "description"].str.contains(r"[\u4e00-\u9fff]", regex=True).all()
    assert items["title"].str.len().gt(5).all() and items["description"].str.len().gt(10).all()


def test_prices_log_normal_per_category_and_stock_flags(big_catalog: ShopFrames) -> None:
    items = big_catalog.items
    assert (items["price"] > 0).all()
    top = items["category"].str.split(">").str[0]
    medians = items.groupby(top)["price"].median()
    assert medians["Electronics"] > 3 * medians["Grocery"]
    # log prices within a leaf are roughly symmetric (log-normal): mean close to median
    logp = np.log(items["price"])
    by_leaf = logp.groupby(items["category"])
    gap = (by_leaf.mean() - by_leaf.median()).abs()[by_leaf.size() > 50]
    assert gap.median() < 0.15
    assert 0.015 < (~items["in_stock"]).mean() < 0.05
    assert 0.002 < (~items["visible"]).mean() < 0.025


def test_tastes_rows_sum_to_one_per_dimension(shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    frames, tastes = shop
    assert set(tastes["dimension"]) == {"category", "category_before", "brand", "price_level"}
    assert not tastes.duplicated(["user_id", "dimension", "key"]).any()
    sums = tastes.groupby(["user_id", "dimension"])["weight"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-9)
    assert (tastes["weight"] > 0).all()
    assert set(tastes["user_id"]) == set(frames.users["user_id"])
    cats = tastes[tastes["dimension"] == "category"]
    assert cats.groupby("user_id").size().max() <= 4
    assert cats["key"].isin(set(frames.items["category"])).all()
    assert set(tastes.loc[tastes["dimension"] == "price_level", "key"]) == {"low", "mid", "high"}


def test_popularity_has_a_long_tail(shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    ev, items = shop[0].events, shop[0].items
    views = ev[ev["event_type"] == "view"].groupby("item_id").size().reindex(items["item_id"], fill_value=0)
    top = views.sort_values(ascending=False).head(len(views) // 10)
    assert top.sum() / views.sum() > 0.30


def test_users_concentrate_on_their_taste_categories(shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    frames, tastes = shop
    cats = tastes[tastes["dimension"].isin(["category", "category_before"])]
    liked = cats.groupby("user_id")["key"].agg(set)
    views = frames.events[frames.events["event_type"] == "view"].merge(
        frames.items[["item_id", "category"]], on="item_id")
    n_categories = frames.items["category"].nunique()
    ratios = []
    for user_id, group in views.groupby("user_id"):
        if len(group) < 20:
            continue
        share = group["category"].isin(liked[user_id]).mean()
        uniform = len(liked[user_id]) / n_categories
        ratios.append(share / uniform)
    assert len(ratios) > 50
    assert np.median(ratios) > 3.0


def test_tastes_drift_half_way(shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    frames, tastes = shop
    cats = tastes[tastes["dimension"] == "category"].groupby("user_id")["key"].agg(set)
    before = tastes[tastes["dimension"] == "category_before"].groupby("user_id")["key"].agg(set)
    new_only = {u: cats[u] - before[u] for u in cats.index if cats[u] - before[u]}
    assert len(new_only) > 50
    views = frames.events[frames.events["event_type"] == "view"].merge(
        frames.items[["item_id", "category"]], on="item_id")
    views = views[views["user_id"].isin(new_only)]
    in_new = [c in new_only[u] for u, c in zip(views["user_id"], views["category"], strict=True)]
    mid = pd.Timestamp(END - timedelta(days=DAYS / 2))
    late = (views["ts"] >= mid).to_numpy()
    in_new = np.array(in_new)
    assert in_new[late].mean() > 3 * in_new[~late].mean()


def test_default_events_per_user_matches_the_tiers(shop: tuple[ShopFrames, pd.DataFrame]) -> None:
    frames, _ = shop
    per_user = {events / users for users, _, events in TIERS.values()}
    assert per_user == {50.0}
    assert 40 < len(frames.events) / len(frames.users) < 60
    few, _ = build_shop(300, 100, DAYS, seed=7, end=END, events_per_user=5)
    assert 3 < len(few.events) / 300 < 7


@pytest.mark.parametrize("kwargs", [{"users": 0}, {"items": -1}, {"days": 0}, {"users": 2.5}])
def test_bad_sizes_raise_config_error(kwargs: dict[str, object]) -> None:
    args = {"users": 10, "items": 10, "days": 2} | kwargs
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        build_shop(**args)


def test_naive_end_and_negative_events_rejected() -> None:
    with pytest.raises(ConfigError, match="timezone"):
        build_shop(10, 10, 2, end=datetime(2026, 1, 1))
    with pytest.raises(ConfigError, match="events_per_user"):
        build_shop(10, 10, 2, events_per_user=-1)


def test_tier_sizes() -> None:
    assert tier_sizes("M") == (100_000, 20_000, 5_000_000)
    assert tier_sizes("s") == TIERS["S"]
    with pytest.raises(ConfigError, match="unknown tier 'XL'"):
        tier_sizes("XL")
