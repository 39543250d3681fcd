"""Re-rank: fusion, rules, diversity (MMR, caps), exploration, reasons and A/B variants on tiny known inputs."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError
from pipeline.rerank import (
    RerankConfig,
    Variant,
    assign_variants,
    caps_every_seen_item,
    fill_empty_lists,
    finalize_lists,
    fuse,
    mmr_select,
    parse_variants,
)
from pipeline.rerank.diversity import explore_positions
from pipeline.rerank.rules import apply_rules, purchase_exclusions, window_days

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
OLD = pd.Timestamp("2025-01-01", tz="UTC")
PLAIN = RerankConfig(mmr_lambda=1.0, max_category_share=1.0, max_brand_share=1.0, explore_share=0.0,
                     max_retarget_share=1.0)


def _items(n: int = 10, **cols: list) -> pd.DataFrame:
    df = pd.DataFrame({"item_id": np.arange(1, n + 1), "title": [f"Item {i}" for i in range(1, n + 1)],
                       "category": ["Home>Kitchen"] * n, "brand": [f"b{i}" for i in range(1, n + 1)],
                       "in_stock": True, "visible": True, "created_at": OLD})
    for k, v in cols.items():
        df[k] = v
    df["top_category"] = df["category"].str.split(">").str[0]
    return df


def _cand(items: pd.DataFrame, users: tuple[int, ...] = (1,), source: str = "popularity") -> pd.DataFrame:
    """Every item for every user, p_recall falling with item_id (item 1 best)."""
    ids = items["item_id"].to_numpy()
    return pd.DataFrame({"user_id": np.repeat(users, len(ids)), "item_id": np.tile(ids, len(users)),
                         "source": source, "p_recall": np.tile(1.0 - ids / 100.0, len(users)),
                         "anchor_item_id": pd.array([pd.NA] * len(ids) * len(users), dtype="Int64")})


def _ids(out: pd.DataFrame, user: int = 1) -> list[int]:
    return out[out["user_id"] == user].sort_values("rank")["item_id"].tolist()


# -- fusion ------------------------------------------------------------------------------------------------
def test_fusion_options_exact() -> None:
    r, k = pd.Series([0.5, 0.2]), pd.Series([0.4, 0.9])
    assert fuse(r, k).tolist() == pytest.approx([0.2, 0.18])
    assert fuse(r, k, "ranker").tolist() == pytest.approx([0.4, 0.9])
    assert fuse(r, k, "weighted", alpha=0.25).tolist() == pytest.approx([0.425, 0.725])
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(r, k, "sum")


def test_fusion_changes_the_order() -> None:
    items = _items(2)
    cand = _cand(items).assign(p_recall=[0.9, 0.5], p_rank=[0.1, 0.9])
    assert _ids(finalize_lists(cand, items, top_n=2, config=PLAIN)) == [2, 1]  # 0.09 < 0.45
    assert _ids(finalize_lists(cand, items, top_n=2, config=PLAIN, fusion="ranker")) == [2, 1]
    w = PLAIN.with_overrides({"fusion": "weighted", "alpha": 1.0})
    assert _ids(finalize_lists(cand, items, top_n=2, config=w)) == [1, 2]


def test_legacy_call_still_works() -> None:
    items = _items(5)
    out = finalize_lists(_cand(items), items, top_n=3, bought=pd.DataFrame({"user_id": [1], "item_id": [1]}))
    assert list(out.columns) == ["user_id", "rank", "item_id", "score", "reason", "anchor_item_id", "source",
                                 "variant"]
    assert _ids(out) == [2, 3, 4] and out["rank"].tolist() == [1, 2, 3]
    assert set(out["variant"]) == {"control"}


# -- rules -------------------------------------------------------------------------------------------------
def test_out_of_stock_and_invisible_are_excluded() -> None:
    items = _items(4, in_stock=[True, False, True, True], visible=[True, True, False, True])
    assert _ids(finalize_lists(_cand(items), items, top_n=4, config=PLAIN)) == [1, 4]


def _rules(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["rule_id", "kind", "item_id", "category", "brand", "factor"]).astype(
        {"item_id": "Int64", "factor": "float64"})


def test_exclude_rules_match_item_category_prefix_and_brand() -> None:
    items = _items(6, category=["Home>Kitchen>Knives", "Home>Kitchen", "Home>Kitchenware", "Toys", "Toys", "Toys"],
                   brand=["a", "a", "a", "acme", "b", "acme"])
    rules = _rules((1, "exclude", None, "Home>Kitchen", None, 1.0),   # 1 and 2, not "Home>Kitchenware"
                   (2, "exclude", None, "Toys", "acme", 1.0),         # 4 and 6: both fields must match
                   (3, "exclude", 3, None, None, 1.0))
    out = apply_rules(_cand(items), items, rules=rules)
    assert out["item_id"].tolist() == [5]


def test_boost_and_bury_move_items_and_multiply() -> None:
    items = _items(4, brand=["x", "x", "y", "z"])
    rules = _rules((1, "boost", 4, None, None, 2.0), (2, "bury", 1, None, None, 0.0),
                   (3, "boost", None, None, "x", 1.5), (4, "bury", 2, None, None, 0.5))
    c = apply_rules(_cand(items), items, rules=rules).set_index("item_id")["rule_factor"]
    assert c.to_dict() == pytest.approx({1: 0.0, 2: 0.75, 3: 1.0, 4: 2.0})
    assert _ids(finalize_lists(_cand(items), items, top_n=4, config=PLAIN, rules=rules)) == [4, 3, 2, 1]


def test_purchases_excluded_unless_repurchase_window_passed() -> None:
    items = _items(4, category=["Food>Milk", "Food>Milk>Organic", "Home", "Food"])
    bought = pd.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [1, 2, 3, 4],
                           "ts": pd.to_datetime(["2026-11-10", "2026-11-10", "2020-01-01", "2026-11-23"], utc=True)})
    windows = {"Food": 1.0, "Food>Milk": 7.0, "Food>Milk>Organic": 30.0}
    assert window_days(items["category"], windows).fillna(-1).tolist() == [7.0, 30.0, -1, 1.0]
    excl = purchase_exclusions(bought, items, as_of=AS_OF, windows=windows)
    # 1: 14 days > 7 -> back; 2: 14 < 30 -> out; 3: no window -> never back; 4: 1 day >= 1 -> back
    assert sorted(excl["item_id"]) == [2, 3]
    cfg = PLAIN.with_overrides({"repurchase_days": windows})
    assert _ids(finalize_lists(_cand(items), items, top_n=4, config=cfg, bought=bought, as_of=AS_OF)) == [1, 4]
    # Without timestamps every purchase excludes.
    no_ts = bought.drop(columns="ts")
    assert _ids(finalize_lists(_cand(items), items, top_n=4, config=cfg, bought=no_ts, as_of=AS_OF)) == []


def test_users_whose_candidates_are_all_bought_get_the_popular_items_they_may_still_see() -> None:
    """User 1 bought every item recall proposed (1-3): the fill gives the popular eligible items instead,
    skipping items that are unavailable, excluded by a rule or bought. User 2 bought every available item:
    no list, and named exhausted. User 3's own list is untouched."""
    items = _items(8, activity=[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0],
                   in_stock=[True] * 4 + [False] + [True] * 3)
    rules = _rules((1, "exclude", 6, None, None, 1.0))
    bought = pd.DataFrame({"user_id": [1, 1, 1] + [2] * 6, "item_id": [1, 2, 3, 1, 2, 3, 4, 7, 8],
                           "ts": OLD})
    cand = pd.concat([_cand(items.head(3), users=(1,)), _cand(items.head(4), users=(3,))], ignore_index=True)
    opts = {"top_n": 3, "config": PLAIN, "bought": bought, "rules": rules, "as_of": AS_OF}
    lists = finalize_lists(cand, items, **opts)
    assert _ids(lists, 1) == [] and _ids(lists, 3) == [1, 2, 3]
    out, exhausted = fill_empty_lists(lists, [1, 2, 3], items, **opts)
    # 5 is out of stock, 6 excluded; by activity: 4, then 7, then 8
    assert _ids(out, 1) == [4, 7, 8]
    assert set(out.loc[out["user_id"] == 1, "reason"]) == {"popular right now"}
    assert _ids(out, 2) == [] and exhausted.tolist() == [2]
    pd.testing.assert_frame_equal(out[out["user_id"] == 3].reset_index(drop=True),
                                  lists[lists["user_id"] == 3].reset_index(drop=True))
    # a user with no candidates and no purchases (the only one missing): the most popular
    fresh, none = fill_empty_lists(lists, [3, 4], items, **opts)
    assert _ids(fresh, 4) == [1, 2, 3] and len(none) == 0
    # nobody missing: nothing to do
    same, none = fill_empty_lists(out, [1, 3], items, **opts)
    assert same is out and len(none) == 0
    # nothing may be shown to anyone (out of stock, or a rule excluding the rest): empty, but nobody exhausted
    dark = items.assign(in_stock=items["item_id"] == 6)
    out, exhausted = fill_empty_lists(lists.iloc[:0], [1, 2], dark, **opts)
    assert out.empty and len(exhausted) == 0


