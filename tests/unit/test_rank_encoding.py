"""The vectorised ranker encoding, group sampling and block scoring give exactly what the earlier code gave.

The reference functions below are the implementations that ``user_sequences``, ``candidate_tensors``,
``sample_groups`` and ``RankerModel.logits`` replaced (pandas sort + groupby + tail per call, per-row
lookups, per-user sub-frames, a padded copy of every block), kept verbatim so that any divergence on random
data, edge cases included, fails here.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch
from test_rank import _one_thread  # noqa: F401  (autouse: one torch thread in this module too)

from pipeline.rank.data import Groups, Window, sample_groups
from pipeline.rank.features import BASE_NUMERIC, FeatureSpace, candidate_tensors, item_stats_at, user_sequences
from pipeline.rank.model import RankerConfig, RankerModel, UserBlocks

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
TYPES = ["view", "click", "add_to_cart", "purchase", "search", "wishlist"]  # the last two never in a sequence




# -- reference implementations (the code before the vectorised rewrite) -----------------------------------
def ref_user_sequences(events: pd.DataFrame, users: np.ndarray, cutoff, space: FeatureSpace) -> dict:
    n, L = len(users), space.seq_len
    out = {k: np.zeros((n, L), dtype=np.int64) for k in ("items", "types", "gaps")}
    if n == 0 or events.empty:
        return out
    ev = events[events["item_id"].notna() & events["event_type"].isin(space.event_types)]
    if cutoff is not None:
        ev = ev[ev["ts"] < pd.Timestamp(cutoff)]
    ev = ev[ev["user_id"].isin(users)]
    if ev.empty:
        return out
    sort = ["user_id"] + [c for c in ("ts", "event_id", "_order") if c in ev.columns]
    ev = ev.sort_values(sort, kind="stable")
    ev = ev.groupby("user_id", sort=False).tail(L)
    uid = ev["user_id"].to_numpy(dtype=np.int64)
    order = np.argsort(users, kind="stable")
    row = order[np.searchsorted(users, uid, sorter=order)]
    back = ev.groupby("user_id", sort=False).cumcount(ascending=False).to_numpy()
    col = L - 1 - back
    out["items"][row, col] = space.item_index(ev["item_id"].to_numpy(dtype=np.int64))
    tmap = {t: i + 1 for i, t in enumerate(space.event_types)}
    out["types"][row, col] = ev["event_type"].map(tmap).to_numpy(dtype=np.int64)
    if cutoff is not None and "ts" in ev.columns:
        secs = (pd.Timestamp(cutoff) - ev["ts"]).dt.total_seconds().to_numpy()
        out["gaps"][row, col] = space.gap_bucket(secs)
    return out


def ref_candidate_tensors(cand: pd.DataFrame, item_side: pd.DataFrame, stats: pd.DataFrame,
                          space: FeatureSpace) -> dict:
    ids = cand["item_id"].to_numpy(dtype=np.int64)
    side = item_side.reindex(ids)
    n = len(ids)
    src = cand["source"] if "source" in cand.columns else pd.Series([None] * n, index=cand.index)
    rs = pd.to_numeric(cand.get("recall_score", pd.Series(0.0, index=cand.index)), errors="coerce")
    pr = pd.to_numeric(cand.get("p_recall", pd.Series(0.0, index=cand.index)), errors="coerce")
    st = stats.reindex(ids)
    num = np.column_stack([
        rs.fillna(0.0).to_numpy(dtype=np.float64), pr.fillna(0.0).to_numpy(dtype=np.float64),
        src.notna().to_numpy(dtype=np.float64),
        np.log1p(st["activity"].fillna(0.0).to_numpy(dtype=np.float64)),
        np.log1p(st["recent_events"].fillna(0.0).to_numpy(dtype=np.float64)),
        st["trend"].fillna(0.1).to_numpy(dtype=np.float64),
    ]).astype(np.float32) if n else np.zeros((0, 6), dtype=np.float32)
    return {
        "item": space.item_index(ids),
        "cat": side["cat"].fillna(0).to_numpy(dtype=np.int64),
        "top": side["top"].fillna(0).to_numpy(dtype=np.int64),
        "brand": side["brand"].fillna(0).to_numpy(dtype=np.int64),
        "price": side["price"].fillna(0).to_numpy(dtype=np.int64),
        "source": space.source_index(src),
        "num": num,
    }


def ref_logits(model: RankerModel, cand: pd.DataFrame, events: pd.DataFrame, item_feats: pd.DataFrame,
               as_of) -> np.ndarray:
    space, net, cfg, n = model.space, model.net, model.config, len(cand)
    ucol = cand["user_id"].to_numpy(dtype=np.int64)
    users, ucode = np.unique(ucol, return_inverse=True)
    order = np.argsort(ucode, kind="stable")
    counts = np.bincount(ucode, minlength=len(users))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n) - np.repeat(starts, counts)
    width = int(counts.max())
    stats = item_feats.drop_duplicates("item_id").set_index("item_id")[["activity", "recent_events", "trend"]]
    side = space.side_table(item_feats)
    seq = ref_user_sequences(events, users, as_of, space)
    flat = ref_candidate_tensors(cand, side, stats, space)
    out = np.empty(n, dtype=np.float32)
    step = max(1, cfg.score_batch_rows // width)
    with torch.inference_mode():
        for s in range(0, len(users), step):
            e = min(s + step, len(users))
            rows = order[starts[s]: starts[e - 1] + counts[e - 1]]
            r_u, r_p = ucode[rows] - s, pos[rows]
            block = {}
            for k, v in flat.items():
                b = np.zeros((e - s, width, *v.shape[1:]), dtype=v.dtype)
                b[r_u, r_p] = v[rows]
                block[k] = torch.from_numpy(b)
            sq = {k: torch.from_numpy(v[s:e]) for k, v in seq.items()}
            out[rows] = net(sq, block).numpy()[r_u, r_p]
    return out


def ref_sample_groups(win: Window, item_pool: np.ndarray, *, n_recall_neg: int = 12, n_random_neg: int = 4,
                      seed: int = 0) -> Groups:
    rng = np.random.default_rng(seed)
    k = n_recall_neg + n_random_neg
    cols = ["user_id", "item_id", "source", "recall_score", "p_recall"]
    cand = win.candidates[cols] if len(win.candidates) else pd.DataFrame(columns=cols)
    touched = set(zip(win.touched["user_id"].to_numpy(), win.touched["item_id"].to_numpy(), strict=True))
    by_user = {u: g for u, g in cand.groupby("user_id", sort=False)} if len(cand) else {}
    users = np.unique(win.labels["user_id"].to_numpy())
    seq_of = {u: i for i, u in enumerate(users)}
    rec_key = cand.set_index(["user_id", "item_id"]) if len(cand) else None
    out_user, out_item, out_seq, gw, gu = [], [], [], [], []
    for u, g in win.labels.groupby("user_id", sort=True):
        pool = by_user.get(u)
        pool_items = np.zeros(0, dtype=np.int64) if pool is None else pool["item_id"].to_numpy(dtype=np.int64)
        pool_items = np.array([i for i in pool_items if (u, i) not in touched], dtype=np.int64)
        for it, w in zip(g["item_id"].to_numpy(), g["weight"].to_numpy(), strict=True):
            rn = rng.choice(pool_items, min(n_recall_neg, len(pool_items)), replace=False) if len(pool_items) \
                else np.zeros(0, dtype=np.int64)
            need = k - len(rn)
            rand = rng.choice(item_pool, need + 8, replace=len(item_pool) < need + 8)
            rand = np.array([i for i in rand if (u, i) not in touched and i not in rn], dtype=np.int64)[:need]
            if len(rand) < need:
                rand = np.resize(rand if len(rand) else rn if len(rn) else np.array([it]), need)
            out_user.append(np.full(1 + k, u, dtype=np.int64))
            out_item.append(np.concatenate([[it], rn, rand]).astype(np.int64))
            out_seq.append(np.full(1 + k, seq_of[u], dtype=np.int64))
            gw.append(w)
            gu.append(u)
    if not out_user:
        rows = pd.DataFrame({c: pd.Series(dtype="float64") for c in [*cols, "seq"]})
        return Groups(rows, np.zeros(0), np.zeros(0, dtype=np.int64), users, [win.cutoff] * len(users), 1 + k)
    rows = pd.DataFrame({"user_id": np.concatenate(out_user), "item_id": np.concatenate(out_item),
                         "seq": np.concatenate(out_seq)})
    if rec_key is not None:
        feats = rec_key.reindex(pd.MultiIndex.from_arrays([rows["user_id"], rows["item_id"]]))
        rows["source"] = feats["source"].to_numpy()
        rows["recall_score"] = feats["recall_score"].to_numpy(dtype=np.float64)
        rows["p_recall"] = feats["p_recall"].to_numpy(dtype=np.float64)
    else:
        rows["source"], rows["recall_score"], rows["p_recall"] = None, np.nan, np.nan
    return Groups(rows, np.asarray(gw, dtype=np.float64), np.asarray(gu, dtype=np.int64), users,
                  [win.cutoff] * len(users), 1 + k)


# -- random data -------------------------------------------------------------------------------------------
def _items(rng: np.random.Generator, n: int = 40) -> pd.DataFrame:
    cats = ["A>x", "A>y", "B>z", "C", None]
    return pd.DataFrame({"item_id": np.arange(100, 100 + n),
                         "category": [cats[i] for i in rng.integers(0, len(cats), n)],
                         "brand": [None if b == 0 else f"b{b}" for b in rng.integers(0, 5, n)],
                         "price": np.where(rng.random(n) < 0.1, np.nan, rng.gamma(2.0, 10.0, n))})


def _events(rng: np.random.Generator, n: int, n_users: int = 30, n_items: int = 60) -> pd.DataFrame:
    """Random events with the awkward parts: missing items, non-sequence types, equal timestamps (ties
    broken by event_id, then frame order), events after the cut-off, items outside the vocabulary."""
    ts = AS_OF - pd.to_timedelta(rng.integers(-2 * 86400, 40 * 86400, n), unit="s")
    ts = ts.where(rng.random(n) > 0.2, AS_OF - pd.Timedelta(hours=5))  # a block of identical timestamps
    item = pd.array(rng.integers(95, 95 + n_items, n), dtype="Int64")
    item[rng.random(n) < 0.08] = pd.NA
    df = pd.DataFrame({"event_id": rng.integers(1, n // 2 + 2, n),  # repeats: ties on (ts, event_id) too
                       "user_id": rng.integers(0, n_users, n).astype(np.int64), "item_id": item,
                       "event_type": [TYPES[i] for i in rng.integers(0, len(TYPES), n)],
                       "ts": pd.to_datetime(ts, utc=True)})
    return df.sample(frac=1.0, random_state=int(rng.integers(0, 1000))).reset_index(drop=True)


def _space(items: pd.DataFrame, events: pd.DataFrame, seq_len: int) -> FeatureSpace:
    """The references implement the first models' six numeric inputs (a model saved then still scores
    through the current code); the later inputs are tested in test_rank_features.py."""
    known = events["item_id"].dropna().to_numpy(dtype=np.int64)
    space = FeatureSpace.fit(items, known[known % 3 != 0], ["als", "item-cf", "popularity"], seq_len=seq_len)
    return replace(space, numeric=BASE_NUMERIC)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- tests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_user_sequences_equal_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = _items(rng)
    ev = _events(rng, int(rng.integers(50, 1500)))
    space = _space(items, ev, seq_len=int(rng.choice([3, 8, 50])))
    # Unsorted users, some without events, and events of users not asked for.
    users = rng.permutation(np.arange(-3, 25)).astype(np.int64)
    cutoff = AS_OF - timedelta(hours=int(rng.integers(0, 72)))
    _assert_same(user_sequences(ev, users, cutoff, space), ref_user_sequences(ev, users, cutoff, space))
    _assert_same(user_sequences(ev, users, None, space), ref_user_sequences(ev, users, None, space))
    with_order = ev.assign(_order=rng.integers(0, 5, len(ev)))
    _assert_same(user_sequences(with_order, users, cutoff, space),
                 ref_user_sequences(with_order, users, cutoff, space))


def test_user_sequences_edge_cases_equal_reference() -> None:
    rng = np.random.default_rng(7)
    items = _items(rng)
    ev = _events(rng, 400)
    space = _space(items, ev, seq_len=6)
    users = np.arange(30, dtype=np.int64)
    cases = {
        "no events": ev.iloc[:0],
        "no users": ev,
        "all after the cut-off": ev.assign(ts=pd.Timestamp(AS_OF) + pd.Timedelta(days=1)),
        "float item ids": ev.assign(item_id=ev["item_id"].astype("float64")),
        "no timestamps": ev.drop(columns=["ts"]),
        "no event ids": ev.drop(columns=["event_id"]),
        # Missing sort keys sort last, as in pandas (only reachable without a cut-off for ts).
        "missing timestamps": ev.assign(ts=ev["ts"].where(np.arange(len(ev)) % 7 != 0)),
        "missing event ids": ev.assign(event_id=ev["event_id"].astype("float64").where(np.arange(len(ev)) % 5 != 0)),
    }
    cases["naive timestamps"] = ev.assign(ts=ev["ts"].dt.tz_localize(None))
    for name, frame in cases.items():
        u = users[:0] if name == "no users" else users
        cut = None if name in ("no timestamps", "missing timestamps") else AS_OF
        cut = AS_OF.replace(tzinfo=None) if name == "naive timestamps" else cut
        _assert_same(user_sequences(frame, u, cut, space), ref_user_sequences(frame, u, cut, space))


@pytest.mark.parametrize("seed", range(4))
def test_candidate_tensors_equal_reference(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    items = _items(rng)
    ev = _events(rng, 600)
    space = _space(items, ev, seq_len=8)
    side = space.side_table(items)
    stats = item_stats_at(ev, AS_OF, {"view": 1.0, "click": 2.0}, {"view": 7.0, "click": 10.0})
    n = int(rng.integers(1, 500))
    src = np.array(["als", "item-cf", "popularity", "search-new", None], dtype=object)[rng.integers(0, 5, n)]
    cand = pd.DataFrame({"user_id": rng.integers(0, 20, n),
                         "item_id": rng.integers(90, 150, n),  # some outside the catalogue and the stats
                         "source": src,
                         "recall_score": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
                         "p_recall": rng.random(n)})
    _assert_same(candidate_tensors(cand, side, stats, space), ref_candidate_tensors(cand, side, stats, space))
    bare = cand[["user_id", "item_id"]]  # no source, no recall features
    _assert_same(candidate_tensors(bare, side, stats, space), ref_candidate_tensors(bare, side, stats, space))
    empty = cand.iloc[:0]
    _assert_same(candidate_tensors(empty, side, stats, space), ref_candidate_tensors(empty, side, stats, space))


def _random_model(items: pd.DataFrame, ev: pd.DataFrame, cfg: RankerConfig, seed: int) -> RankerModel:
    """An untrained model with random weights: the layout, not the quality, is under test."""
    torch.manual_seed(seed)
    m = RankerModel(cfg)
    m.space = _space(items, ev, seq_len=cfg.seq_len)
    m.net = m._build_net(m.space.side_table(items)).eval()
    with torch.no_grad():  # embeddings of padding stay 0; everything else random and not tiny
        for p in m.net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


@pytest.mark.parametrize("seed", range(3))
def test_logits_equal_reference(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    items = _items(rng)
    ev = _events(rng, 1200)
    cfg = RankerConfig(dim=16, heads=2, hidden=32, seq_len=8, dropout=0.0, score_batch_rows=64)
    model = _random_model(items, ev, cfg, seed)
    feats = items.merge(item_stats_at(ev, AS_OF, cfg.event_weights, cfg.half_life_days).reset_index(),
                        on="item_id", how="left")
    # Variable candidates per user, users interleaved: the padded (scatter) layout, several blocks.
    n = int(rng.integers(200, 800))
    cand = pd.DataFrame({"user_id": rng.integers(0, 25, n), "item_id": rng.integers(95, 150, n),
                         "source": np.array(["als", "popularity", None], dtype=object)[rng.integers(0, 3, n)],
                         "recall_score": rng.random(n), "p_recall": rng.random(n)})
    np.testing.assert_array_equal(model.logits(cand, ev, feats, AS_OF), ref_logits(model, cand, ev, feats, AS_OF))
    # Grouped by user, the same count each: the zero-copy (dense) layout.
    dense = pd.DataFrame({"user_id": np.repeat(np.arange(25), 7), "item_id": rng.integers(95, 150, 175),
                          "source": "als", "recall_score": rng.random(175), "p_recall": rng.random(175)})
    assert UserBlocks.of(dense["user_id"].to_numpy()).dense
    np.testing.assert_array_equal(model.logits(dense, ev, feats, AS_OF),
                                  ref_logits(model, dense, ev, feats, AS_OF))
    # Grouped and sorted but uneven counts: no sort, padded blocks.
    uneven = dense.drop(index=[3, 4, 50])
    assert not UserBlocks.of(uneven["user_id"].to_numpy()).dense
    np.testing.assert_array_equal(model.logits(uneven, ev, feats, AS_OF),
                                  ref_logits(model, uneven, ev, feats, AS_OF))
    one_block = replace(cfg, score_batch_rows=1 << 20)
    model.config = one_block
    np.testing.assert_array_equal(model.logits(cand, ev, feats, AS_OF), ref_logits(model, cand, ev, feats, AS_OF))


def test_user_blocks_layout() -> None:
    b = UserBlocks.of(np.array([5, 3, 5, 9, 3, 5], dtype=np.int64))
    assert b.users.tolist() == [3, 5, 9] and b.width == 3 and not b.dense
    v = np.arange(6) * 10
    blk = b.block(v, 0, 3)
    assert blk.tolist() == [[10, 40, 0], [0, 20, 50], [30, 0, 0]]  # frame order kept within a user
    out = np.full(6, -1)
    b.put(out, blk, 0, 3)
    assert out.tolist() == v.tolist()
    d = UserBlocks.of(np.array([1, 1, 2, 2], dtype=np.int64))
    assert d.dense and d.order is None
    assert np.shares_memory(d.block(v[:4], 1, 2), v)  # a view: no copy


def _window(rng: np.random.Generator, n_labels: int, n_cand: int) -> Window:
    """Labels (several per user, unsorted), recall candidates (users without any, duplicates of a label,
    unsorted), touched pairs that must never become negatives."""
    lab = pd.DataFrame({"user_id": rng.integers(0, 15, n_labels).astype(np.int64),
                        "item_id": rng.integers(0, 40, n_labels).astype(np.int64),
                        "weight": rng.choice([1.0, 2.0, 4.0], n_labels)}).drop_duplicates(["user_id", "item_id"])
    cand = pd.DataFrame({"user_id": rng.integers(0, 12, n_cand).astype(np.int64),
                         "item_id": rng.integers(0, 40, n_cand).astype(np.int64),
                         "source": np.array(["als", "item-cf"], dtype=object)[rng.integers(0, 2, n_cand)],
                         "recall_score": rng.random(n_cand), "p_recall": rng.random(n_cand)})
    cand = cand.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
    touched = pd.concat([lab[["user_id", "item_id"]], cand[["user_id", "item_id"]].sample(
        frac=0.2, random_state=int(rng.integers(0, 100)))]).drop_duplicates()
    return Window(cutoff=AS_OF, end=AS_OF + timedelta(days=1), labels=lab.reset_index(drop=True),
                  touched=touched, candidates=cand, history=pd.DataFrame())


@pytest.mark.parametrize("seed", range(5))
def test_sample_groups_equal_reference(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    win = _window(rng, int(rng.integers(1, 80)), int(rng.integers(0, 300)))
    for pool in (np.arange(40, dtype=np.int64), np.arange(3, dtype=np.int64)):  # normal, tiny catalogue
        for kw in ({}, {"n_recall_neg": 3, "n_random_neg": 2}):
            a = sample_groups(win, pool, seed=seed, **kw)
            b = ref_sample_groups(win, pool, seed=seed, **kw)
            pd.testing.assert_frame_equal(a.rows, b.rows)
            for f in ("group_weight", "group_user", "seq_users"):
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
                assert getattr(a, f).dtype == getattr(b, f).dtype, f
            assert a.seq_cutoff == b.seq_cutoff and a.size == b.size
    empty = replace(win, labels=win.labels.iloc[:0], candidates=win.candidates.iloc[:0])
    a, b = sample_groups(empty, np.arange(40), seed=0), ref_sample_groups(empty, np.arange(40), seed=0)
    pd.testing.assert_frame_equal(a.rows, b.rows)
    assert len(a.group_weight) == len(b.group_weight) == 0
