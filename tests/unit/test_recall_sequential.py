"""The production ``seq`` recall source on real sequences: the first users of Amazon Beauty (S3-Rec format).

Each line of Beauty.txt is a user's purchases in order; the rows become purchase events one second apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.recall.candidates import RecallConfig, generate_candidates, seq_source
from pipeline.recall.sequential import (
    FOLLOWER_COLUMNS,
    FollowerBuilder,
    SeqParams,
    last_items,
    ordered_sequences,
    transition_matrix,
)
from pipeline.rerank.lists import reason_text

START = pd.Timestamp("2024-01-01", tz="UTC")
NEW_USER = 10**9


@pytest.fixture(scope="module")
def beauty(shared_data: Path) -> pd.DataFrame:
    """The first 1500 users of Beauty as purchase events (event_id and ts in file order)."""
    path = shared_data / "amazon-s3rec" / "Beauty.txt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    rows = []
    with path.open() as fh:
        for n, line in enumerate(fh):
            if n >= 1500:
                break
            user, *items = (int(x) for x in line.split())
            rows.extend((user, i) for i in items)
    ev = pd.DataFrame(rows, columns=["user_id", "item_id"])
    ev.insert(0, "event_id", np.arange(1, len(ev) + 1))
    ev["event_type"] = "purchase"
    ev["ts"] = START + pd.to_timedelta(np.arange(len(ev)), unit="s")
    return ev


def _followed(ev: pd.DataFrame) -> pd.DataFrame:
    """(item, next item) pairs that follow each other directly in a user's sequence, with their counts."""
    nxt = ev.groupby("user_id")["item_id"].shift(-1)
    pairs = pd.DataFrame({"item_id": ev["item_id"], "next_item_id": nxt}).dropna().astype("int64")
    return pairs[pairs["item_id"] != pairs["next_item_id"]].value_counts().rename("n").reset_index()


def test_streamed_chunks_give_the_in_memory_transition_matrix(beauty: pd.DataFrame) -> None:
    """Chunks cut through users' sequences (each user's last items carried over) count every pair once."""
    ids = np.sort(beauty["item_id"].unique())
    p = SeqParams()
    want = transition_matrix(list(ordered_sequences(beauty, ids).values()), len(ids), window=p.window,
                             step_decay=p.step_decay, backward=p.backward, row_pow=p.row_pow, col_pow=p.col_pow)
    b = FollowerBuilder(ids, p)
    for lo in range(0, len(beauty), 997):
        b.add(beauty.iloc[lo:lo + 997])
    got = b.matrix()
    assert b.events == len(beauty) and got.nnz == want.nnz
    assert abs(got - want).max() == pytest.approx(0.0, abs=1e-6)
    table = b.table()
    assert list(table.columns) == FOLLOWER_COLUMNS and table.groupby("item_id")["rank"].max().max() <= p.k
    first = table[table["rank"] == 1].set_index("item_id")["score"]
    assert (first >= table.groupby("item_id")["score"].max().reindex(first.index) - 1e-12).all()


def test_seq_proposes_what_followed_the_last_item_with_it_as_anchor(beauty: pd.DataFrame) -> None:
    ids = np.sort(beauty["item_id"].unique())
    b = FollowerBuilder(ids, SeqParams(k=200))
    b.add(beauty)
    followers = b.table()
    pairs = _followed(beauty)
    # an item that more than one shopper bought something directly after, and one of those followers
    x, y = pairs.sort_values(["n", "item_id", "next_item_id"], ascending=[False, True, True]).iloc[0][
        ["item_id", "next_item_id"]]
    other = int(beauty.loc[~beauty["item_id"].isin([x, y]), "item_id"].iloc[0])
    # a new shopper who bought some unrelated item, then x: x is the last item
    mine = pd.DataFrame({"event_id": [1, 2], "user_id": NEW_USER, "item_id": [other, int(x)],
                         "event_type": "purchase", "ts": [START, START + pd.Timedelta(seconds=1)]})
    last = last_items(mine, n_last=3, recency=0.5)
    assert dict(zip(last["item_id"], last["weight"], strict=True)) == {other: 0.5, int(x): 1.0}
    cfg = RecallConfig(as_of=datetime(2024, 2, 1, tzinfo=UTC))
    out = seq_source(mine, followers, cfg, 100)
    assert out is not None and (out["source"] == "seq").all()
    row = out[out["item_id"] == y]
    assert len(row) == 1 and row["anchor_item_id"].item() == x and row["recall_score"].item() > 0
    # every direct follower of x in the training sequences is proposed, anchored on x (x's pull is twice other's)
    direct = set(pairs.loc[pairs["item_id"] == x, "next_item_id"]) - {other}
    anchored = out[out["anchor_item_id"] == x]
    assert direct <= set(anchored["item_id"])
    assert out["recall_score"].max() == pytest.approx(1.0)

    # through the whole recall: the candidate carries seq's score, anchor and a reason naming x
    items = pd.DataFrame({"item_id": ids, "title": [f"item {i}" for i in ids], "category": "Beauty>Skin",
                          "in_stock": True, "visible": True, "activity": 1.0, "top_category": "Beauty"})
    cand = generate_candidates(np.array([NEW_USER]), mine, pd.DataFrame(columns=["item_id", "similar_item_id",
                                                                                   "score"]),
                               items, cfg, followers=followers)
    hit = cand[cand["item_id"] == y]
    assert len(hit) == 1 and "seq" in hit["sources"].item() and hit["score_seq"].item() > 0
    assert hit["source"].item() == "seq" and hit["anchor_item_id"].item() == x
    assert reason_text("seq", f"item {x}", True, "Beauty") == f"often bought after \u201citem {x}\u201d"
    # without the table the source is off and nothing else changes
    off = generate_candidates(np.array([NEW_USER]), mine, pd.DataFrame(columns=["item_id", "similar_item_id",
                                                                                  "score"]), items, cfg)
    assert (off["score_seq"] == 0).all() and not off["sources"].str.contains("seq").any()


def test_consecutive_repeats_are_one_step() -> None:
    """A view, a cart and a purchase of the same item are one step: the next item still follows it directly."""
    ev = pd.DataFrame({"event_id": np.arange(1, 6), "user_id": 1, "item_id": [5, 5, 5, 7, 9],
                       "event_type": ["view", "add_to_cart", "purchase", "view", "search"],
                       "ts": START + pd.to_timedelta(np.arange(5), unit="s")})
    ev.loc[4, "item_id"] = None
    b = FollowerBuilder(np.array([5, 7, 9]), SeqParams(backward=0.0))
    b.add(ev)
    t = b.table()
    assert list(zip(t["item_id"], t["next_item_id"], strict=True)) == [(5, 7)]
    assert last_items(ev)[["item_id", "weight"]].values.tolist() == [[5, 0.5], [7, 1.0]]
