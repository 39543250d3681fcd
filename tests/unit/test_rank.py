"""The ranker's contract: known answer, point-in-time data (no leakage), determinism, save/load, errors."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.errors import ModelError, NonFiniteWeightsError
from pipeline.rank.data import build_window, daily_windows, labels_in, recall_candidate_fn
from pipeline.rank.features import FeatureSpace, user_sequences
from pipeline.rank.model import RankerConfig, RankerModel, resolve_device

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
TINY = RankerConfig(dim=16, heads=2, hidden=32, seq_len=8, n_recall_neg=3, n_random_neg=2, max_epochs=12,
                    patience=3, lr=1e-2, batch_groups=32, dropout=0.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Two cores shared by many test processes: one intra-op thread avoids OpenMP spin contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ev(rows: list[tuple[int, int, str, datetime]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts"])
    df["event_id"] = np.arange(1, len(df) + 1)
    df["item_id"] = df["item_id"].astype("Int64")
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def _known_answer() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tastes: a user who viewed an item of group A next clicks the A item 'after' it (a+1),
    a B user the B item after. Item 10 is the first of A (its successor 11), 20 of B (successor 21)."""
    items = pd.DataFrame({"item_id": [10, 11, 12, 13, 20, 21, 22, 23],
                          "category": ["A>x"] * 4 + ["B>y"] * 4, "brand": ["a"] * 4 + ["b"] * 4,
                          "price": [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0]})
    rows = []
    rng = np.random.default_rng(0)
    for day in range(8, 0, -1):
        c = AS_OF - timedelta(days=day)
        for u in range(40):
            base = 10 if u % 2 == 0 else 20
            first = base + int(rng.integers(0, 3))
            rows.append((u, first, "view", c - timedelta(hours=2)))
            rows.append((u, first + 1, "click", c + timedelta(hours=1)))
    return _ev(rows), items


def _fn(items: pd.DataFrame):
    def cand(users: np.ndarray, ev: pd.DataFrame, cutoff: datetime) -> pd.DataFrame:
        # Every item is a candidate with the same recall score: only the ranker can order them.
        return pd.DataFrame([(u, i, "popularity", 1.0, 0.5) for u in users for i in items["item_id"]],
                            columns=["user_id", "item_id", "source", "recall_score", "p_recall"])
    return cand


def _fit(events: pd.DataFrame, items: pd.DataFrame, cfg: RankerConfig = TINY) -> RankerModel:
    wins = [build_window(events, c, e, _fn(items)) for c, e in daily_windows(AS_OF, 6)[0]]
    return RankerModel(cfg).fit(wins, items, device="cpu")


@pytest.fixture(scope="module")
def known() -> tuple[RankerModel, pd.DataFrame, pd.DataFrame]:
    events, items = _known_answer()
    return _fit(events, items), events, items


def test_known_answer(known) -> None:
    model, events, items = known
    hw = build_window(events, AS_OF - timedelta(days=1), AS_OF, _fn(items))
    p = model.score(hw.candidates, hw.history, items, hw.cutoff)
    top = hw.candidates.assign(p=p).sort_values("p", ascending=False).groupby("user_id").head(1)
    truth = hw.labels.set_index("user_id")["item_id"]
    hit = (top.set_index("user_id")["item_id"] == truth.reindex(top["user_id"]).to_numpy()).mean()
    assert hit >= 0.9
    assert ((p > 0) & (p < 1)).all()


def test_save_load_round_trip_identical_scores(known, tmp_path) -> None:
    model, events, items = known
    hw = build_window(events, AS_OF - timedelta(days=1), AS_OF, _fn(items))
    model.save(tmp_path / "m")
    back = RankerModel.load(tmp_path / "m")
    a = model.score(hw.candidates, hw.history, items, hw.cutoff)
    b = back.score(hw.candidates, hw.history, items, hw.cutoff)
    np.testing.assert_array_equal(a, b)
    side = (tmp_path / "m" / "model.json").read_text()
    assert '"config_digest"' in side and '"torch"' in side and '"feature_schema"' in side
    assert back.config_digest == model.config_digest