# -- diversity ---------------------------------------------------------------------------------------------
def test_mmr_lambda_one_is_score_order_and_lower_lambda_diversifies_categories() -> None:
    items = _items(4, category=["A>x", "A>x", "A>y", "B>z"])
    c = _cand(items).assign(score=[1.0, 0.95, 0.9, 0.5]).merge(items[["item_id", "category", "top_category"]])
    assert mmr_select(c, top_n=4, mmr_lambda=1.0)["item_id"].tolist() == [1, 2, 3, 4]
    # lambda 0.5: after item 1, item 2 scores 0.475 - 0.5 = -0.025, item 3 0.45 - 0.25 = 0.2, item 4 0.25 - 0 = 0.25
    assert mmr_select(c, top_n=4, mmr_lambda=0.5)["item_id"].tolist() == [1, 4, 3, 2]


def test_mmr_uses_embeddings_when_given() -> None:
    items = _items(3, category=["A"] * 3)
    c = _cand(items).assign(score=[1.0, 0.9, 0.8]).merge(items[["item_id", "category", "top_category"]])
    emb = (np.array([1, 2, 3]), np.array([[1, 0], [1, 0.01], [0, 1]], dtype=np.float32))
    assert mmr_select(c, top_n=3, mmr_lambda=0.7, embeddings=emb)["item_id"].tolist() == [1, 3, 2]
    # The same through finalize_lists, with a variant asking for categories instead (all "A": no change).
    cfg = PLAIN.with_overrides({"mmr_lambda": 0.7})
    assert _ids(finalize_lists(_cand(items), items, top_n=3, config=cfg, item_embeddings=emb)) == [1, 3, 2]
    cat = cfg.with_overrides({"diversity_space": "category"})
    assert _ids(finalize_lists(_cand(items), items, top_n=3, config=cat, item_embeddings=emb)) == [1, 2, 3]


