"""The recall stage on a generated shop: Dask CF build, ALS artefacts, candidates for every user (no Postgres:
the snapshot is written from build_shop's frames in the extract stage's layout)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.recall.itemcf import similarity_topk_dask, similarity_topk_dense
from pipeline.recall.sequential import SeqParams
from pipeline.recall.stage import build_recall_models, factors_dir

pytestmark = pytest.mark.integration
AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
HALF_LIFE = {"view": 7.0, "click": 10.0, "add_to_cart": 14.0, "purchase": 30.0}


def _recall(users: np.ndarray, snap: Path, n: int = 60) -> pd.DataFrame:
    """The shared path's recall step (pipeline.recommend.recall) on the run's artefacts, as a shard runs it."""
    from pipeline.extract import read_events
    from pipeline.recommend import RecommendConfig, load_artefacts, recall

    events = read_events(snap, filters=[("user_id", "in", [int(u) for u in users])])
    cfg = RecommendConfig(n_candidates=n, weights=WEIGHTS, half_life_days=HALF_LIFE)
    return recall(np.unique(users), events, load_artefacts(snap), AS_OF, cfg)


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as c:
        yield c


def _item_features(ev: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The features stage's columns that recall reads (kept here so this test does not depend on that stage)."""
    from pipeline.features.items import decayed_weight, top_category

    e = ev[ev["item_id"].notna()].assign(item_id=lambda d: d["item_id"].astype("int64"))
    e["w"] = decayed_weight(e, AS_OF, WEIGHTS, HALF_LIFE)
    e["recent"] = (pd.Timestamp(AS_OF) - e["ts"]) <= pd.Timedelta(days=3)
    g = e.groupby("item_id").agg(activity=("w", "sum"), events=("w", "size"), recent_events=("recent", "sum"))
    f = items.merge(g, left_on="item_id", right_index=True, how="left").fillna(
        {"activity": 0.0, "events": 0, "recent_events": 0})
    f["trend"] = (f["recent_events"] + 1.0) / (f["events"] + 10.0)
    f["top_category"] = top_category(f["category"])
    return f


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory, client) -> Path:
    from pipeline.datagen import build_shop
    frames, _ = build_shop(300, 120, 14, seed=3, end=AS_OF)
    snap = tmp_path_factory.mktemp("run") / "snapshot"
    (snap / "events").mkdir(parents=True)
    ev = frames.events.copy()
    ev["item_id"] = ev["item_id"].astype("Int64")
    ev.to_parquet(snap / "events" / "part.0.parquet", index=False)
    items = frames.items.drop(columns=["attrs", "description", "image_path"])
    # two items that nobody has touched yet: only content recall can reach them
    new = items.iloc[:2].assign(item_id=[100001, 100002], created_at=pd.Timestamp(AS_OF))
    items = pd.concat([items, new], ignore_index=True)
    items.to_parquet(snap / "items.parquet", index=False)
    frames.users[["user_id", "created_at"]].to_parquet(snap / "users.parquet", index=False)
    _item_features(ev, items).to_parquet(snap / "item_features.parquet", index=False)
    # the features stage's embeddings file, made by hand: random vectors, the new items copying their twins
    rng = np.random.default_rng(0)
    vec = rng.standard_normal((len(items), 16)).astype(np.float32)
    vec[-2:] = vec[:2] + 0.01
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    pd.DataFrame({"item_id": items["item_id"], "embedding": list(vec)}).to_parquet(snap / "item_embeddings.parquet")
    return snap


def test_dask_blocks_equal_single_process(snapshot: Path, client) -> None:
    from pipeline.extract.snapshot import read_snapshot
    from pipeline.recall.matrix import build_interactions

    ev, items, _ = read_snapshot(snapshot)
    X = build_interactions(ev, AS_OF, weights=WEIGHTS, half_life_days=HALF_LIFE).user_items
    for method in ("cosine", "jaccard"):
        a = similarity_topk_dense(X, k=10, method=method)
        b = similarity_topk_dask(X, client, k=10, method=method, block_size=7)
        assert (a[1] == pytest.approx(b[1], abs=1e-6)) and (a[0][a[1] > 0] == b[0][b[1] > 0]).all()


