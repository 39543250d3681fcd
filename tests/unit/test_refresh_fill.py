"""The refresh's last resort: a user whose every kept candidate is excluded still gets the popular items
they may be shown (``recommend`` -> ``fill_empty_lists``), on the tiny shop of test_refresh_fresh."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from test_refresh_fresh import NOW, _events, _items, _neighbours, build_lists

from pipeline import recommend as fresh
from pipeline.recommend import RecommendConfig
from pipeline.rerank import assign_variants, parse_variants

#: Few candidates per user, so the ones the refresh keeps are the fresh intent's, not the popularity fallback.
CFG = RecommendConfig(top_n=3, n_candidates=4)
#: Merchandiser rules (recsys.rules): the whole Home shelf is excluded, and so is Sports item 13.
RULES = pd.DataFrame([(1, "exclude", None, "Home", None, 1.0), (2, "exclude", 13, None, None, 1.0)],
                     columns=["rule_id", "kind", "item_id", "category", "brand", "factor"]).astype(
    {"item_id": "Int64", "factor": "float64"})
HOME = set(range(1, 7))


def _history(home_users: tuple[int, ...], sports_user: int | None = None) -> pd.DataFrame:
    """Each of ``home_users`` bought Sports item 11 (the most active) a month ago and just viewed Home items
    1 and 2; ``sports_user`` just viewed Sports items 12 and 13."""
    rows: list[tuple] = []
    for u in home_users:
        rows += [(len(rows) + 1, u, 11, "purchase", None, NOW - timedelta(days=30)),
                 (len(rows) + 2, u, 1, "view", None, NOW - timedelta(seconds=30)),
                 (len(rows) + 3, u, 2, "view", None, NOW)]
    if sports_user is not None:
        rows += [(len(rows) + 1, sports_user, 12, "view", None, NOW - timedelta(seconds=30)),
                 (len(rows) + 2, sports_user, 13, "view", None, NOW)]
    return _events(rows)


def _batch(ev: pd.DataFrame) -> np.ndarray:
    """The batch: the last minute's events (the month-old purchase is history, not fresh intent)."""
    return ev.loc[ev["ts"] >= pd.Timestamp(NOW) - pd.Timedelta(minutes=1), "event_id"].to_numpy()


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, pd.DataFrame]:
    """Records what build_lists hands the re-rank (its kept candidates) and what the re-rank returns (the
    lists before the fill), calling the real functions."""
    seen: dict[str, pd.DataFrame] = {}
    real = fresh.finalize_lists

    def finalize(cand: pd.DataFrame, *args, **kwargs) -> pd.DataFrame:
        seen["cand"] = cand.copy()
        seen["before_fill"] = out = real(cand, *args, **kwargs)
        return out

    monkeypatch.setattr(fresh, "finalize_lists", finalize)
    return seen


