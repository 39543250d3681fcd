"""Evaluation protocols (splits): MSR stratified, S3-Rec leave-one-out, temporal.

Each takes an interactions frame (user_id, item_id, optional rating / ts / event_id) and returns plain
DataFrames, so a split can be written to CSV and recomputed with another library.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.frames import ITEM_COL, TS_COL, USER_COL

PROTOCOLS = ("msr-stratified", "leave-one-out", "temporal")


def _require(df: pd.DataFrame, cols: list[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"interactions are missing column(s) {missing}; they have {list(df.columns)}")


def msr_stratified_split(
    df: pd.DataFrame,
    ratio: float = 0.75,
    seed: int = 42,
    *,
    filter_by: str = "item",
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Microsoft Recommenders' ``python_stratified_split`` (random, per ``filter_by`` group).

    Same steps as MSR's ``_do_stratification`` so that the same input rows in the same order give the same
    split: ``np.random.seed(seed)``; one uniform draw per row in input order; sort by (group, draw); the
    first ``round(ratio * n)`` rows of each group (numpy round: half to even) go to train, the rest to test.
    So an item with 1 or 2 ratings stays wholly in train, one with 3 puts 1 in test. Returns copies
    without helper columns, in the sorted order MSR returns.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    if filter_by not in ("user", "item"):
        raise ValueError("filter_by must be 'user' or 'item'")
    _require(df, [col_user, col_item])
    by = col_user if filter_by == "user" else col_item
    np.random.seed(seed)  # MSR seeds the global generator; kept for identical draws
    draws = np.random.rand(df.shape[0])
    data = df.assign(_random=draws).sort_values([by, "_random"])
    groups = data.groupby(by)
    count = groups[by].transform("count").to_numpy()
    rank = groups.cumcount().to_numpy() + 1
    cut = np.round(ratio * count)
    data = data.drop(columns="_random")
    train = data[rank <= cut]
    test = data[(rank > cut) & (rank <= np.round(1.0 * count))]
    return train, test


@dataclass
class LeaveOneOut:
    """S3-Rec/SASRec split: ``train`` = items[:-2] per user; ``valid``/``test`` = the item at -2 / -1.

    Ranking histories: validation ranks against ``train`` (items[:-2]); test against
    ``train + valid`` (items[:-1]); the model is fitted once, on ``train``.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    @property
    def test_history(self) -> pd.DataFrame:
        """items[:-1] per user: the history the test step ranks from (and excludes)."""
        return pd.concat([self.train, self.valid], ignore_index=True)


def leave_one_out(
    df: pd.DataFrame,
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_ts: str = TS_COL,
    order_col: str | None = "event_id",
    min_len: int = 3,
) -> LeaveOneOut:
    """Split each user's sequence (ordered by ts, then ``order_col``, then input order) into
    items[:-2] / item -2 / item -1.

    Users with fewer than ``min_len`` interactions have no validation and test item: all their rows stay
    in train (S3-Rec's data are 5-core, so this only matters on other data).
    """
    _require(df, [col_user, col_item])
    keys = [col_user] + [c for c in (col_ts, order_col) if c and c in df.columns]
    data = df.assign(_pos=np.arange(len(df))).sort_values([*keys, "_pos"], kind="stable")
    g = data.groupby(col_user, sort=False)
    n = g[col_item].transform("size").to_numpy()
    back = n - g.cumcount().to_numpy()  # 1 = last item
    long_enough = n >= min_len
    data = data.drop(columns="_pos")
    train = data[~long_enough | (back > 2)].reset_index(drop=True)
    valid = data[long_enough & (back == 2)].reset_index(drop=True)
    test = data[long_enough & (back == 1)].reset_index(drop=True)
    return LeaveOneOut(train, valid, test)


def temporal_split(
    df: pd.DataFrame,
    cutoff: pd.Timestamp | str | None = None,
    window: pd.Timedelta | str = "1D",
    *,
    col_user: str = USER_COL,
    col_item: str = ITEM_COL,
    col_ts: str = TS_COL,
    drop_seen: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on rows with ``ts < cutoff``; test on rows with ``cutoff <= ts < cutoff + window``.

    ``cutoff=None`` takes the last ``window`` of the data. Test keeps one row per (user, item), and with
    ``drop_seen`` drops pairs the user already had in train (they are excluded from lists anyway, so
    keeping them would only lower every model alike). Rows after the window are not used.
    """
    _require(df, [col_user, col_item, col_ts])
    window = pd.Timedelta(window)
    ts = df[col_ts]
    if cutoff is None:
        cutoff = ts.max() - window
    cutoff = pd.Timestamp(cutoff)
    if cutoff.tzinfo is None and getattr(ts.dt, "tz", None) is not None:
        cutoff = cutoff.tz_localize(ts.dt.tz)
    train = df[ts < cutoff]
    test = df[(ts >= cutoff) & (ts < cutoff + window)]
    test = test.sort_values(col_ts, kind="stable").drop_duplicates([col_user, col_item], keep="first")
    if drop_seen and len(train):
        seen = pd.MultiIndex.from_frame(train[[col_user, col_item]])
        test = test[~pd.MultiIndex.from_frame(test[[col_user, col_item]]).isin(seen)]
    return train, test
