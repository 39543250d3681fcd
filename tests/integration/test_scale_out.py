"""Scale-out on an existing engine: the nightly run against an external Dask scheduler with two worker
processes (started here on loopback with the `dask` CLI) publishes exactly what the LocalCluster run does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipeline.db.engine import connect
from pipeline.nightly import run_nightly
from pipeline.settings import load_settings, use_settings

pytestmark = pytest.mark.integration
AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
DASK = str(Path(sys.executable).with_name("dask"))
VIEW_COLUMNS = ("user_id, rank, item_id, score, reason, anchor_item_id, source, variant, model_version, run_id, "
                "generated_at")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


@pytest.fixture(scope="module")
def external_dask(tmp_path_factory: pytest.TempPathFactory, pg_server: str) -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1; yields the scheduler address. The
    workers get the database password from their environment (PGPASSWORD), as deployed workers do: the URL
    in their tasks comes without it."""
    from urllib.parse import urlsplit

    from distributed import Client

    logs = tmp_path_factory.mktemp("dask-logs")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
           "PGPASSWORD": urlsplit(pg_server).password or ""}
    procs: list[subprocess.Popen] = []

    def spawn(name: str, *args: str) -> None:
        out = open(logs / f"{name}.log", "w")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen([DASK, *args], env=env, stdout=out, stderr=subprocess.STDOUT))

    try:
        spawn("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert procs[0].poll() is None, (logs / "scheduler.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "dask scheduler did not start in 60 s"
                time.sleep(0.2)
        for i in (1, 2):
            spawn(f"worker-{i}", "worker", address, "--name", f"worker-{i}", "--nworkers", "1", "--nthreads", "1",
                  "--memory-limit", "3GiB", "--no-dashboard")
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        _stop(procs)


@pytest.fixture
def shop(rerank_env: dict[str, str]) -> str:
    from pipeline.datagen import generate_shop

    url = rerank_env["RERANK_DATABASE_URL"]
    generate_shop(url, users=400, items=150, days=14, seed=11, end=AS_OF)
    return url


def _published(url: str) -> pd.DataFrame:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {VIEW_COLUMNS} FROM recsys.user_recommendations ORDER BY user_id, rank")
        cols = [d[0] for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)


def test_external_scheduler_publishes_what_the_local_cluster_does(
    shop: str, rerank_env: dict[str, str], external_dask: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client

    base = {"top_n": 20, "candidates": 60, "dask_workers": 2}
    monkeypatch.delenv("RERANK_DASK_ADDRESS", raising=False)
    local = run_nightly(load_settings(**base), as_of=AS_OF)
    on_local = _published(shop)

    monkeypatch.setenv("RERANK_DASK_ADDRESS", external_dask)  # the setting the code reads, not an argument
    settings = load_settings(**base)
    assert settings.dask_address == external_dask
    external = run_nightly(settings, as_of=AS_OF)
    on_external = _published(shop)

    assert local["run_id"] == external["run_id"]
    assert len(on_local) > 0 and on_local["user_id"].nunique() > 300
    pd.testing.assert_frame_equal(on_local, on_external)
    # Same run again: the second extraction replaces the run's own batch (mode "rerun"), same rows.
    keys = ("events", "items", "users", "events_read", "high_water", "store")
    assert {k: local["extract"][k] for k in keys} == {k: external["extract"][k] for k in keys}
    assert (local["extract"]["mode"], external["extract"]["mode"]) == ("full", "rerun")
    # The Dask stages really ran on the external cluster (and it is still up: a client never closes it).
    with Client(external_dask, timeout="30s") as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        assert len(client.scheduler_info()["workers"]) == 2
        # Each stage left the workers without the run's cached artefacts (scoring's catalogue, factors, model;
        # the gate's vectors): the next stage, or the next run on this cluster, starts from bare workers.
        caches = (("pipeline.recommend", "_load_cached"), ("pipeline.publish.gate", "_vectors_at"))
        held = client.run(lambda: tuple(getattr(__import__(m, fromlist=["_"]), f).cache_info().currsize
                                        for m, f in caches))
        assert list(held.values()) == [(0, 0), (0, 0)]
        loaded = client.run(lambda: "pipeline.recommend" in __import__("sys").modules)
        assert all(loaded.values())  # the workers did score (so the empty caches above were emptied)
    assert "score_shard" in prefixes, prefixes  # dask's key_split drops the leading underscore
    assert len(prefixes) > 1, prefixes  # extract / feature tasks as well
    # One stage as an Airflow task runs it (its own client on the external cluster): the same, at its end.
    from pipeline.nightly import score_users

    with use_settings(settings):
        again = score_users(str(settings.home_path), external["run_id"], AS_OF, top_n=20, n_candidates=60)
    assert again["rows"] == len(on_external)
    with Client(external_dask, timeout="30s") as client:
        held = client.run(lambda: tuple(getattr(__import__(m, fromlist=["_"]), f).cache_info().currsize
                                        for m, f in caches))
    assert list(held.values()) == [(0, 0), (0, 0)]


def test_local_cluster_workers_keep_one_thread_and_a_fixed_mmap_threshold() -> None:
    """The LocalCluster's workers get Dask's environment (one BLAS thread, its trim threshold) and glibc's mmap
    threshold, without which every array above 128 KiB was mapped afresh (a shard 40-90 % slower)."""
    from pipeline.dask_client import MMAP_THRESHOLD, dask_client
    from pipeline.settings import load_settings

    def env() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                               "OPENBLAS_NUM_THREADS")}

    def memory(dask_worker) -> tuple:  # noqa: ANN001
        m = dask_worker.memory_manager
        return m.memory_pause_fraction, m.memory_spill_fraction, m.memory_target_fraction

    with dask_client(load_settings(dask_workers=1, dask_address=None)) as client:
        seen = list(client.run(env).values())
        fractions = list(client.run(memory).values())
        # a worker its nanny restarts (a memory kill) keeps them: restarted workers used to get Dask's defaults
        # back, paused at 80 % and stalled the tier L scoring
        before = set(client.scheduler_info()["workers"])
        client.restart_workers(list(before))
        assert set(client.scheduler_info()["workers"]) != before  # a new worker process
        seen += list(client.run(env).values())
        fractions += list(client.run(memory).values())
    assert seen == [{"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": "65536",
                     "OPENBLAS_NUM_THREADS": "1"}] * 2
    # no pause (a worker holding the run's cached artefacts above 80 % stalled the tier L run for good), no
    # spill (the nanny's terminate line stays)
    assert fractions == [(False, False, False)] * 2


def test_a_stage_counts_every_worker_restart_it_saw(tmp_path: Path) -> None:
    """``workers_lost`` in a stage's figures counts each restart the scheduler logged, the same worker's
    second one too (comparing addresses before and after counted one)."""
    from pipeline.dask_client import dask_client
    from pipeline.nightly import _stage
    from pipeline.settings import load_settings

    @_stage("probe")
    def probe(home: str, run_id: str, client: object, restarts: int) -> dict:
        for _ in range(restarts):
            client.restart_workers(list(client.scheduler_info()["workers"]))  # type: ignore[attr-defined]
        return {"ok": True}

    with dask_client(load_settings(dask_workers=1, dask_address=None)) as client:
        calm = probe(str(tmp_path), "r", client, 0)
        twice = probe(str(tmp_path), "r", client, 2)
    assert "workers_lost" not in calm
    assert twice["workers_lost"] == 2
    assert json.loads((tmp_path / "runs" / "r" / "stages" / "probe.json").read_text())["workers_lost"] == 2
