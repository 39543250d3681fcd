"""The refresh's fresh-behaviour recall and the shared recommend path on a tiny shop whose right answers are known."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.recall.fresh import (
    fresh_cf,
    fresh_events,
    query_tokens,
    run_tables,
    search_match,
    search_text,
    session_intent,
)
from pipeline.recommend import Artefacts, RecommendConfig, _retarget_scores, artefacts, recommend

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
CFG = RecommendConfig(top_n=6, n_candidates=30, fresh_minutes=60)


def build_lists(users: np.ndarray, ev: pd.DataFrame, batch: np.ndarray, nb: pd.DataFrame, items: pd.DataFrame,
                now: datetime, cfg: RecommendConfig, *, tables: object | None = None, **kw: object) -> pd.DataFrame:
    """The refresh's call of the shared path: ``recommend`` with the batch's event ids."""
    art = Artefacts(tables=tables) if tables is not None else artefacts(items, nb)
    return recommend(users, ev, art, now, cfg, fresh_ids=batch, **kw)[0]


def _items() -> pd.DataFrame:
    """Items 1-6 in Home, 11-16 in Sports; item 16 out of stock."""
    ids = list(range(1, 7)) + list(range(11, 17))
    cats = ["Home>Kitchen>Knives"] * 6 + ["Sports>Outdoor>Boots"] * 6
    titles = [f"Chef knife {i}" for i in range(1, 7)] + [f"Hiking boot {i}" for i in range(11, 17)]
    return pd.DataFrame({"item_id": ids, "title": titles, "category": cats,
                         "top_category": [c.split(">")[0] for c in cats], "in_stock": [i != 16 for i in ids],
                         "visible": True, "activity": [float(20 - i) for i in ids], "trend": 0.1})


def _neighbours() -> pd.DataFrame:
    """Each item's neighbours are the other items of its category, score falling with distance."""
    rows = []
    for block in (range(1, 7), range(11, 17)):
        for a in block:
            for b in block:
                if a != b:
                    rows.append((a, b, 1.0 / abs(a - b)))
    return pd.DataFrame(rows, columns=["item_id", "similar_item_id", "score"])


