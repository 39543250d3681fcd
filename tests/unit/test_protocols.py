"""Exact tests of the evaluation splits, including that train and test never leak into each other."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate.protocols import leave_one_out, msr_stratified_split, temporal_split


def ratings(counts: dict[int, int]) -> pd.DataFrame:
    """item -> number of ratings; users are distinct per row, ``rid`` identifies the row."""
    items = np.repeat(list(counts), list(counts.values()))
    return pd.DataFrame({"user_id": np.arange(len(items)), "item_id": items, "rid": np.arange(len(items))})


def test_msr_stratified_counts_per_item() -> None:
    # train = round(0.75 n) with numpy's half-to-even rounding, exactly as MSR's splitter
    counts = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 10}
    train, test = msr_stratified_split(ratings(counts))
    want_train = {1: 1, 2: 2, 3: 2, 4: 3, 5: 4, 6: 8}
    assert train.groupby("item_id").size().to_dict() == want_train
    assert test.groupby("item_id").size().to_dict() == {i: counts[i] - want_train[i] for i in (3, 4, 5, 6)}


def test_msr_stratified_no_leakage_and_exact_membership() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"user_id": rng.integers(0, 40, 500), "item_id": rng.integers(0, 30, 500)})
    df = df.drop_duplicates().reset_index(drop=True).assign(rid=lambda d: np.arange(len(d)))
    train, test = msr_stratified_split(df, ratio=0.75, seed=42)
    assert set(train.rid).isdisjoint(test.rid)
    assert sorted([*train.rid, *test.rid]) == list(df.rid)
    assert set(test.item_id) <= set(train.item_id)  # stratified per item: test items are known
    assert list(train.columns) == list(df.columns)
    # the draws are np.random.seed(42); rand(n) in input order: per item the lowest draws are train
    np.random.seed(42)
    draw = pd.Series(np.random.rand(len(df)), index=df.rid)
    for _, g in df.groupby("item_id"):
        n_train = int(np.round(0.75 * len(g)))
        lowest = set(draw[g.rid].sort_values().index[:n_train])
        assert lowest == set(train.rid[train.item_id == g.item_id.iloc[0]])
    again, _ = msr_stratified_split(df, seed=42)
    other, _ = msr_stratified_split(df, seed=7)
    assert again.rid.tolist() == train.rid.tolist()
    assert set(other.rid) != set(train.rid)
    assert "_random" not in df.columns  # the caller's frame is not modified


def test_msr_stratified_by_user_and_errors() -> None:
    df = ratings({1: 4}).assign(user_id=0, item_id=np.arange(4))
    train, test = msr_stratified_split(df, filter_by="user")
    assert (len(train), len(test)) == (3, 1)
    with pytest.raises(ValueError, match="ratio"):
        msr_stratified_split(df, ratio=1.0)
    with pytest.raises(ValueError, match="missing"):
        msr_stratified_split(df.drop(columns="item_id"))


def seq(user: int, items: list[int], start: int = 0) -> pd.DataFrame:
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(items)) + start, unit="h")
    return pd.DataFrame({"user_id": user, "item_id": items, "ts": ts})


def test_leave_one_out_positions() -> None:
    df = pd.concat([seq(1, [10, 11, 12, 13, 14]), seq(2, [20, 21, 22]), seq(3, [30, 31])])
    df = df.sample(frac=1, random_state=0).reset_index(drop=True)  # order comes from ts, not rows
    s = leave_one_out(df)
    assert s.train.groupby("user_id").item_id.apply(list).to_dict() == {1: [10, 11, 12], 2: [20], 3: [30, 31]}
    assert dict(zip(s.valid.user_id, s.valid.item_id, strict=True)) == {1: 13, 2: 21}
    assert dict(zip(s.test.user_id, s.test.item_id, strict=True)) == {1: 14, 2: 22}
    hist = s.test_history.groupby("user_id").item_id.apply(sorted).to_dict()
    assert hist[1] == [10, 11, 12, 13]  # the test step ranks from items[:-1]
    # no leakage: nothing in train is later than the validation item, nothing in valid later than test
    for u in (1, 2):
        assert s.train[s.train.user_id == u].ts.max() < s.valid[s.valid.user_id == u].ts.iloc[0]
        assert s.valid[s.valid.user_id == u].ts.iloc[0] < s.test[s.test.user_id == u].ts.iloc[0]
    assert len(s.train) + len(s.valid) + len(s.test) == len(df)


def test_leave_one_out_equal_timestamps_use_event_id() -> None:
    df = pd.DataFrame({"user_id": 1, "item_id": [7, 8, 9, 6], "event_id": [4, 3, 2, 1],
                       "ts": pd.Timestamp("2024-01-01", tz="UTC")})
    s = leave_one_out(df)
    assert s.train.item_id.tolist() == [6, 9]
    assert s.valid.item_id.tolist() == [8]
    assert s.test.item_id.tolist() == [7]


def test_temporal_split_boundaries_and_no_leakage() -> None:
    t0 = pd.Timestamp("2024-01-01", tz="UTC")
    df = pd.DataFrame({
        "user_id": [1, 1, 1, 2, 2, 1, 3],
        "item_id": [10, 11, 10, 20, 21, 12, 30],
        "ts": [t0, t0 + pd.Timedelta("23h"), t0 + pd.Timedelta("1D"), t0 + pd.Timedelta("25h"),
               t0 + pd.Timedelta("25h"), t0 + pd.Timedelta("2D"), t0 + pd.Timedelta("47h")],
    })
    train, test = temporal_split(df, cutoff="2024-01-02", window="1D")
    assert train.ts.max() < pd.Timestamp("2024-01-02", tz="UTC") <= test.ts.min()
    assert test.ts.max() < pd.Timestamp("2024-01-03", tz="UTC")  # the row at exactly +2D is outside
    # user 1 re-views item 10 in the window: already seen in train, dropped; 11 is train only
    assert sorted(zip(test.user_id, test.item_id, strict=True)) == [(2, 20), (2, 21), (3, 30)]
    _, keep = temporal_split(df, cutoff="2024-01-02", window="1D", drop_seen=False)
    assert (1, 10) in set(zip(keep.user_id, keep.item_id, strict=True))
    tr, te = temporal_split(df, window="1D")  # default cutoff: the last day of data
    assert te.ts.min() >= df.ts.max() - pd.Timedelta("1D") > tr.ts.max() - pd.Timedelta("1s")
