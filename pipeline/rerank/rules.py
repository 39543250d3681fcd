"""Business rules applied to candidates before ordering (pure pandas, plus two small readers).

- availability: out-of-stock and invisible items never enter a list;
- purchased: an item the user bought is excluded unless its category's repurchase window has passed;
- merchandiser rules from ``recsys.rules`` (edited with SQL): ``exclude`` drops matching items, ``boost``
  multiplies their score by ``factor`` (>= 1), ``bury`` by ``factor`` (in [0, 1]; 0 sends them to the
  bottom). A rule matches an item when every field it sets matches: ``item_id`` equal, ``category`` a path
  prefix (``Home>Kitchen`` matches ``Home>Kitchen>Knives``), ``brand`` equal. Several matching rules
  multiply. A rule is active when ``starts_at <= as_of < ends_at`` (NULL = open).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

RULE_COLUMNS = ["rule_id", "kind", "item_id", "category", "brand", "factor"]


@contextmanager
def _cursor(source: Any) -> Iterator[Any]:
    """A cursor on ``source``: a database URL (a connection of its own) or an open psycopg2 cursor (the
    caller's transaction, e.g. a refresh batch reading in its own snapshot without a second connection)."""
    if not isinstance(source, str):
        yield source
        return
    from pipeline.db.engine import connect

    with connect(source) as conn, conn.cursor() as cur:
        yield cur


def load_rules(source: Any, as_of: datetime) -> pd.DataFrame:
    """Rules of ``recsys.rules`` active at ``as_of`` (columns :data:`RULE_COLUMNS`); ``source`` is a database
    URL or an open cursor."""
    with _cursor(source) as cur:
        cur.execute(
            """
            SELECT rule_id, kind, item_id, category, brand, factor FROM recsys.rules
             WHERE (starts_at IS NULL OR starts_at <= %(t)s) AND (ends_at IS NULL OR ends_at > %(t)s)
             ORDER BY rule_id
            """,
            {"t": as_of},
        )
        rows = cur.fetchall()
    df = pd.DataFrame(rows, columns=RULE_COLUMNS)
    return df.astype({"rule_id": "int64", "item_id": "Int64", "factor": "float64"})


def load_repurchase_windows(source: Any) -> dict[str, float]:
    """Category prefix -> days before a bought item may come back (``recsys.repurchase_windows``); ``source``
    is a database URL or an open cursor."""
    with _cursor(source) as cur:
        cur.execute("SELECT category, days FROM recsys.repurchase_windows ORDER BY category")
        return {c: float(d) for c, d in cur.fetchall()}


def _prefix_match(categories: pd.Series, prefix: str) -> np.ndarray:
    cats = categories.fillna("").astype(str)
    return ((cats == prefix) | cats.str.startswith(prefix + ">")).to_numpy()


def rule_effects(items: pd.DataFrame, rules: pd.DataFrame | None) -> tuple[pd.Series, set[int]]:
    """Per item: the score multiplier of boost/bury rules, and the set of excluded item ids.

    ``items`` needs item_id and, for category / brand rules, ``category`` and ``brand``.
    """
    mult = pd.Series(1.0, index=items["item_id"].to_numpy(), dtype="float64")
    excluded: set[int] = set()
    if rules is None or rules.empty:
        return mult, excluded
    ids = items["item_id"].to_numpy()
    cats = items["category"] if "category" in items else pd.Series([None] * len(items))
    brands = (items["brand"] if "brand" in items else pd.Series([None] * len(items))).astype(object).to_numpy()
    for r in rules.itertuples(index=False):
        m = np.ones(len(items), dtype=bool)
        if pd.notna(r.item_id):
            m &= ids == int(r.item_id)
        if isinstance(r.category, str) and r.category:
            m &= _prefix_match(cats, r.category)
        if isinstance(r.brand, str) and r.brand:
            m &= brands == r.brand
        if not m.any():
            continue
        if r.kind == "exclude":
            excluded.update(int(i) for i in ids[m])
        elif r.kind in ("boost", "bury"):
            mult.iloc[np.flatnonzero(m)] *= float(r.factor)
    return mult, excluded


def window_days(categories: pd.Series, windows: Mapping[str, float]) -> pd.Series:
    """Repurchase window per row by longest matching category prefix; NaN where none (never again)."""
    out = pd.Series(np.nan, index=categories.index, dtype="float64")
    for prefix in sorted(windows, key=len):  # longer prefixes written last, so they win
        out[_prefix_match(categories, prefix)] = float(windows[prefix])
    return out


def purchase_exclusions(purchases: pd.DataFrame | None, items: pd.DataFrame, *, as_of: datetime | None,
                        windows: Mapping[str, float] | None = None) -> pd.DataFrame:
    """(user_id, item_id) pairs still excluded because the user bought them.

    ``purchases`` has user_id, item_id and optionally ``ts``; without ts (or without ``as_of``) every
    purchase excludes. With ts, a purchase older than its category's window no longer excludes.
    """
    if purchases is None or purchases.empty:
        return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="int64")})
    p = purchases.dropna(subset=["user_id", "item_id"])
    if "ts" not in p or as_of is None or not windows:
        return p[["user_id", "item_id"]].astype("int64").drop_duplicates()
    last = p.groupby(["user_id", "item_id"], as_index=False)["ts"].max()
    cats = last[["item_id"]].merge(items[["item_id", "category"]], on="item_id", how="left")["category"]
    days = window_days(cats.set_axis(last.index), windows)
    t = pd.Timestamp(as_of)
    t = t.tz_localize("UTC") if t.tzinfo is None else t  # a naive as_of is UTC, as in lists._new_items
    age = (t - pd.to_datetime(last["ts"], utc=True)).dt.total_seconds() / 86400.0
    keep = days.isna() | (age < days)
    return last.loc[keep, ["user_id", "item_id"]].astype("int64")


def apply_rules(cand: pd.DataFrame, items: pd.DataFrame, *, rules: pd.DataFrame | None = None,
                purchases: pd.DataFrame | None = None, as_of: datetime | None = None,
                repurchase_days: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Drop unavailable, excluded and recently bought candidates; add ``rule_factor`` (boost/bury)."""
    cols = [c for c in ("item_id", "category", "brand", "in_stock", "visible") if c in items]
    info = items[cols].drop_duplicates("item_id")
    ok = np.ones(len(info), dtype=bool)
    for flag in ("in_stock", "visible"):
        if flag in info:
            ok &= info[flag].fillna(False).astype(bool).to_numpy()
    mult, excluded = rule_effects(info, rules)
    allowed = set(info["item_id"].to_numpy()[ok]) - excluded
    out = cand[cand["item_id"].isin(allowed)]
    bought = purchase_exclusions(purchases, info, as_of=as_of, windows=repurchase_days)
    if len(bought):
        out = out.merge(bought.assign(_b=True), on=["user_id", "item_id"], how="left")
        out = out[out["_b"].isna()].drop(columns="_b")
    out = out.copy()
    out["rule_factor"] = out["item_id"].map(mult).fillna(1.0).astype("float64")
    return out