def test_mmr_normalises_a_loaded_catalogue_once() -> None:
    """A worker scores many shards against one run's loaded vectors: they are normalised on the first call
    only, with the same lists as a plain (ids, matrix) pair prepared per call; another catalogue (another
    run's) is prepared afresh, and a pickled copy (a Dask worker's) prepares its own."""
    import pickle

    from pipeline.rerank import diversity

    calls: list[int] = []
    real = diversity.normalise
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diversity, "normalise", lambda m: calls.append(len(m)) or real(m))
        items = _items(3, category=["A"] * 3)
        c = _cand(items).assign(score=[1.0, 0.9, 0.8]).merge(items[["item_id", "category", "top_category"]])
        ids, mat = np.array([1, 2, 3]), np.array([[1, 0], [1, 0.01], [0, 1]], dtype=np.float32)
        emb = diversity.ItemVectors(ids, mat)
        first = [mmr_select(c, top_n=3, mmr_lambda=0.7, embeddings=emb)["item_id"].tolist() for _ in range(3)]
        assert first == [[1, 3, 2]] * 3 and calls == [3]
        assert mmr_select(c, top_n=3, mmr_lambda=0.7, embeddings=(ids, mat))["item_id"].tolist() == [1, 3, 2]
        assert calls == [3, 3]  # a plain pair: per call
        other = diversity.ItemVectors(ids, np.array([[1, 0], [0, 1], [1, 0.01]], dtype=np.float32))
        assert mmr_select(c, top_n=3, mmr_lambda=0.7, embeddings=other)["item_id"].tolist() == [1, 2, 3]
        copy = pickle.loads(pickle.dumps(emb))
        assert type(copy) is diversity.ItemVectors and copy._prepared is None
        assert mmr_select(c, top_n=3, mmr_lambda=0.7, embeddings=copy)["item_id"].tolist() == [1, 3, 2]
        assert calls == [3, 3, 3, 3]


