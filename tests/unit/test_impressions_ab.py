"""Issue 25 units: the impressions reader, PSI, the SRM check, the intervals, the position propensity and the
impression-aware training groups (known answers, no services)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.rank.data import Window, position_propensity, sample_groups
from pipeline.reporting import drift
from pipeline.reporting.ab import arm_stats, differences, srm_check


def test_impressions_reader_keeps_good_rows_and_gives_each_bad_one_its_reasons(tmp_path) -> None:
    from pipeline.ingest.impressions import read_impressions

    f = tmp_path / "shown.csv"
    f.write_text("uid,item_id,pos,ts,variant\n"
                 "1,10,1,2026-11-20T10:00:00Z,a\n"
                 "1,11,2,2026-11-20T10:00:00Z,\n"
                 "x,12,3,2026-11-20T10:00:00Z,a\n"
                 "2,13,0,2026-11-20T10:00:00Z,a\n"
                 "2,14,1,yesterday,a\n"
                 "1,10,1,2026-11-20T10:00:00Z,a\n")
    good, bad = read_impressions(f, {"user_id": "uid", "rank": "pos"})
    assert good[["user_id", "item_id", "rank", "variant", "placement"]].values.tolist() == [
        [1, 10, 1, "a", "home"], [1, 11, 2, "control", "home"]]
    reasons = dict(zip([r["line"] for r in bad["raw"]], bad["reason"], strict=True))
    assert set(reasons) == {4, 5, 6, 7}
    assert reasons[4].startswith("bad user_id") and "not an integer in [1, 10000]" in reasons[5]
    assert "impossible timestamp" in reasons[6] and "duplicate impression" in reasons[7]
    assert set(bad["source"]) == {"shop.impressions"}


def test_psi_known_values() -> None:
    assert drift.psi([50, 50], [50, 50]) == 0.0
    want = 0.4 * math.log(1.8) + (-0.4) * math.log(0.2)
    assert drift.psi([50, 50], [90, 10]) == pytest.approx(want)
    assert drift.psi_categorical(pd.Series(["a", "b"] * 50), pd.Series(["a"] * 90 + ["b"] * 10)) == pytest.approx(want)
    assert drift.level(0.05, 0.1, 0.25) == "ok" and drift.level(0.1, 0.1, 0.25) == "warn"
    assert drift.level(0.3, 0.1, 0.25) == "alert" and drift.level(float("nan"), 0.1, 0.25) == "n/a"


def test_srm_check_flags_a_skewed_split_only() -> None:
    fine = srm_check({"a": 5000, "b": 5000})
    assert fine["p_value"] == pytest.approx(1.0) and not fine["mismatch"]
    skewed = srm_check({"a": 5300, "b": 4700})  # chi2 = 36, p ~ 2e-9
    assert skewed["chi2"] == pytest.approx(36.0) and skewed["mismatch"]
    declared = srm_check({"a": 8000, "b": 2000}, {"a": 0.8, "b": 0.2})
    assert not declared["mismatch"]
    assert srm_check({"a": 10, "b": 1}, {"a": 1.0})["mismatch"]  # users in an arm with no share


def _users(arm: str, n: int, p_buy: float, rng: np.random.Generator) -> pd.DataFrame:
    buy = rng.random(n) < p_buy
    imp = rng.integers(5, 15, n)
    return pd.DataFrame({"variant": arm, "user_id": np.arange(n), "impressions": imp,
                         "clicks": rng.binomial(imp, 0.1 + p_buy), "carted": buy | (rng.random(n) < 0.1),
                         "purchased": buy, "revenue": buy * 20.0, "arms": 1})


def test_delta_intervals_match_the_formula_and_the_bootstrap() -> None:
    rng = np.random.default_rng(0)
    users = pd.concat([_users("control", 4000, 0.05, rng), _users("b", 4000, 0.08, rng)], ignore_index=True)
    stats = arm_stats(users)
    d = differences(users, stats, "control").set_index("metric")
    c, b = users[users["variant"] == "control"], users[users["variant"] == "b"]
    se = math.sqrt(c["purchased"].var() / len(c) + b["purchased"].var() / len(b))
    diff = b["purchased"].mean() - c["purchased"].mean()
    assert d.at["conversion", "diff"] == pytest.approx(diff)
    assert d.at["conversion", "ci_low"] == pytest.approx(diff - 1.959964 * se, rel=1e-5)
    assert d.at["conversion", "significant"] and d.at["ctr", "ci_low"] > 0
    boot = differences(users, stats, "control", method="bootstrap", n_boot=400).set_index("metric")
    assert boot.at["conversion", "ci_low"] == pytest.approx(d.at["conversion", "ci_low"], abs=0.006)
    same = pd.concat([_users("control", 3000, 0.05, rng), _users("b", 3000, 0.05, rng)], ignore_index=True)
    dd = differences(same, arm_stats(same), "control").set_index("metric")
    assert dd.at["conversion", "ci_low"] < 0 < dd.at["conversion", "ci_high"]


def test_propensity_recovers_the_simulated_position_bias() -> None:
    from pipeline.datagen.build import build_world
    from pipeline.datagen.loop import examination, logged_impressions

    world = build_world(3000, 300, 8, seed=4)
    shown, ev = logged_impressions(world, 6)
    p = position_propensity(shown, ev.assign(ts=pd.to_datetime(ev["ts"], utc=True)))
    truth = examination(np.arange(1, 11))
    assert np.abs(p[:5] - truth[:5]).max() < 0.12, p[:5]
    assert np.all(np.diff(p) <= 0) and p.min() >= 0.05
    assert (position_propensity(None, ev) == 1).all()


def test_groups_use_shown_negatives_and_inverse_propensity_weights() -> None:
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    labels = pd.DataFrame({"user_id": [1, 1], "item_id": [100, 101], "weight": [1.0, 1.0]})
    cand = pd.DataFrame({"user_id": 1, "item_id": np.arange(200, 230), "source": "item-cf", "recall_score": 1.0,
                         "p_recall": 0.5})
    touched = labels[["user_id", "item_id"]]
    shown = pd.DataFrame({"user_id": 1, "item_id": [100, 300, 301, 302], "rank": [4, 1, 2, 3]})
    prop = np.array([1.0, 0.5, 0.25, 0.2, 0.1])
    base = dict(cutoff=t0, end=t0 + timedelta(days=1), labels=labels, touched=touched, candidates=cand,
                history=pd.DataFrame())
    pool = np.arange(1, 500)
    plain = sample_groups(Window(**base), pool, seed=1, n_shown_neg=3)
    again = sample_groups(Window(**base, impressions=shown, propensity=prop), pool, seed=1, n_shown_neg=0)
    assert plain.rows["item_id"].tolist() == again.rows["item_id"].tolist()  # off: the groups of before
    g = sample_groups(Window(**base, impressions=shown, propensity=prop), pool, seed=1, n_shown_neg=3)
    items = g.rows["item_id"].to_numpy().reshape(2, g.size)
    for grp in items:
        assert set(grp[1:4]) == {300, 301, 302}  # the shown-and-not-clicked items come first
    assert g.group_weight.tolist() == [5.0, 1.0]  # shown at rank 4: 1 / 0.2; item 101 was not shown
    capped = sample_groups(Window(**base, impressions=shown, propensity=prop), pool, seed=1, n_shown_neg=3,
                           ipw_clip=2.0)
    assert capped.group_weight.tolist() == [2.0, 1.0]