def _events(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event_type", "query", "ts"])
    df["item_id"] = df["item_id"].astype("Int64")
    df["session_id"] = "s"
    df["quantity"] = 1
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def test_query_tokens_lowercase_words_and_cjk_characters() -> None:
    assert query_tokens("Hiking BOOTS a") == ["hiking", "boots"]
    assert query_tokens("烘焙 spice") == ["烘", "焙", "spice"]
    assert query_tokens("  ") == []


def test_fresh_events_are_the_batch_and_the_recent_window() -> None:
    ev = _events([(1, 7, 1, "view", None, NOW - timedelta(days=3)), (2, 7, 2, "view", None, NOW - timedelta(minutes=5)),
                  (3, 7, 3, "view", None, NOW - timedelta(days=2))])
    assert fresh_events(ev, np.array([3]), NOW, 60)["event_id"].tolist() == [2, 3]


def test_fresh_cf_anchors_each_neighbour_on_the_fresh_item_that_contributes_most() -> None:
    ev = _events([(1, 7, 11, "view", None, NOW), (2, 7, 14, "add_to_cart", None, NOW)])
    titles = _items().set_index("item_id")["title"]
    out = fresh_cf(ev, _neighbours(), titles, CFG).set_index("item_id")
    # item 12: 1*1.0 (from 11) + 4*0.5 (from 14) -> anchor 14 (the cart, 2.0 > 1.0)
    assert out.loc[12, "anchor_item_id"] == 14
    assert out.loc[12, "hint"] == "because you just added to your cart \u201cHiking boot 14\u201d"
    assert out.loc[13, "recall_score"] == pytest.approx(1.0)  # 1*0.5 + 4*1.0 = 4.5, the user's maximum
    assert out.loc[15, "recall_score"] == pytest.approx(4.25 / 4.5)  # 1*0.25 + 4*1.0
    assert set(out["source"]) == {"fresh-cf"}
    assert not set(out.index) & set(range(1, 7))


def test_session_intent_follows_the_heaviest_fresh_category() -> None:
    ev = _events([(1, 7, 1, "view", None, NOW), (2, 7, 11, "view", None, NOW), (3, 7, 12, "click", None, NOW)])
    items = _items()
    out = session_intent(ev, items[items["in_stock"]], CFG)
    assert set(out["item_id"]) <= set(range(11, 16))
    assert out["hint"].iloc[0] == "more from Sports, which you are browsing now"


def test_search_match_scores_the_share_of_query_words_found() -> None:
    items = _items()
    ev = _events([(1, 9, None, "search", "hiking boot 13", NOW)])
    out = search_match(ev, search_text(items[items["in_stock"]]), CFG).set_index("item_id")
    assert out.loc[13, "recall_score"] == pytest.approx(1.0)
    assert out.loc[12, "recall_score"] == pytest.approx(2 / 3)
    assert 16 not in out.index and not set(out.index) & set(range(1, 7))
    assert out.loc[13, "hint"] == "matches your search \u201chiking boot 13\u201d"


def test_build_lists_brings_neighbours_of_a_new_category_with_reasons_naming_the_fresh_item() -> None:
    old = [(i, 7, it, "purchase" if it == 2 else "view", None, NOW - timedelta(days=2)) for i, it in
           enumerate([1, 2, 3, 2], start=1)]
    fresh = [(10, 7, 12, "view", None, NOW - timedelta(seconds=5)), (11, 7, 13, "view", None, NOW)]
    cfg = RecommendConfig(top_n=10, n_candidates=30)
    lists = build_lists(np.array([7]), _events(old + fresh), np.array([10, 11]), _neighbours(), _items(), NOW, cfg)
    assert lists["rank"].tolist() == list(range(1, 11))
    assert 2 not in lists["item_id"].tolist()  # bought: never recommended again
    assert 16 not in lists["item_id"].tolist()  # out of stock
    cf = lists[lists["source"] == "fresh-cf"]
    assert len(cf) >= 2 and set(cf["anchor_item_id"]) <= {12, 13}
    assert all(r.startswith("because you just viewed \u201cHiking boot 1") for r in cf["reason"])
    assert len(set(lists.head(6)["item_id"]) & {11, 14, 15}) >= 2  # the new category's neighbours come early


def test_build_lists_gives_a_brand_new_user_a_full_personal_list() -> None:
    ev = _events([(1, 99, 4, "view", None, NOW), (2, 99, None, "search", "hiking", NOW)])
    lists = build_lists(np.array([99]), ev, np.array([1, 2]), _neighbours(), _items(), NOW, CFG)
    assert len(lists) == CFG.top_n and lists["user_id"].eq(99).all()
    assert {"fresh-cf", "fresh-search"} <= set(lists["source"])
    assert not lists.duplicated("item_id").any()


def test_build_lists_with_the_live_runs_tables_equals_building_them_per_call() -> None:
    old = [(i, 7, it, "purchase" if it == 2 else "view", None, NOW - timedelta(days=2)) for i, it in
           enumerate([1, 2, 3, 2], start=1)]
    fresh = [(10, 7, 12, "view", None, NOW - timedelta(seconds=5)), (11, 7, 13, "click", None, NOW),
             (12, 99, 4, "view", None, NOW), (13, 99, None, "search", "hiking boot", NOW),
             (14, 8, None, "search", "chef knife", NOW)]
    ev = _events(old + fresh)
    users, batch = np.array([7, 8, 99]), np.array([10, 11, 12, 13, 14])
    plain = build_lists(users, ev, batch, _neighbours(), _items(), NOW, CFG)
    tables = run_tables(_items(), _neighbours())
    cached = build_lists(users, ev, batch, _neighbours(), _items(), NOW, CFG, tables=tables)
    warm = build_lists(users, ev, batch, _neighbours(), _items(), NOW, CFG, tables=tables)  # memoised pieces
    pd.testing.assert_frame_equal(plain, cached)
    pd.testing.assert_frame_equal(plain, warm)
    assert {"fresh-cf", "fresh-search"} <= set(plain["source"]) and set(plain["user_id"]) == {7, 8, 99}


def test_run_tables_remember_a_bounded_number_of_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.recall import fresh

    monkeypatch.setattr(fresh, "QUERY_MEMO", 2)
    tables = run_tables(_items(), _neighbours())
    first = tables.query_matches("hiking boot", 10)
    assert tables.query_matches("hiking boot", 10) is first  # memoised
    tables.query_matches("chef knife", 10)
    tables.query_matches("boot 13", 10)  # a third query: the oldest is forgotten
    assert tables.query_matches("hiking boot", 10) is not first
    pd.testing.assert_series_equal(tables.query_matches("hiking boot", 10), first)
    assert first.index[0] in range(11, 16) and first.iloc[0] == pytest.approx(1.0)


def test_fresh_rows_keep_the_retarget_score_of_the_same_pair() -> None:
    """Whichever row of a (user, item) wins the dedupe, an item retarget proposed stays under its cap."""
    base = pd.DataFrame({"user_id": [7, 7, 8, 7], "item_id": [1, 2, 1, 1], "score_retarget": [0.4, 0.0, 0.9, 0.2]})
    ex = pd.DataFrame({"user_id": [7, 7, 8, 9], "item_id": [1, 2, 3, 1]})
    assert _retarget_scores(base, ex).tolist() == [0.4, 0.0, 0.0, 0.0]
    assert _retarget_scores(base.iloc[:0], ex).tolist() == [0.0] * 4


def test_the_seen_retarget_cap_also_holds_in_the_refresh() -> None:
    """Items 1-4 were viewed three weeks ago, past the retarget window; item-CF proposes item 2 again. Only the
    ``seen`` scope counts it under the cap (0.2 of the top 5: item 12, just viewed, takes the one slot)."""
    from pipeline.rerank import RerankConfig

    old = [(i, 7, it, "view", None, NOW - timedelta(days=20)) for i, it in enumerate([1, 2, 3, 4], start=1)]
    ev = _events([*old, (10, 7, 12, "view", None, NOW)])
    base = RerankConfig(max_retarget_share=0.2, explore_share=0.0, mmr_lambda=1.0, max_category_share=1.0)
    cfg = RecommendConfig(top_n=5, n_candidates=30)
    recent = build_lists(np.array([7]), ev, np.array([10]), _neighbours(), _items(), NOW, cfg, rerank=base)
    got = recent["item_id"].tolist()
    assert got[:3] == [12, 11, 13] and sorted(got[3:]) == [2, 14]  # item 2 is back under the recent scope
    seen = build_lists(np.array([7]), ev, np.array([10]), _neighbours(), _items(), NOW, cfg,
                       rerank=base.with_overrides({"retarget_cap_scope": "seen"}))
    got_seen = seen["item_id"].tolist()
    assert got_seen[:4] == [12, 11, 13, 14] and len(got_seen) == 5 and not {1, 2, 3, 4} & set(got_seen)
    # an A/B arm with the scope gets the seen pairs too
    arm = build_lists(np.array([7]), ev, np.array([10]), _neighbours(), _items(), NOW, cfg, rerank=base,
                      variants={"seen": {"weight": 1.0, "retarget_cap_scope": "seen"}})
    assert arm["item_id"].tolist() == got_seen