def test_scores_independent_of_row_order_and_batching(known) -> None:
    model, events, items = known
    hw = build_window(events, AS_OF - timedelta(days=1), AS_OF, _fn(items))
    a = model.score(hw.candidates, hw.history, items, hw.cutoff)
    perm = np.random.default_rng(1).permutation(len(hw.candidates))
    small = RankerModel.__new__(RankerModel)
    small.__dict__.update(model.__dict__)
    small.config = replace(model.config, score_batch_rows=16)
    b = small.score(hw.candidates.iloc[perm], hw.history, items, hw.cutoff)
    np.testing.assert_allclose(a[perm], b, rtol=1e-5, atol=1e-6)


def test_a_catalogue_frame_is_encoded_once_and_a_new_frame_afresh(known, tmp_path) -> None:
    """The side table of the item features is kept for the next call on the same frame (a worker's shards share
    one cached catalogue); another frame, here with the categories swapped, is encoded afresh: the scores equal
    those of a model that never saw the first frame."""
    model, events, items = known
    hw = build_window(events, AS_OF - timedelta(days=1), AS_OF, _fn(items))
    feats = items.assign(activity=np.arange(len(items), dtype="float64"), recent_events=1, trend=0.1)
    model.save(tmp_path / "m")
    a = model.score(hw.candidates, hw.history, feats, hw.cutoff)
    assert model._catalogue is not None and model._catalogue[0] is feats
    np.testing.assert_array_equal(model.score(hw.candidates, hw.history, feats, hw.cutoff), a)
    swapped = feats.assign(category=feats["category"].map({"A>x": "B>y", "B>y": "A>x"}))
    b = model.score(hw.candidates, hw.history, swapped, hw.cutoff)
    np.testing.assert_array_equal(b, RankerModel.load(tmp_path / "m").score(hw.candidates, hw.history, swapped,
                                                                            hw.cutoff))
    assert not np.array_equal(a, b)


def test_cpu_training_is_deterministic() -> None:
    events, items = _known_answer()
    cfg = replace(TINY, max_epochs=2)
    a, b = _fit(events, items, cfg), _fit(events, items, cfg)
    for (k, v), (_, w) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_bce_option_trains() -> None:
    events, items = _known_answer()
    m = _fit(events, items, replace(TINY, loss="bce", max_epochs=2))
    assert m.history and np.isfinite(m.history[-1]["val_loss"])


def test_non_finite_training_raises() -> None:
    events, items = _known_answer()

    def inf_recall(users: np.ndarray, ev: pd.DataFrame, cutoff: datetime) -> pd.DataFrame:
        return _fn(items)(users, ev, cutoff).assign(recall_score=np.inf)

    wins = [build_window(events, c, e, inf_recall) for c, e in daily_windows(AS_OF, 2)[0]]
    with pytest.raises(NonFiniteWeightsError):
        RankerModel(replace(TINY, max_epochs=1)).fit(wins, items, device="cpu")


def test_unknown_items_still_score(known) -> None:
    model, events, items = known
    new = pd.concat([items, pd.DataFrame({"item_id": [99], "category": ["A>x"], "brand": ["a"], "price": [2.0]})])
    cand = pd.DataFrame({"user_id": [0, 0], "item_id": [11, 99], "source": "popularity", "recall_score": 1.0,
                         "p_recall": 0.5})
    p = model.score(cand, events, new, AS_OF)
    assert np.isfinite(p).all() and p[1] != p[0]