def test_category_and_brand_caps_move_items_down_never_out() -> None:
    items = _items(8, category=["A"] * 6 + ["B", "C"], brand=["k", "k", "k", "m", "m", "m", "k", "m"])
    cfg = PLAIN.with_overrides({"max_category_share": 0.5})  # 2 of the top 4
    ids = _ids(finalize_lists(_cand(items), items, top_n=4, config=cfg))
    assert ids == [1, 2, 7, 8]
    cfg = PLAIN.with_overrides({"max_brand_share": 0.25})  # 1 per brand in the top 4, only k and m exist
    ids = _ids(finalize_lists(_cand(items), items, top_n=4, config=cfg))
    assert ids[:2] == [1, 4] and len(ids) == 4  # then over-cap items in score order fill the list
    assert ids[2:] == [2, 3]


def test_retarget_cap_moves_recently_viewed_items_down_never_out() -> None:
    """Items 1-3 were proposed by retarget (item 3 only as a second source: its strongest is item-cf)."""
    items = _items(6)
    cand = _cand(items).assign(score_retarget=[0.9, 0.8, 0.5, 0.0, 0.0, np.nan],
                               source=["retarget", "retarget", "item-cf", "als", "als", "als"])
    assert _ids(finalize_lists(cand, items, top_n=5, config=PLAIN)) == [1, 2, 3, 4, 5]  # 1.0: no cap
    assert RerankConfig().max_retarget_share == 0.2  # the default caps
    cfg = PLAIN.with_overrides({"max_retarget_share": 0.2})  # 1 of the top 5
    assert _ids(finalize_lists(cand, items, top_n=5, config=cfg)) == [1, 4, 5, 6, 2]
    assert _ids(finalize_lists(cand, items, top_n=3, config=cfg.with_overrides({"max_retarget_share": 0.0}))) \
        == [4, 5, 6]
    # too few other items: the capped ones still fill the list, in score order
    few = cand[cand["item_id"] <= 4]
    assert _ids(finalize_lists(few, items, top_n=4, config=cfg)) == [1, 4, 2, 3]
    # without score_retarget (a caller that only has the strongest source), the source names the rows
    assert _ids(finalize_lists(cand.drop(columns="score_retarget"), items, top_n=5, config=cfg)) == [1, 3, 4, 5, 6]
    # a running cap: 0.2 of every top k, so a long list spreads them out instead of opening with all of them
    many = _items(30)
    spread = _cand(many).assign(score_retarget=np.where(many["item_id"] <= 12, 1.0, 0.0))
    src = np.where(_ids(finalize_lists(spread, many, top_n=10, config=cfg)) <= np.int64(12), "R", "o")
    assert "".join(src) == "RooooRoooo"
    with pytest.raises(ConfigError, match="max_retarget_share"):
        PLAIN.with_overrides({"max_retarget_share": 1.5})


