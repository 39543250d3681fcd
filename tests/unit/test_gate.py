"""The output quality gate: each check passes on good lists and fails, by name, on a bad one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ConfigError, QualityGateFailed
from pipeline.publish import CHECKS, GateThresholds, check_output
from pipeline.publish.gate import churn_against


def _items(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"item_id": np.arange(1, n + 1), "in_stock": True, "visible": True,
                         "category": [f"C{i % 4}" for i in range(n)]})


def _recs(users: int = 4, k: int = 5, shift: int = 0) -> pd.DataFrame:
    rows = [(u, r, (u + r + shift) % 20 + 1, "item-cf", "because you viewed \u201cX\u201d")
            for u in range(1, users + 1) for r in range(1, k + 1)]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "source", "reason"]).assign(variant="control")


USERS = pd.Series([1, 2, 3, 4])


def _fails(recs: pd.DataFrame, check: str, items: pd.DataFrame | None = None, **kw: object) -> QualityGateFailed:
    with pytest.raises(QualityGateFailed) as info:
        check_output(recs, users=kw.pop("users", USERS), items=_items() if items is None else items, **kw)
    assert info.value.failed_checks == [check]
    assert f"[{check}]" in str(info.value)
    return info.value


def test_good_lists_pass_with_figures() -> None:
    fig = check_output(_recs(), users=USERS, items=_items(), live=_recs())
    assert fig["empty_lists"] == 0 and fig["duplicate_items"] == 0 and fig["unavailable_items"] == 0
    assert fig["coverage"] == pytest.approx(8 / 20) and fig["fallback_share"] == 0.0
    assert fig["churn"] == 0.0 and fig["variants"] == {"control": 4}
    assert 0 < fig["diversity"] <= 1
    assert set(CHECKS) <= set(fig)


def test_empty_lists() -> None:
    _fails(_recs(), "empty_lists", users=pd.Series([1, 2, 3, 4, 5]))
    check_output(_recs(), users=pd.Series([1, 2, 3, 4, 5]), items=_items(), thresholds={"max_empty_lists": 1})


def test_exhausted_users_are_reported_not_counted_as_empty() -> None:
    """A user with nothing eligible left (bought every available item) has an empty list by right: it must
    not refuse everyone's run. Any other user without a list still fails the check."""
    users = pd.Series([1, 2, 3, 4, 5])
    fig = check_output(_recs(), users=users, items=_items(), exhausted=pd.Series([5]))
    assert fig["empty_lists"] == 0 and fig["exhausted_users"] == 1
    err = _fails(_recs(), "empty_lists", users=pd.Series([1, 2, 3, 4, 5, 6]), exhausted=pd.Series([5]))
    assert err.figures["empty_lists"] == 1 and err.figures["exhausted_users"] == 1
    # a listed user named exhausted is not counted twice
    assert check_output(_recs(), users=USERS, items=_items(), exhausted=pd.Series([1]))["exhausted_users"] == 0


def test_duplicate_items() -> None:
    r = _recs()
    r.loc[1, "item_id"] = r.loc[0, "item_id"]
    _fails(r, "duplicate_items")


def test_bad_ranks() -> None:
    r = _recs()
    r.loc[r["user_id"] == 2, "rank"] = [1, 2, 4, 5, 6]  # a gap: a reader's LIMIT 5 sees four items
    err = _fails(r, "bad_ranks")
    assert err.figures["bad_ranks"] == 1
    r = _recs()
    r.loc[(r["user_id"] == 3) & (r["rank"] == 2), "rank"] = 1  # a repeat
    _fails(r, "bad_ranks")
    shuffled = _recs().sample(frac=1.0, random_state=0)  # row order is not rank order: fine
    assert check_output(shuffled, users=USERS, items=_items())["bad_ranks"] == 0


def test_bad_scores() -> None:
    r = _recs().assign(score=1.0)
    r.loc[0, "score"] = np.nan
    r.loc[1, "score"] = np.inf  # an infinite boost factor
    assert _fails(r, "bad_scores").figures["bad_scores"] == 2


def test_unavailable_items() -> None:
    items = _items()
    items.loc[items["item_id"] == 3, "in_stock"] = False  # user 1 rank 1 holds item 3
    _fails(_recs(), "unavailable_items", items=items)
    items = _items()
    items.loc[items["item_id"] == 3, "visible"] = False
    _fails(_recs(), "unavailable_items", items=items)