def test_device_selection() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError):
            resolve_device("cuda")
    with pytest.raises(ModelError):
        resolve_device("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_training_bf16_autocast_matches_cpu_quality() -> None:
    events, items = _known_answer()
    wins = [build_window(events, c, e, _fn(items)) for c, e in daily_windows(AS_OF, 6)[0]]
    m = RankerModel(TINY).fit(wins, items, device="cuda")
    assert m.metrics["device"] == "cuda"
    hw = build_window(events, AS_OF - timedelta(days=1), AS_OF, _fn(items))
    p = m.score(hw.candidates, hw.history, items, hw.cutoff)  # scoring runs on CPU after training
    assert np.isfinite(p).all()


def test_no_leakage_across_the_cutoff() -> None:
    """Everything a window computes comes from events before its cut-off: rewriting, adding and deleting
    events at or after t changes the labels only, never a feature, candidate or sequence."""
    from pipeline.datagen.build import build_shop

    shop, _ = build_shop(120, 60, 6, seed=3, end=AS_OF)
    ev = shop.events.sort_values(["ts", "event_id"]).reset_index(drop=True)
    t = AS_OF - timedelta(days=1)
    after = ev["ts"] >= t
    fake = ev[after].copy()
    fake["item_id"] = pd.array(np.roll(fake["item_id"].to_numpy(), 7), dtype="Int64")
    fake["event_type"] = "purchase"
    extra = fake.assign(event_id=fake["event_id"] + 10_000_000, user_id=fake["user_id"].iloc[::-1].to_numpy())
    tampered = pd.concat([ev[~after], fake, extra], ignore_index=True).sample(frac=1.0, random_state=1)
    fn = recall_candidate_fn(shop.items, n_candidates=30, seq_k=20)  # the seq source's followers too
    users = np.unique(ev["user_id"].to_numpy())
    a = build_window(ev, t, AS_OF, fn)
    b = build_window(tampered, t, AS_OF, fn)
    ca = fn(users, a.history, t)
    cb = fn(users, b.history.sort_values(["ts", "event_id"]), t)
    pd.testing.assert_frame_equal(ca.reset_index(drop=True), cb.reset_index(drop=True))
    assert (ca["score_seq"] > 0).any()
    space = FeatureSpace.fit(shop.items, ev["item_id"].dropna().to_numpy(), ["item-cf"], seq_len=10)
    sa, sb = user_sequences(ev, users, t, space), user_sequences(tampered, users, t, space)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    from pipeline.rank.features import item_stats_at

    pd.testing.assert_frame_equal(item_stats_at(ev, t, {"view": 1.0}, {"view": 7.0}),
                                  item_stats_at(tampered, t, {"view": 1.0}, {"view": 7.0}).sort_index())
    # ... and the labels do change: they are the only thing read from [t, as_of).
    assert not labels_in(ev, t, AS_OF).equals(labels_in(tampered, t, AS_OF))
    assert (a.history["ts"] < t).all() and (a.labels["user_id"].isin(ev.loc[after, "user_id"])).all()


def test_window_recall_in_user_chunks_equals_one_call_and_drops_what_the_ranker_never_reads() -> None:
    """Training windows run recall ``chunk_users`` users at a time (memory follows that budget): the same rows,
    in the same order, as ``generate_candidates`` on every user at once, less ``sources`` and the anchor."""
    from pipeline.datagen.build import build_shop

    shop, _ = build_shop(120, 60, 6, seed=3, end=AS_OF)
    ev = shop.events.sort_values(["ts", "event_id"]).reset_index(drop=True)
    t = AS_OF - timedelta(days=1)
    users = np.unique(ev["user_id"].to_numpy())
    whole = recall_candidate_fn(shop.items, n_candidates=30, seq_k=20, chunk_users=len(users))(users, ev, t)
    chunked = recall_candidate_fn(shop.items, n_candidates=30, seq_k=20, chunk_users=7)(users, ev, t)
    assert len(users) > 7 * 3 and whole["user_id"].nunique() > 7 * 3
    assert "sources" not in chunked and "anchor_item_id" not in chunked
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), chunked.reset_index(drop=True))