def test_retarget_cap_scope_seen_also_counts_items_seen_long_ago() -> None:
    """Item 1 was proposed by retarget; items 2 and 3 were viewed long ago and came back through ALS."""
    items = _items(6)
    cand = _cand(items).assign(score_retarget=[0.9, 0.0, 0.0, 0.0, 0.0, 0.0],
                               source=["retarget", "als", "als", "als", "als", "als"])
    seen = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 4]})
    cfg = PLAIN.with_overrides({"max_retarget_share": 0.2})  # 1 of the top 5
    assert _ids(finalize_lists(cand, items, top_n=5, config=cfg, seen=seen)) == [1, 2, 3, 4, 5]  # recent only
    scoped = cfg.with_overrides({"retarget_cap_scope": "seen"})
    assert _ids(finalize_lists(cand, items, top_n=5, config=scoped, seen=seen)) == [1, 4, 5, 6, 2]
    assert _ids(finalize_lists(cand, items, top_n=5, config=scoped)) == [1, 2, 3, 4, 5]  # no pairs: as recent
    with pytest.raises(ConfigError, match="retarget_cap_scope"):
        PLAIN.with_overrides({"retarget_cap_scope": "all"})
    # callers read the users' seen pairs only when the config, as an object or settings, or an arm asks
    assert caps_every_seen_item(scoped) and caps_every_seen_item({"retarget_cap_scope": "seen"})
    assert not caps_every_seen_item(None) and not caps_every_seen_item(cfg, {"a": {"weight": 1.0}})
    assert caps_every_seen_item({}, {"a": {"weight": 0.5}, "b": {"weight": 0.5, "retarget_cap_scope": "seen"}})


def test_diversity_raises_intra_list_diversity() -> None:
    from pipeline.metrics import intra_list_diversity

    rng = np.random.default_rng(3)
    items = _items(60, category=[f"C{i % 6}>S{i % 12}" for i in range(60)])
    cand = _cand(items, users=tuple(range(1, 21)))
    cand["p_recall"] = rng.random(len(cand))
    cats = items.set_index("item_id")["category"]
    off = finalize_lists(cand, items, top_n=10, config=PLAIN)
    on = finalize_lists(cand, items, top_n=10, config=PLAIN.with_overrides({"mmr_lambda": 0.5}))
    assert intra_list_diversity(on, 10, item_categories=cats) > intra_list_diversity(off, 10, item_categories=cats)


# -- exploration -------------------------------------------------------------------------------------------
def test_explore_positions() -> None:
    assert explore_positions(20, 1) == [10]
    assert explore_positions(20, 3) == [5, 10, 15]
    assert explore_positions(10, 0) == [] and explore_positions(1, 1) == []


def test_exploration_slot_takes_a_new_item_with_its_reason() -> None:
    created = [OLD] * 18 + [pd.Timestamp("2026-11-20", tz="UTC")] * 2
    items = _items(20, created_at=created, category=[f"K{i}" for i in range(20)])
    cand = _cand(items.iloc[:18], users=(1, 2, 3))
    cfg = PLAIN.with_overrides({"explore_share": 0.1})  # 1 slot of 10
    bought = pd.DataFrame({"user_id": [3], "item_id": [19]})
    out = finalize_lists(cand, items, top_n=10, config=cfg, as_of=AS_OF, bought=bought)
    for u in (1, 2, 3):
        mine = out[out["user_id"] == u].sort_values("rank")
        assert len(mine) == 10 and mine["rank"].tolist() == list(range(1, 11))
        row = mine[mine["rank"] == 5].iloc[0]  # round(1 * 10 / 2)
        assert row["item_id"] in (19, 20) and row["source"] == "explore" and row["reason"] == "new arrival"
        assert pd.isna(row["anchor_item_id"])
    assert out[(out["user_id"] == 3) & (out["rank"] == 5)]["item_id"].item() == 20  # bought one skipped
    # No as_of, or share 0: no exploration.
    assert "explore" not in set(finalize_lists(cand, items, top_n=10, config=cfg)["source"])
    assert "explore" not in set(finalize_lists(cand, items, top_n=10, config=PLAIN, as_of=AS_OF)["source"])


