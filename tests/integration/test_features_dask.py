"""Extraction and features on a real Postgres and a real ``distributed`` cluster.

One LocalCluster (2 processes) per module; the external-scheduler test starts ``dask scheduler`` and one
``dask worker`` on loopback as subprocesses and expects the very same features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.db.engine import connect
from pipeline.extract import extract_snapshot, read_snapshot
from pipeline.features import build_item_embeddings, build_item_features, build_user_features, write_feature_tables
from pipeline.features.items import finalize_item_features, item_event_sums
from pipeline.features.users import read_user_features, user_feature_parts
from pipeline.validate import validate_source

pytestmark = pytest.mark.integration
AS_OF = datetime(2026, 11, 20, tzinfo=UTC)  # earlier than the data's end: later events are out of window
W = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
HL = {"view": 7.0, "click": 10.0, "add_to_cart": 14.0, "purchase": 30.0}


@pytest.fixture(scope="module")
def cluster():  # noqa: ANN201 - distributed.Client
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=40) as lc, Client(lc) as client:
        yield client


@pytest.fixture
def shop(db_url: str, tmp_path: Path) -> str:
    from pipeline.datagen import generate_shop

    generate_shop(db_url, users=300, items=120, days=10, seed=11, end=datetime(2026, 11, 24, tzinfo=UTC),
                  images_dir=str(tmp_path / "images"), image_share=0.3)
    # Two bad events: they must not reach the snapshot.
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE shop.events SET quantity = 0 WHERE event_id IN (SELECT min(event_id) FROM shop.events)")
        cur.execute("UPDATE shop.events SET event_type = 'teleport' WHERE event_id IN "
                    "(SELECT max(event_id) FROM shop.events WHERE ts < %s)", (AS_OF,))
    return db_url


def _features(url: str, snap: Path, client) -> tuple[pd.DataFrame, pd.DataFrame]:  # noqa: ANN001
    extract_snapshot(url, snap, AS_OF, client)
    items = build_item_features(snap, AS_OF, client, weights=W, half_life_days=HL)
    counts = build_user_features(snap, AS_OF, client, weights=W, half_life_days=HL, seq_len=20, shard_users=70)
    users = read_user_features(snap)
    assert counts["users"] == len(users) and counts["parts"] == len(user_feature_parts(snap)) >= 300 // 70
    return items, users


def test_snapshot_and_features_on_local_cluster(shop: str, tmp_path: Path, cluster) -> None:  # noqa: ANN001
    validate_source(shop, "t", AS_OF, data_docs=False)
    snap = tmp_path / "snap"
    items, users = _features(shop, snap, cluster)
    events, cat, snap_users = read_snapshot(snap)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.events WHERE ts < %s", (AS_OF,))
        before = cur.fetchone()[0]
    assert len(events) == before - 2 and events["ts"].max() < pd.Timestamp(AS_OF)
    assert set(events["event_type"]) <= {"view", "click", "add_to_cart", "purchase", "search"}
    # Dask fit equals the pandas transform + finalize over all events at once
    ref = finalize_item_features(cat, item_event_sums(events, AS_OF, W, HL).groupby("item_id").sum(), AS_OF)
    pd.testing.assert_frame_equal(items[ref.columns].reset_index(drop=True), ref, check_dtype=False)
    assert items["has_image"].sum() > 0 and items.loc[items["has_image"], "img_hash"].str.len().eq(16).all()
    # one row per snapshot user, sequences at most seq_len long and ordered in time
    assert users["user_id"].tolist() == sorted(snap_users["user_id"])
    assert users["seq_item_ids"].map(len).max() == 20
    active = users[users["events"] > 0].iloc[0]
    mine = events[(events["user_id"] == active["user_id"]) & events["item_id"].notna()]
    assert list(active["seq_item_ids"]) == mine["item_id"].astype(int).tolist()[-20:]
    emb = build_item_embeddings(snap, method="tfidf")
    table = pd.read_parquet(snap / "item_embeddings.parquet")
    assert emb["method"] == "tfidf" and len(table) == len(cat) and table["item_id"].dtype == "int64"
    z = np.stack(table["embedding"].to_numpy())
    assert z.dtype == np.float32 and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert json.loads((snap / "item_embeddings.json").read_text())["dim"] == z.shape[1]


def test_feature_tables_are_idempotent_per_run(shop: str, tmp_path: Path, cluster) -> None:  # noqa: ANN001
    snap = tmp_path / "snap"
    items, users = _features(shop, snap, cluster)
    first = write_feature_tables(shop, "run_a", snap)
    again = write_feature_tables(shop, "run_a", snap)
    write_feature_tables(shop, "run_b", snap)
    assert first == again == {"item_feature_rows": len(items), "user_feature_rows": len(users)}
    assert write_feature_tables(shop, "run_c", snap, which=("items",)) == {"item_feature_rows": len(items)}
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, count(*) FROM recsys.user_features GROUP BY 1 ORDER BY 1")
        assert cur.fetchall() == [("run_a", len(users)), ("run_b", len(users))]
        cur.execute("SELECT count(*) FROM recsys.item_features WHERE run_id = 'run_a' AND has_image "
                    "AND image ? 'hash'")
        assert cur.fetchone()[0] == int(items["has_image"].sum())


def _wait_for(path: Path, seconds: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if time.monotonic() - t0 > seconds:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.2)


def test_external_scheduler_gives_the_same_features(shop: str, tmp_path: Path, cluster) -> None:  # noqa: ANN001
    from distributed import Client

    local_items, local_users = _features(shop, tmp_path / "local", cluster)
    dask_bin = str(Path(sys.executable).parent / "dask")
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([dask_bin, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--dashboard-address", ":0", "--scheduler-file", str(sched_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_for(sched_file)
        procs.append(subprocess.Popen([dask_bin, "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                                       "--nworkers", "1", "--no-nanny", "--host", "127.0.0.1",
                                       "--no-dashboard"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
            ext_items, ext_users = _features(shop, tmp_path / "external", client)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    pd.testing.assert_frame_equal(local_items, ext_items)
    pd.testing.assert_frame_equal(local_users, ext_users)


def test_cnn_image_embedding_is_stored_with_the_item_features(shop: str, tmp_path: Path, cluster,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from pipeline.errors import ConfigError
    from pipeline.features.images import CNN_DIM, small_cnn

    torch.manual_seed(1)
    torch.save(small_cnn().state_dict(), tmp_path / "cnn.pt")
    monkeypatch.setenv("RERANK_IMAGE_MODEL_PATH", str(tmp_path / "cnn.pt"))  # the setting the stage reads
    snap = tmp_path / "snap"
    items, _ = _features(shop, snap, cluster)
    with_img = items[items["has_image"]]
    assert len(with_img) > 0 and items.loc[~items["has_image"], "img_embedding"].isna().all()
    z = np.stack(with_img["img_embedding"].to_numpy())
    assert z.shape == (len(with_img), CNN_DIM) and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    write_feature_tables(shop, "run_cnn", snap, which=("items",))
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM recsys.item_features WHERE run_id = 'run_cnn' "
                    "AND jsonb_array_length(image -> 'embedding') = %s", (CNN_DIM,))
        assert cur.fetchone()[0] == len(with_img)
    monkeypatch.setenv("RERANK_IMAGE_MODEL_PATH", str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="RERANK_IMAGE_MODEL_PATH"):
        build_item_features(snap, AS_OF, cluster, weights=W, half_life_days=HL)