def test_window_neighbours_are_built_as_cf_build_builds_the_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The windows' item-CF neighbours take the run's top-k algorithm (the sparse one by default, whose cost
    follows the co-occurrences, not items x items per window)."""
    from pipeline.datagen.build import build_shop
    from pipeline.recall import itemcf

    shop, _ = build_shop(120, 60, 6, seed=3, end=AS_OF)
    ev = shop.events.sort_values(["ts", "event_id"]).reset_index(drop=True)
    t = AS_OF - timedelta(days=1)
    users = np.unique(ev["user_id"].to_numpy())
    seen: list[str] = []
    real = itemcf.similarity_topk_dense

    def spy(*a: object, **kw: object) -> object:
        seen.append(str(kw.get("algorithm", "dense")))
        return real(*a, **kw)

    monkeypatch.setattr(itemcf, "similarity_topk_dense", spy)
    sparse = recall_candidate_fn(shop.items, n_candidates=30)(users, ev, t)
    assert seen == ["sparse"]
    dense = recall_candidate_fn(shop.items, n_candidates=30, itemcf_algorithm="dense")(users, ev, t)
    assert seen == ["sparse", "dense"]
    # same scores either way on this shop (the algorithms differ only in which tie at the k-th place is kept)
    pd.testing.assert_frame_equal(sparse.reset_index(drop=True), dense.reset_index(drop=True))


def test_fit_rejects_empty_windows() -> None:
    events, items = _known_answer()
    w = build_window(events.iloc[:0], AS_OF - timedelta(days=1), AS_OF, _fn(items))
    with pytest.raises(ModelError, match="no labelled"):
        RankerModel(TINY).fit([w], items)


def test_holdout_metrics_report_discovery_apart_from_every_intent() -> None:
    """User 1 clicks a seen item (10, ranked first) and a new one (20, third; second once 10 is set aside);
    user 2 a new item at rank 2; user 3 only a seen item, so it counts in the whole figure, not in ``_new``."""
    from pipeline.rank.data import Window
    from pipeline.rank.stage import holdout_metrics

    cut = datetime(2026, 11, 20, tzinfo=UTC)
    hist = pd.DataFrame({"user_id": [1, 3], "item_id": pd.array([10, 60], dtype="Int64"), "event_type": "view",
                         "ts": cut - timedelta(days=1)})
    labels = pd.DataFrame({"user_id": [1, 1, 2, 3], "item_id": [10, 20, 30, 60], "weight": 1.0})
    cand = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3, 3], "item_id": [10, 40, 20, 50, 30, 60, 70],
                         "p_recall": [0.9, 0.6, 0.5, 0.8, 0.2, 0.7, 0.1]})
    win = Window(cutoff=cut, end=cut + timedelta(days=1), labels=labels, touched=labels[["user_id", "item_id"]],
                 candidates=cand, history=hist)
    m = holdout_metrics(None, win, pd.DataFrame({"item_id": [10, 20, 30, 40, 50, 60, 70]}))
    at2, at3 = 1 / np.log2(3), 1 / np.log2(4)
    assert m["users"] == 3 and m["users_new"] == 2
    assert m["ndcg@10"] == pytest.approx(((1 + at3) / (1 + at2) + at2 + 1.0) / 3)
    assert m["ndcg@10_new"] == pytest.approx(at2)
    assert m["hr@10"] == pytest.approx(1.0) and m["hr@10_new"] == pytest.approx(1.0)


def test_window_recall_has_every_source_scoring_has(tmp_path: object) -> None:
    """The ranker learns on the candidates scoring gives it: with the run's snapshot, a window proposes from
    every recall source scoring has (content from the item vectors, search, trending from recent events)."""
    from pathlib import Path

    from pipeline.datagen.build import build_shop
    from pipeline.recall.candidates import SOURCES

    shop, _ = build_shop(120, 60, 6, seed=3, end=AS_OF)
    ev = shop.events.sort_values(["ts", "event_id"]).reset_index(drop=True)
    t = AS_OF - timedelta(days=1)
    users = np.unique(ev["user_id"].to_numpy())
    snap = Path(str(tmp_path))
    shop.items.to_parquet(snap / "items.parquet")  # no fused vectors: the content index of the items' text
    assert (ev.loc[ev["ts"] < t, "event_type"] == "search").any()
    als = {"seed": 1, "factors": 8, "iterations": 3}
    cand = recall_candidate_fn(shop.items, n_candidates=30, seq_k=20, als=als, snapshot_dir=snap)(users, ev, t)
    proposed = {s for s in SOURCES if (cand[f"score_{s.replace('-', '_')}"] > 0).any()}
    assert proposed == set(SOURCES)
    # without the snapshot there is no content source: the gap a ranker trained so would meet when scoring
    bare = recall_candidate_fn(shop.items, n_candidates=30, seq_k=20, als=als)(users, ev, t)
    assert not (bare["score_content"] > 0).any() and (bare["score_trending"] > 0).any()
