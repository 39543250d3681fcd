"""Adversarial edge cases of the re-rank step (rules, diversity, exploration, reasons) and of its callers.

Each test pins a defect found in review: it failed on the code before its fix (the near-real-time refresh
used to ignore recsys.rules, repurchase windows and the A/B arms). Tiny known inputs, no timing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.recommend import RecommendConfig
from pipeline.rerank import RerankConfig, finalize_lists

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
OLD = pd.Timestamp("2025-01-01", tz="UTC")
PLAIN = RerankConfig(mmr_lambda=1.0, max_category_share=1.0, max_brand_share=1.0, explore_share=0.0)
REFRESH_CFG = RecommendConfig(top_n=10, n_candidates=40)
RULE_COLUMNS = ["rule_id", "kind", "item_id", "category", "brand", "factor"]


def _items(n: int, **cols: list) -> pd.DataFrame:
    df = pd.DataFrame({"item_id": np.arange(1, n + 1), "title": [f"Item {i}" for i in range(1, n + 1)],
                       "category": ["Home>Kitchen"] * n, "brand": [f"b{i}" for i in range(1, n + 1)],
                       "in_stock": True, "visible": True, "created_at": OLD})
    for k, v in cols.items():
        df[k] = v
    return df


def _cand(items: pd.DataFrame, user: int = 1, source: str = "popularity") -> pd.DataFrame:
    """Every item for ``user``, p_recall falling with item_id (item 1 best)."""
    ids = items["item_id"].to_numpy()
    return pd.DataFrame({"user_id": user, "item_id": ids, "source": source, "p_recall": 1.0 - ids / 100.0,
                         "anchor_item_id": pd.array([pd.NA] * len(ids), dtype="Int64")})


def _rules(*rows: tuple) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=RULE_COLUMNS).astype({"item_id": "Int64", "factor": "float64"})


def _ids(out: pd.DataFrame, user: int = 1) -> list[int]:
    return out[out["user_id"] == user].sort_values("rank")["item_id"].tolist()


# -- scores ------------------------------------------------------------------------------------------------
def test_a_nan_ranker_score_never_outranks_real_scores() -> None:
    """A NaN p_rank (a ranker glitch) used to win MMR's argmax and take rank 1 while published as score 0."""
    items = _items(5)
    cand = _cand(items).assign(p_rank=[0.9, 0.8, np.nan, 0.7, 0.6])
    for cfg in (PLAIN, RerankConfig(explore_share=0.0)):  # relevance only, and the default MMR
        out = finalize_lists(cand, items, top_n=5, config=cfg)
        assert _ids(out) == [1, 2, 4, 5, 3]
        assert out["score"].is_monotonic_decreasing and out["score"].notna().all()


# -- business rules under diversity and exploration ----------------------------------------------------------
def test_a_bury_with_factor_zero_stays_at_the_bottom_under_mmr() -> None:
    """rules.py: "bury ... 0 sends them to the bottom". The default MMR (lambda 0.8) used to lift a buried
    item of another category above the weak items of the user's main category."""
    items = _items(6, category=["A>x"] * 5 + ["B>y"], brand=list("pqrstu"))
    cand = _cand(items).assign(p_recall=[1.0, 0.9, 0.2, 0.15, 0.1, 0.95])
    rules = _rules((1, "bury", 6, None, None, 0.0))
    out = finalize_lists(cand, items, top_n=6, config=RerankConfig(explore_share=0.0), rules=rules)
    assert _ids(out)[-1] == 6
    assert out["rank"].tolist() == [1, 2, 3, 4, 5, 6]


def test_a_buried_new_item_gets_no_exploration_slot() -> None:
    """Exploration skipped rule-excluded items but put a factor-0 buried new item in the middle of the list."""
    created = [OLD] * 18 + [pd.Timestamp("2026-11-20", tz="UTC")] * 2
    items = _items(20, created_at=created, category=[f"K{i}" for i in range(20)], brand=["a"] * 18 + ["z", "z"])
    cfg = PLAIN.with_overrides({"explore_share": 0.1})  # one slot of 10
    rules = _rules((1, "bury", None, None, "z", 0.0))  # both new items are brand z
    out = finalize_lists(_cand(items.iloc[:18]), items, top_n=10, config=cfg, as_of=AS_OF, rules=rules)
    assert not set(_ids(out)) & {19, 20}
    assert _ids(out) == list(range(1, 11)) and "explore" not in set(out["source"])
    # A partial bury only lowers a score; the exploration slot (which ignores scores) still takes the item.
    half = finalize_lists(_cand(items.iloc[:18]), items, top_n=10, config=cfg, as_of=AS_OF,
                          rules=_rules((1, "bury", None, None, "z", 0.5)))
    assert "explore" in set(half["source"])


def test_repurchase_windows_accept_a_naive_as_of_like_exploration_does() -> None:
    """A naive as_of (UTC, as _new_items already assumes) used to crash the repurchase-window age."""
    items = _items(3)
    bought = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2],
                           "ts": pd.to_datetime(["2026-11-10", "2026-11-22"], utc=True)})
    cfg = PLAIN.with_overrides({"repurchase_days": {"Home": 7.0}})
    naive = finalize_lists(_cand(items), items, top_n=3, config=cfg, bought=bought, as_of=datetime(2026, 11, 24))
    aware = finalize_lists(_cand(items), items, top_n=3, config=cfg, bought=bought, as_of=AS_OF)
    assert _ids(naive) == _ids(aware) == [1, 3]  # 14 days > 7: item 1 is back; 2 days < 7: item 2 stays out