# -- reasons -----------------------------------------------------------------------------------------------
def test_content_matches_say_looks_like_or_similar_to_from_the_fused_parts() -> None:
    from pipeline.rerank.diversity import FusedEmbeddings

    items = _items(4, title=["Red Mug", "Red Cup", "Mug Tree", "Glass"], category=["Home>Kitchen"] * 4)
    w = 0.5
    # columns: 2 text dims, 2 picture dims (each half scaled by sqrt of its weight, as the fusion writes)
    text = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32)
    pic = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], np.float32)  # item 4 has no picture
    emb = FusedEmbeddings(np.arange(1, 5), np.hstack([np.sqrt(w) * text, np.sqrt(1 - w) * pic]), 2, w)
    assert isinstance(emb, tuple) and len(emb) == 2  # still unpacks as (ids, matrix)
    t, i = emb.part_similarity(np.array([2, 3, 4]), np.array([1, 1, 1]))
    np.testing.assert_allclose(t, [0.0, 1.0, 1.0], atol=1e-6)
    assert i[0] == pytest.approx(1.0) and i[1] == pytest.approx(0.0) and np.isnan(i[2])
    cand = pd.DataFrame({"user_id": 1, "item_id": [2, 3, 4], "p_recall": [0.9, 0.8, 0.7], "source": "content",
                         "anchor_item_id": pd.array([1, 1, 1], dtype="Int64")})
    out = finalize_lists(cand, items, top_n=3, config=PLAIN, item_embeddings=emb).set_index("item_id")
    assert out.loc[2, "reason"] == "looks like \u201cRed Mug\u201d you viewed"  # same picture, other words
    assert out.loc[3, "reason"] == "similar to \u201cRed Mug\u201d you viewed"  # same words
    assert out.loc[4, "reason"] == "similar to \u201cRed Mug\u201d you viewed"  # no picture to compare
    plain = finalize_lists(cand, items, top_n=3, config=PLAIN, item_embeddings=tuple(emb)).set_index("item_id")
    assert set(plain["reason"]) == {"similar to \u201cRed Mug\u201d you viewed"}  # parts unknown: text wording


def test_every_reason_shape() -> None:
    items = _items(7, title=["Knife", "Board", "Pan", "Pot", "Cup", "Mug", "Jar"], category=["Home>Kitchen"] * 7)
    cand = pd.DataFrame({"user_id": 1, "item_id": [2, 3, 4, 5, 7, 6], "p_recall": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                         "source": ["item-cf", "item-cf", "category", "search", "popularity", "retarget"],
                         "anchor_item_id": pd.array([1, 6, None, None, None, 6], dtype="Int64"),
                         "query": [None, None, None, "cast iron", None, None]})
    bought = pd.DataFrame({"user_id": [1], "item_id": [6]})
    out = finalize_lists(cand, items, top_n=6, config=PLAIN, bought=bought).set_index("item_id")
    assert out.loc[2, "reason"] == "because you viewed \u201cKnife\u201d" and out.loc[2, "anchor_item_id"] == 1
    assert out.loc[3, "reason"] == "bought together with \u201cMug\u201d"
    assert out.loc[4, "reason"] == "popular in Home"
    assert out.loc[5, "reason"] == "matches your search 'cast iron'"
    assert out.loc[7, "reason"] == "popular right now"
    assert 6 not in out.index  # the bought item itself is excluded
    assert out["reason"].str.len().gt(0).all()