def test_a_user_whose_kept_candidates_are_all_excluded_by_a_rule_gets_the_popular_eligible_items(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """User 7's fresh intent is Home, which a rule excludes: every candidate the refresh kept is gone, so the
    fill lists the most active items they may still see (11 bought, 13 excluded, 16 out of stock, Home
    excluded: 12, 14, 15). User 8 browses Sports and keeps their own refreshed list."""
    seen = _spy(monkeypatch)
    ev = _history((7,), sports_user=8)
    lists = build_lists(np.array([7, 8]), ev, _batch(ev), _neighbours(), _items(), NOW, CFG,
                        rules=RULES)

    # The precondition, checked rather than assumed: the refresh kept candidates for user 7, all of them
    # rule-excluded Home items, so the re-rank gave user 7 no list and user 8 a full one.
    kept = seen["cand"]
    assert set(kept.loc[kept["user_id"] == 7, "item_id"]) == {1, 2, 3, 4}
    assert set(kept.loc[kept["user_id"] == 7, "item_id"]) <= HOME
    before = seen["before_fill"]
    assert 7 not in set(before["user_id"]) and (before["user_id"] == 8).sum() == CFG.top_n

    mine = lists[lists["user_id"] == 7].sort_values("rank")
    items = _items().set_index("item_id")
    assert mine["item_id"].tolist() == [12, 14, 15]  # by activity, skipping 11 (bought) and 13 (excluded)
    assert mine["rank"].tolist() == [1, 2, 3]
    assert not set(mine["item_id"]) & (HOME | {13}) and items.loc[mine["item_id"], "in_stock"].all()
    assert 11 not in set(mine["item_id"])  # bought
    assert set(mine["source"]) == {"popularity"}
    assert set(mine["reason"]) == {"popular right now"}
    assert mine["anchor_item_id"].isna().all() and set(mine["variant"]) == {"control"}
    assert mine["score"].is_monotonic_decreasing and mine["score"].gt(0).all()

    # User 8: their own list, as the re-rank built it (only the fresh reasons are written afterwards).
    theirs = lists[lists["user_id"] == 8].sort_values("rank").reset_index(drop=True)
    cols = ["rank", "item_id", "score", "source", "anchor_item_id", "variant"]
    pd.testing.assert_frame_equal(theirs[cols], before[before["user_id"] == 8].reset_index(drop=True)[cols])
    assert theirs["item_id"].tolist() == [12, 11, 14]  # 13 (viewed, rule-excluded) is gone
    assert "popularity" not in set(theirs["source"])
    fresh_rows = theirs[theirs["source"] == "fresh-cf"]
    assert len(fresh_rows) and all(r.startswith("because you just viewed \u201cHiking boot 1")
                                   for r in fresh_rows["reason"])
    assert not lists.duplicated(["user_id", "item_id"]).any()
    assert lists[lists["reason"].isna() | lists["reason"].eq("")].empty


def test_the_fill_keeps_each_users_ab_arm_and_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users 7 and 8 have the same history (Home intent, all rule-excluded) but land in different A/B arms;
    each filled list is in the user's own arm, under that arm's settings: ``back`` lets Sports purchases
    return after 7 days, so its user sees item 11 (bought a month ago) again, the control user does not."""
    variants = {"control": {"weight": 0.5}, "back": {"weight": 0.5, "repurchase_days": {"Sports": 7.0}}}
    users = np.array([7, 8])
    arms = dict(zip(users.tolist(), assign_variants(users, parse_variants(variants), "rerank-ab"), strict=True))
    assert arms == {7: "control", 8: "back"}  # the precondition: one user per arm

    seen = _spy(monkeypatch)
    ev = _history((7, 8))
    lists = build_lists(users, ev, _batch(ev), _neighbours(), _items(), NOW, CFG, rules=RULES,
                        variants=variants)
    assert set(seen["cand"]["item_id"]) <= HOME and seen["before_fill"].empty

    by_user = {u: g.sort_values("rank") for u, g in lists.groupby("user_id")}
    assert sorted(by_user) == [7, 8]  # both got a list, neither from the re-rank of their own candidates
    assert by_user[7]["item_id"].tolist() == [12, 14, 15]
    assert by_user[8]["item_id"].tolist() == [11, 12, 14]
    for u, g in by_user.items():
        assert set(g["variant"]) == {arms[u]}
        assert set(g["source"]) == {"popularity"} and set(g["reason"]) == {"popular right now"}


def test_an_arms_repurchase_window_reaches_the_refreshs_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users 7 and 8 bought Sports item 11 a month ago and just viewed its neighbours 12 and 13. Only the
    ``back`` arm (user 8) lets Sports purchases return after 7 days: the refresh keeps 11 as user 8's
    candidate, so their list shows it, and user 7's does not. (Filtering the candidates with the base
    config's windows alone dropped 11 for everyone before the re-rank could apply the arm's.)"""
    variants = {"control": {"weight": 0.5}, "back": {"weight": 0.5, "repurchase_days": {"Sports": 7.0}}}
    users = np.array([7, 8])
    assert dict(zip(users.tolist(), assign_variants(users, parse_variants(variants), "rerank-ab"),
                    strict=True)) == {7: "control", 8: "back"}
    rows: list[tuple] = []
    for u in (7, 8):
        rows += [(len(rows) + 1, u, 11, "purchase", None, NOW - timedelta(days=30)),
                 (len(rows) + 2, u, 12, "view", None, NOW - timedelta(seconds=30)),
                 (len(rows) + 3, u, 13, "view", None, NOW)]
    ev = _events(rows)
    seen = _spy(monkeypatch)
    lists = build_lists(users, ev, _batch(ev), _neighbours(), _items(), NOW, RecommendConfig(top_n=4, n_candidates=8),
                        variants=variants)
    kept = seen["cand"]
    assert 11 in set(kept.loc[kept["user_id"] == 8, "item_id"])
    assert 11 not in set(kept.loc[kept["user_id"] == 7, "item_id"])
    by_user = {u: g.sort_values("rank") for u, g in lists.groupby("user_id")}
    assert 11 in set(by_user[8]["item_id"]) and 11 not in set(by_user[7]["item_id"])
    assert set(by_user[8]["variant"]) == {"back"} and set(by_user[7]["variant"]) == {"control"}