# -- determinism -------------------------------------------------------------------------------------------
def test_a_candidate_proposed_twice_with_equal_scores_keeps_the_same_reason_in_any_row_order() -> None:
    """The duplicate guard kept the first row of an equal-score tie, so the stored reason and anchor depended
    on the candidates' row order (test_same_input_same_output treats a reordering as the same input)."""
    items = _items(8)
    cand = pd.DataFrame({"user_id": 1, "item_id": [3, 3, 4, 5, 5], "p_recall": [0.5, 0.5, 0.4, 0.3, 0.3],
                         "source": ["item-cf", "item-cf", "item-cf", "content", "item-cf"],
                         "anchor_item_id": pd.array([2, 1, 1, 6, 7], dtype="Int64")})
    one = finalize_lists(cand, items, top_n=3, config=PLAIN)
    two = finalize_lists(cand.iloc[::-1], items, top_n=3, config=PLAIN)
    pd.testing.assert_frame_equal(one, two)
    assert one["anchor_item_id"].tolist() == [1, 1, 6]  # ties: source by name, then the lower anchor
    assert one["reason"].iloc[0] == "because you viewed \u201cItem 1\u201d"


# -- the near-real-time refresh re-ranks with the nightly rules? ----------------------------------------------
def _refresh_shop(url: str, home: str) -> None:
    """A small generated shop with a seeded live run whose history the refresh has already passed."""
    from datetime import timedelta

    from pipeline.datagen import generate_shop
    from pipeline.refresh import pending, refresh_once
    from pipeline.refresh.seed import seed_live_run

    as_of = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    generate_shop(url, users=80, items=80, days=7, seed=5, end=as_of)
    seed_live_run(url, home, as_of)
    refresh_once(url, home, cfg=REFRESH_CFG)
    assert pending(url) == 0


def _view_now(url: str, user: int, item: int) -> None:
    from pipeline.db.engine import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, session_id, ts) "
                    "SELECT coalesce(max(event_id), 0) + 1, %s, %s, 'view', 'edge', clock_timestamp() "
                    "FROM shop.events", (user, item))


def _served(url: str, user: int) -> pd.DataFrame:
    """The user's list as downstream SQL reads it, with each item's top-level category."""
    from pipeline.db.engine import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT r.rank, r.item_id, split_part(i.category, '>', 1), r.variant, r.run_id "
                    "FROM recsys.user_recommendations r JOIN shop.items i USING (item_id) "
                    "WHERE r.user_id = %s ORDER BY r.rank", (user,))
        return pd.DataFrame(cur.fetchall(), columns=["rank", "item_id", "top", "variant", "run_id"])


def _first_item(url: str) -> tuple[int, str]:
    from pipeline.db.engine import connect

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT item_id, split_part(category, '>', 1) FROM shop.items WHERE in_stock AND visible "
                    "ORDER BY item_id LIMIT 1")
        item, top = cur.fetchone()
    return int(item), str(top)



@pytest.mark.integration
def test_a_refreshed_list_keeps_the_merchandisers_exclusions(db_url: str, tmp_path: Path) -> None:
    from pipeline.db.engine import connect
    from pipeline.refresh import refresh_once

    home = str(tmp_path / "home")
    _refresh_shop(db_url, home)
    item, top = _first_item(db_url)
    with connect(db_url) as conn, conn.cursor() as cur:  # the merchandiser hides a whole top-level category
        cur.execute("INSERT INTO recsys.rules (kind, category, note) VALUES ('exclude', %s, 'edge test')", (top,))
    _view_now(db_url, 1, item)  # fresh interest in exactly that category
    assert refresh_once(db_url, home, cfg=REFRESH_CFG)["users"] == 1
    served = _served(db_url, 1)
    assert served["run_id"].str.startswith("refresh_").all() and len(served)  # the overlay is what is served
    assert top not in set(served["top"])


@pytest.mark.integration
def test_a_refreshed_list_keeps_the_users_ab_variant(db_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from pipeline.refresh import refresh_once
    from pipeline.rerank import assign_variants, parse_variants

    spec = {"a": {"weight": 1.0}, "b": {"weight": 1.0, "mmr_lambda": 0.5}}
    monkeypatch.setenv("RERANK_VARIANTS", json.dumps(spec))
    monkeypatch.setenv("RERANK_VARIANT_SALT", "edge")
    home = str(tmp_path / "home")
    _refresh_shop(db_url, home)
    users = [1, 2, 3, 4, 5, 6]
    item, _ = _first_item(db_url)
    for u in users:
        _view_now(db_url, u, item)
    assert refresh_once(db_url, home, cfg=REFRESH_CFG)["users"] == len(users)
    want = dict(zip(users, assign_variants(np.array(users), parse_variants(spec), "edge"), strict=True))
    got = {u: set(_served(db_url, u)["variant"]) for u in users}
    assert got == {u: {want[u]} for u in users}