# -- A/B variants ------------------------------------------------------------------------------------------
def test_variant_bucket_is_deterministic_salted_and_weighted() -> None:
    arms = parse_variants({"control": {"weight": 0.7}, "diverse": {"weight": 0.3, "mmr_lambda": 0.5}})
    users = np.arange(1, 20_001)
    a = assign_variants(users, arms, "s1")
    assert (a == assign_variants(users, arms, "s1")).all()
    assert (a[:100] == assign_variants(users[:100][::-1], arms, "s1")[::-1]).all()  # per user, not per batch
    assert np.mean(a == "diverse") == pytest.approx(0.3, abs=0.015)
    b = assign_variants(users, arms, "s2")
    assert 0.3 < np.mean(a != b) < 0.5  # a new salt reshuffles (2 * 0.7 * 0.3 = 0.42 expected)
    assert set(assign_variants(users[:10], [Variant("only", 1.0)], "s")) == {"only"}


def test_per_variant_settings_are_applied_and_stored() -> None:
    items = _items(30, category=["C0"] * 10 + ["C1"] * 10 + ["C2"] * 10)
    users = tuple(range(1, 201))
    spec = {"control": {"weight": 0.5}, "capped": {"weight": 0.5, "max_category_share": 0.33}}
    out = finalize_lists(_cand(items, users=users), items, top_n=3, config=PLAIN, variants=spec, variant_salt="t")
    expect = dict(zip(users, assign_variants(np.array(users), parse_variants(spec), "t"), strict=True))
    assert (out["variant"] == out["user_id"].map(expect)).all()
    assert set(out["variant"]) == {"control", "capped"}
    lists = out.groupby("user_id")["item_id"].apply(tuple)
    by_variant = out.groupby("variant")["user_id"].unique()
    assert {lists[u] for u in by_variant["control"]} == {(1, 2, 3)}
    assert {lists[u] for u in by_variant["capped"]} == {(1, 11, 21)}  # one per category in the top 3


def test_bad_config_fails_fast() -> None:
    with pytest.raises(ConfigError, match="mmr_lambda"):
        RerankConfig(mmr_lambda=1.5)
    with pytest.raises(ConfigError, match="unknown re-rank setting"):
        parse_variants({"x": {"weight": 1, "lambda": 0.3}})
    with pytest.raises(ConfigError, match="fusion"):
        RerankConfig(fusion="sum")


def test_same_input_same_output() -> None:
    items = _items(40, category=[f"C{i % 5}" for i in range(40)],
                   created_at=[OLD] * 35 + [pd.Timestamp("2026-11-22", tz="UTC")] * 5)
    cand = _cand(items.iloc[:35], users=tuple(range(1, 51)))
    cfg = RerankConfig(explore_share=0.2)
    spec = {"a": {"weight": 1}, "b": {"weight": 1, "mmr_lambda": 0.3}}
    one = finalize_lists(cand, items, top_n=10, config=cfg, variants=spec, as_of=AS_OF)
    two = finalize_lists(cand.sample(frac=1.0, random_state=1), items, top_n=10, config=cfg, variants=spec,
                         as_of=AS_OF)
    pd.testing.assert_frame_equal(one, two)
    assert not one.duplicated(["user_id", "item_id"]).any()


def test_reason_for_an_anchored_source_without_anchor_names_no_item() -> None:
    items = _items(2, category=["Garden>Tools", "Garden"])
    out = finalize_lists(_cand(items, source="item-cf"), items, top_n=2, config=PLAIN)
    assert out["reason"].tolist() == ["popular in Garden", "popular in Garden"]


# -- the evaluation harness's `pipeline` model -------------------------------------------------------------
def test_pipeline_model_is_registered_and_lambda_one_keeps_the_recall_top_k() -> None:
    """With item-CF as the only source, no ranker and no diversity, the pipeline's top-k is item-CF's."""
    from pipeline.evaluate.models import get_model

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"user_id": rng.integers(1, 40, 600), "item_id": rng.integers(1, 60, 600)})
    users = np.arange(1, 40)
    plain = get_model("research-stack", mmr_lambda=1.0, n_candidates=30, dims=8, use_ranker=False,
                      sources={"item-cf": {}}).fit(train)
    recall = get_model("item-cf").fit(train).recommend(users, 10)
    got = plain.recommend(users, 10)
    assert got.groupby("user_id")["item_id"].apply(set).equals(recall.groupby("user_id")["item_id"].apply(set))
    diverse = get_model("research-stack", mmr_lambda=0.3, n_candidates=30, dims=8, use_ranker=False,
                        sources={"item-cf": {}}).fit(train).recommend(users, 10)
    assert (diverse.groupby("user_id").size() == 10).all()
    assert not diverse[["user_id", "item_id"]].merge(train).shape[0]  # seen items stay excluded