def test_build_and_candidates_for_every_user(snapshot: Path, client) -> None:
    out = build_recall_models(snapshot, AS_OF, client, weights=WEIGHTS, half_life_days=HALF_LIFE, k=10,
                              factors=16, iterations=5, block_size=32)
    nb = pd.read_parquet(snapshot / "neighbours.parquet")
    assert list(nb.columns) == ["item_id", "similar_item_id", "score", "rank", "method"]
    assert out["neighbour_rows"] == len(nb) and nb.groupby("item_id")["rank"].max().max() <= 10
    assert (factors_dir(snapshot) / "meta.json").exists()
    users = pd.read_parquet(snapshot / "users.parquet")["user_id"].to_numpy()
    users = np.append(users, 987654321)  # a user the snapshot has never seen
    c = _recall(users, snapshot)
    items = pd.read_parquet(snapshot / "items.parquet")
    n_avail = int((items["in_stock"] & items["visible"]).sum())
    sizes = c.groupby("user_id").size()
    assert n_avail > 60 + 20 and len(sizes) == len(users) and (sizes == 60).all()
    assert not c.duplicated(["user_id", "item_id"]).any()
    assert {"item-cf", "seq", "als", "content", "retarget"} <= set(c["source"])
    # the seq source's followers, built by cf_build from the snapshot's events
    fol = pd.read_parquet(snapshot / "followers.parquet")
    assert list(fol.columns) == ["item_id", "next_item_id", "score", "rank"]
    assert out["follower_rows"] == len(fol) > 0 and fol.groupby("item_id")["rank"].max().max() <= 50
    seq = c[c["source"] == "seq"]
    assert seq["anchor_item_id"].notna().all() and (seq["score_seq"] > 0).all()
    assert c["sources"].str.contains("popularity").any()
    assert c.loc[c["user_id"] == 987654321, "source"].isin(["category", "trending", "popularity"]).all()
    assert c["item_id"].isin([100001, 100002]).any()  # cold items reached through content
    again = _recall(users[::-1], snapshot)
    pd.testing.assert_frame_equal(c, again)


