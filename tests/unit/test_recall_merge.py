"""The vectorised candidate merge (integer codes, one sort) against the plain pandas merge it replaced.

``_reference_merge`` is the former implementation, kept here as the specification: string maps, sorts
and a pivot, easy to read and slow. On random candidates with every kind of duplicate (one source proposing
an item twice, several sources per item, a source label used by two frames) both must give the same rows in
the same order; p_recall may differ in the last bit (the noisy-or sums its terms in another order).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.recall.candidates import (
    OUT_COLUMNS,
    SCORE_COLUMNS,
    SOURCE_PRIOR,
    SOURCES,
    RecallConfig,
    _merge,
    generate_candidates,
    item_tables,
)


def _reference_merge(cand: pd.DataFrame, n: int, reserve: dict[str, float] | None = None) -> pd.DataFrame:
    order = {s: i for i, s in enumerate(SOURCES)}
    cand = cand.assign(_o=cand["source"].map(order).astype("int64"))
    cand["_p"] = cand["source"].map(SOURCE_PRIOR) * (0.5 + 0.5 * cand["recall_score"].astype("float64").clip(0, 1))
    cand = cand.sort_values(["user_id", "item_id", "_p", "_o"], ascending=[True, True, False, True], kind="stable")
    cand = cand.drop_duplicates(["user_id", "item_id", "source"], keep="first")
    key = ["user_id", "item_id"]
    within = (cand.sort_values(["user_id", "_o", "recall_score", "item_id"], ascending=[True, True, False, True],
                               kind="stable").groupby(["user_id", "_o"]).cumcount())
    limit = cand["source"].map({s: int(n * f) for s, f in (reserve or {}).items()}).fillna(0).to_numpy()
    reserved = pd.Series(within.reindex(cand.index).to_numpy() < limit, index=cand.index)
    first = cand.drop_duplicates(key, keep="first").set_index(key)
    log_miss = np.log1p(-cand["_p"].clip(upper=1 - 1e-9))
    first["p_recall"] = 1.0 - np.exp(log_miss.groupby([cand["user_id"], cand["item_id"]], sort=False).sum())
    mask = (np.int64(1) << cand["_o"]).groupby([cand["user_id"], cand["item_id"]], sort=False).sum()
    names = {m: "|".join(s for i, s in enumerate(SOURCES) if m >> i & 1) for m in np.unique(mask.to_numpy())}
    first["sources"] = mask.map(names)
    wide = cand.pivot_table(index=key, columns="source", values="recall_score", aggfunc="max", fill_value=0.0)
    for s, col in zip(SOURCES, SCORE_COLUMNS, strict=True):
        first[col] = wide[s].reindex(first.index).fillna(0.0).astype("float64") if s in wide.columns else 0.0
    first["_r"] = reserved.groupby([cand["user_id"], cand["item_id"]], sort=False).any()
    out = first.reset_index()
    out = (out.sort_values(["user_id", "_r", "p_recall", "item_id"], ascending=[True, False, False, True],
                           kind="stable").groupby("user_id").head(n))
    out = out.sort_values(["user_id", "p_recall", "item_id"], ascending=[True, False, True],
                          kind="stable").reset_index(drop=True)
    out["anchor_item_id"] = out["anchor_item_id"].astype("Int64")
    out["recall_score"] = out["recall_score"].astype("float64")
    return out[OUT_COLUMNS]


def _random_candidates(seed: int, users: int = 40, items: int = 60, rows: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # coarse scores, so that equal probabilities (the tie-breaks) are common
    score = np.round(rng.random(rows), 1)
    score[rng.random(rows) < 0.05] = 1.3  # above 1: clipped for the probability, kept as the score
    anchor = pd.array(np.where(rng.random(rows) < 0.5, rng.integers(1, items, rows), -1), dtype="Int64")
    anchor[anchor == -1] = pd.NA
    return pd.DataFrame({"user_id": rng.integers(1, users + 1, rows) * 1000, "item_id": rng.integers(1, items, rows),
                         "source": rng.choice(list(SOURCES), rows,
                                              p=[.1, .15, .05, .1, .05, .05, .15, .15, .2]),
                         "recall_score": score, "anchor_item_id": anchor})


def _assert_same(new: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(new.columns) == list(ref.columns) == OUT_COLUMNS
    pd.testing.assert_frame_equal(new.drop(columns="p_recall").reset_index(drop=True),
                                  ref.drop(columns="p_recall").reset_index(drop=True), check_dtype=False)
    np.testing.assert_allclose(new["p_recall"].to_numpy(), ref["p_recall"].to_numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [5, 30, 200])
def test_merge_equals_the_pandas_reference(seed: int, n: int) -> None:
    cand = _random_candidates(seed)
    reserve = {"retarget": 0.1, "item-cf": 0.2, "seq": 0.1, "als": 0.15, "category": 0.1, "trending": 0.05}
    _assert_same(_merge(cand, n, reserve), _reference_merge(cand, n, reserve))
    _assert_same(_merge(cand, n), _reference_merge(cand, n))


def test_merge_takes_source_codes_or_names_and_rejects_unknown_sources() -> None:
    cand = _random_candidates(5)
    coded = cand.assign(_o=cand["source"].map({s: i for i, s in enumerate(SOURCES)}))
    pd.testing.assert_frame_equal(_merge(coded, 20), _merge(cand, 20))
    assert _merge(cand.iloc[:0], 20).empty
    with pytest.raises(PipelineError, match="unknown recall source"):
        _merge(cand.assign(source="telepathy"), 20)


def test_generate_candidates_with_shared_item_tables_equals_without() -> None:
    rng = np.random.default_rng(3)
    as_of = datetime(2026, 11, 24, tzinfo=UTC)
    n_ev = 600
    ev = pd.DataFrame({"event_id": np.arange(1, n_ev + 1), "user_id": rng.integers(1, 30, n_ev),
                       "item_id": pd.array(rng.integers(1, 80, n_ev), dtype="Int64"),
                       "event_type": rng.choice(["view", "click", "add_to_cart", "purchase"], n_ev),
                       "query": None, "ts": [as_of - timedelta(hours=int(h)) for h in rng.integers(1, 400, n_ev)]})
    cats = np.array(["Home>A", "Sports>B", "Grocery>C", "Beauty>D"])
    feats = pd.DataFrame({"item_id": np.arange(1, 90), "in_stock": rng.random(89) > 0.1, "visible": True,
                          "category": cats[np.arange(89) % 4], "activity": rng.random(89) * 10,
                          "recent_events": rng.integers(0, 5, 89), "trend": rng.random(89)})
    feats["top_category"] = feats["category"].str.split(">").str[0]
    nb = pd.DataFrame({"item_id": np.repeat(np.arange(1, 90), 5), "similar_item_id": rng.integers(1, 90, 445),
                       "score": rng.random(445)})
    nb = nb[nb["item_id"] != nb["similar_item_id"]].drop_duplicates(["item_id", "similar_item_id"])
    cfg = RecallConfig(as_of=as_of, n_candidates=40)
    users = np.arange(1, 35)  # 30..34 have no history
    tables = item_tables(feats)
    plain = generate_candidates(users, ev, nb, feats, cfg)
    shared = generate_candidates(users, ev, nb, feats, cfg, tables=tables)
    again = generate_candidates(users, ev, nb, feats, cfg, tables=tables)  # memoised tables reused
    pd.testing.assert_frame_equal(plain, shared)
    pd.testing.assert_frame_equal(plain, again)
    assert set(plain["user_id"]) == set(users) and (plain.groupby("user_id").size() == 40).all()


@pytest.mark.parametrize("span", [50, 2**20])
def test_group_then_descending_order_equals_a_three_key_lexsort(span: int) -> None:
    """The merge's two orderings equal ``np.lexsort((position, -score, group))``: ties and NaN scores included,
    with group codes that fit the 16-bit radix sort and codes that do not."""
    from pipeline.recall.candidates import _by_group_then_desc

    rng = np.random.default_rng(span)
    group = rng.integers(0, span, 5000) * (3 if span > 2**15 else 1)
    score = rng.integers(0, 20, 5000) / 10.0
    score[rng.random(5000) < 0.05] = np.nan
    want = np.lexsort((np.arange(5000), -score, group))
    np.testing.assert_array_equal(_by_group_then_desc(group, score), want)