def test_duplicate_candidates_never_repeat_an_item() -> None:
    import pandas as pd

    from pipeline.rerank import finalize_lists

    cand = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [10, 10, 11], "source": ["item-cf", "als", "item-cf"],
                         "recall_score": [0.9, 0.5, 0.4], "anchor_item_id": pd.array([5, pd.NA, 5], dtype="Int64"),
                         "p_recall": [0.9, 0.5, 0.4]})
    feats = pd.DataFrame({"item_id": [5, 10, 11], "title": ["a", "b", "c"], "category": ["A>x", "A>y", "B>z"],
                          "brand": ["p", "q", "r"], "in_stock": True, "visible": True})
    out = finalize_lists(cand, feats, top_n=5)
    assert out["item_id"].tolist() == [10, 11]
    assert out.loc[out["item_id"] == 10, "source"].item() == "item-cf"


def test_reasons_per_combination_match_reason_text_per_row() -> None:
    """The grouped reason computation gives exactly the per-row :func:`reason_text` of every row."""
    import numpy as np

    from pipeline.rerank.lists import _reasons, reason_text

    rng = np.random.default_rng(3)
    n = 2000
    sources = np.array(["item-cf", "retarget", "als", "search", "category", "trending", "explore", "popularity",
                        "fresh-cf", "new"])
    df = pd.DataFrame({
        "user_id": rng.integers(1, 40, n),
        "source": rng.choice(sources, n),
        "anchor_item_id": pd.array(np.where(rng.random(n) < 0.4, pd.NA, rng.integers(1, 30, n)), dtype="Int64"),
        "top_category": rng.choice(np.array(["Shoes", "", None, "Tents"], dtype=object), n),
        "query": rng.choice(np.array([None, "  boots ", "", np.nan], dtype=object), n),
    })
    info = pd.DataFrame({"item_id": np.arange(1, 26), "title": [f"item {i}" if i % 7 else None for i in range(1, 26)]})
    bought = pd.DataFrame({"user_id": rng.integers(1, 40, 300), "item_id": rng.integers(1, 30, 300)})
    titles = info.set_index("item_id")["title"]
    pairs = set(zip(bought["user_id"], bought["item_id"], strict=True))
    want = [reason_text(s, titles.get(a) if pd.notna(a) else None, pd.notna(a) and (u, a) in pairs, c, q, pd.notna(a))
            for u, s, a, c, q in zip(df["user_id"], df["source"], df["anchor_item_id"], df["top_category"],
                                     df["query"], strict=True)]
    got = _reasons(df, info, bought)
    assert got == want
    assert any(r.startswith("bought together with") for r in got) and any("search" in r for r in got)
    assert _reasons(df.iloc[:0], info, bought) == []


def test_repurchasable_categories_cover_every_window_in_play() -> None:
    """The top-level categories whose bought items recall keeps: the base windows', every arm's, ``also``."""
    from pipeline.rerank import repurchasable_categories, repurchase_windows_in_play

    base = {"repurchase_days": {"Food>Milk": 3.0}}
    arms = {"control": {"weight": 1}, "back": {"weight": 1, "repurchase_days": {"Sports>Boots": 7.0, "Toys": 1.0}}}
    assert repurchase_windows_in_play(base, arms) == [{"Food>Milk": 3.0}, {"Sports>Boots": 7.0, "Toys": 1.0}]
    assert repurchasable_categories(base, arms, also=("Grocery",)) == ("Food", "Grocery", "Sports", "Toys")
    assert repurchasable_categories(RerankConfig(repurchase_days={"Home": 2.0})) == ("Home",)
    assert repurchasable_categories(None) == ()