def test_missing_reasons() -> None:
    r = _recs()
    r.loc[2, "reason"] = " "
    _fails(r, "missing_reasons")


def test_coverage() -> None:
    _fails(_recs(), "coverage", thresholds={"min_coverage": 0.5})


def test_fallback_share() -> None:
    r = _recs().assign(source="popularity")
    _fails(r, "fallback_share")
    check_output(r, users=USERS, items=_items(), thresholds={"max_fallback_share": 1.0})


def test_diversity() -> None:
    items = _items().assign(category="same")
    err = _fails(_recs(), "diversity", items=items, thresholds={"min_diversity": 0.2})
    assert err.figures["diversity"] == 0.0
    fig = check_output(_recs(), users=USERS, items=_items(), thresholds={"min_diversity": 0.2})
    assert fig["diversity"] >= 0.2


def test_diversity_over_embeddings() -> None:
    ids = np.arange(1, 21)
    same = (ids, np.ones((20, 3), dtype=np.float32))
    _fails(_recs(), "diversity", thresholds={"min_diversity": 0.1}, item_embeddings=same)


def test_churn_against_live_run() -> None:
    live = pd.DataFrame({"user_id": [1, 1, 2, 2, 9], "item_id": [1, 2, 1, 2, 5]})
    new = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 3, 3, 4]})
    # user 1: |{1}| / |{1,2,3}| = 1/3; user 2: 0; user 9 is not in the new run
    assert churn_against(new, live) == pytest.approx(1 - (1 / 3) / 2)
    assert churn_against(new, live.assign(user_id=99)) is None
    _fails(_recs(), "churn", live=_recs(shift=7), thresholds={"max_churn": 0.5})


def test_several_failures_are_all_named() -> None:
    with pytest.raises(QualityGateFailed) as info:
        check_output(_recs().assign(source="popularity"), users=pd.Series([1, 2, 3, 4, 5]), items=_items())
    assert info.value.failed_checks == ["empty_lists", "fallback_share"]


def test_unknown_threshold_fails_fast() -> None:
    with pytest.raises(ConfigError, match="max_empty"):
        GateThresholds.from_dict({"max_empty": 3})


def test_lists_longer_than_top_n_fail() -> None:
    assert check_output(_recs(k=5), users=USERS, items=_items(), top_n=5)["long_lists"] == 0
    err = _fails(_recs(k=6), "long_lists", top_n=5)
    assert err.figures["long_lists"] == 4 and "top_n=5" in str(err)


def test_truncated_lists_fail_but_a_few_short_ones_pass() -> None:
    """A stage that cuts every list short is refused; a minority of short lists (users who bought most of the
    catalogue) passes; a catalogue smaller than top_n asks only for what is available."""
    err = _fails(_recs(k=3), "short_lists", top_n=5)
    assert err.figures["short_lists"] == 1.0
    one_short = _recs(k=5)
    one_short = one_short[~((one_short["user_id"] == 1) & (one_short["rank"] > 3))]
    assert check_output(one_short, users=USERS, items=_items(), top_n=5)["short_lists"] == 0.25
    small = _recs(k=5).assign(item_id=lambda d: d["rank"])  # every list holds the whole 5-item catalogue
    assert check_output(small, users=USERS, items=_items(5), top_n=10)["short_lists"] == 0.0
    assert check_output(_recs(k=3), users=USERS, items=_items(), top_n=5,
                        thresholds={"max_short_share": 1.0})["short_lists"] == 1.0
    assert "short_lists" in check_output(_recs(k=3), users=USERS, items=_items())  # no top_n: not judged


def test_all_fallback_lists_pass_only_while_nothing_is_published() -> None:
    """A new shop's first run has no history, so every list is the popularity fallback. With a live run the
    gate keeps it instead (personal sources broke); with nothing live, refusing leaves users with no list."""
    cold = _recs().assign(source="popularity")
    _fails(cold, "fallback_share")
    fig = check_output(cold, users=USERS, items=_items(), nothing_live=True)
    assert fig["fallback_share"] == 1.0 and fig["fallback_share_enforced"] is False
    _fails(cold.assign(reason=None), "missing_reasons", nothing_live=True)  # the other checks still hold