def test_als_on_bm25_weights_is_the_same_fit_on_the_weighted_matrix(snapshot: Path, client, tmp_path: Path) -> None:
    """RERANK_ALS_WEIGHTING=bm25: cf_build trains ALS on the BM25 weights of the run's interactions and saves
    the weighting with the factors; candidates still come for every user."""
    import shutil

    from pipeline.errors import ConfigError
    from pipeline.extract.snapshot import read_snapshot
    from pipeline.recall.factors import BM25Weights, load_factors, train_als
    from pipeline.recall.matrix import build_interactions

    snap = tmp_path / "run" / "snapshot"
    shutil.copytree(snapshot, snap)
    build_recall_models(snap, AS_OF, client, weights=WEIGHTS, half_life_days=HALF_LIFE, k=10, factors=16,
                        iterations=5, block_size=32, weighting="bm25")
    f = load_factors(factors_dir(snap))
    ev, items, _ = read_snapshot(snap)
    inter = build_interactions(ev, AS_OF, weights=WEIGHTS, half_life_days=HALF_LIFE,
                               item_ids=np.sort(items["item_id"].to_numpy()))
    w = BM25Weights.fit(inter.user_items)
    uf, itf, _ = train_als(w.transform(inter.user_items), factors=16, iterations=5, seed=42)
    np.testing.assert_allclose(f.item_factors, itf, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(f.weighting.idf, w.idf)
    users = np.append(pd.read_parquet(snap / "users.parquet")["user_id"].to_numpy()[:20], 987654321)
    c = _recall(users, snap)
    assert c["user_id"].nunique() == len(users) and "als" in set(c["source"])
    with pytest.raises(ConfigError, match="RERANK_ALS_WEIGHTING"):
        build_recall_models(snap, AS_OF, client, weights=WEIGHTS, half_life_days=HALF_LIFE, weighting="tfidf")


def test_a_merchandisers_repurchase_window_lets_recall_keep_the_bought_items(
        snapshot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """recsys.repurchase_windows for a category outside recall's own list (Grocery, Beauty): the nightly shard
    keeps that category's bought items as candidates, so the re-rank can apply the window. Recall used to
    drop them first, so a window for any other category never brought an item back."""
    import pipeline.recommend as shared
    from pipeline.extract import read_events
    from pipeline.nightly import recommend_shard

    ev = pd.read_parquet(snapshot / "events")
    items = pd.read_parquet(snapshot / "items.parquet")
    bought = ev[ev["event_type"] == "purchase"].merge(items[["item_id", "category"]], on="item_id")
    bought = bought.assign(top=bought["category"].str.split(">").str[0])
    bought = bought[~bought["top"].isin(["Grocery", "Beauty"])
                    & bought["item_id"].isin(items.loc[items["in_stock"] & items["visible"], "item_id"])]
    user, item, top = bought.iloc[0][["user_id", "item_id", "top"]]
    kept: dict[str, pd.DataFrame] = {}
    real = shared.generate_candidates

    def spy(*args, **kwargs) -> pd.DataFrame:
        kept["cand"] = out = real(*args, **kwargs)
        return out

    monkeypatch.setattr(shared, "generate_candidates", spy)
    users = np.array([user])
    events = read_events(snapshot, filters=[("user_id", "in", [int(user)])])
    for rerank, expected in ((None, False), ({"repurchase_days": {top: 0.0}}, True),
                             ({"repurchase_days": {"Grocery": 0.0}}, False)):
        recommend_shard(users, events, str(snapshot), AS_OF, top_n=10, n_candidates=len(items), recent_days=7,
                        weights=WEIGHTS, half_life=HALF_LIFE, rerank=rerank)
        assert (item in set(kept["cand"]["item_id"])) is expected, rerank
    # an A/B arm's window counts too: the arm's users must see the item among their candidates
    recommend_shard(users, events, str(snapshot), AS_OF, top_n=10, n_candidates=len(items), recent_days=7,
                    weights=WEIGHTS, half_life=HALF_LIFE, variants={"control": {"weight": 1}, "back": {"weight": 1e-9,
                                                                                    "repurchase_days": {top: 0.0}}})
    assert item in set(kept["cand"]["item_id"])


def test_followers_streamed_by_date_partition_equal_one_read(snapshot: Path, client, tmp_path: Path) -> None:
    """The extract's layout (events/date=YYYY-MM-DD/) is read one day at a time, each user's last items carried
    to the next day: the table is the one a single read of every event gives. seq_k=0 removes it (source off)."""
    import shutil

    from pipeline.recall.stage import build_followers, event_chunks, load_followers

    snap = tmp_path / "run" / "snapshot"
    shutil.copytree(snapshot, snap)
    items = np.sort(pd.read_parquet(snap / "items.parquet")["item_id"].to_numpy())
    build_followers(snap, items)
    whole = pd.read_parquet(snap / "followers.parquet")
    ev = pd.read_parquet(snap / "events" / "part.0.parquet")
    (snap / "events" / "part.0.parquet").unlink()
    for day, part in ev.groupby(ev["ts"].dt.strftime("%Y-%m-%d")):
        (snap / "events" / f"date={day}").mkdir()
        part.to_parquet(snap / "events" / f"date={day}" / "part-0.parquet", index=False)
    assert sum(1 for _ in event_chunks(snap)) == ev["ts"].dt.date.nunique() > 1
    out = build_followers(snap, items)
    by_day = pd.read_parquet(snap / "followers.parquet")
    pd.testing.assert_frame_equal(by_day[["item_id", "next_item_id", "rank"]], whole[["item_id", "next_item_id",
                                                                                          "rank"]])
    np.testing.assert_allclose(by_day["score"], whole["score"], rtol=1e-5)
    assert out["follower_rows"] == len(by_day) and out["follower_events"] > 0
    assert load_followers(snap) is not None
    from pipeline.recommend import load_artefacts

    assert load_artefacts(snap, fold_in=True).followers is not None  # as the refresh loads the live run
    build_followers(snap, items, SeqParams(k=0))
    assert not (snap / "followers.parquet").exists() and load_followers(snap) is None
    assert load_artefacts(snap, fold_in=True).followers is None  # a run without the table: the source is off
    users = pd.read_parquet(snap / "users.parquet")["user_id"].to_numpy()[:50]
    c = _recall(users, snap)
    assert "seq" not in set(c["source"]) and (c["score_seq"] == 0).all()
