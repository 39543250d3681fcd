"""Failures a retry cannot change end the nightly run on the first try; the run has a dagrun_timeout."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline import errors
from pipeline.db.engine import connect

pytestmark = pytest.mark.dags
DAGS = Path(__file__).resolve().parents[2] / "dags"
if str(DAGS) not in sys.path:
    sys.path.insert(0, str(DAGS))


@pytest.mark.parametrize("name", ["ConfigError", "ValidationFailed", "QualityGateFailed", "MigrationError",
                                  "InputDataError"])
def test_non_retryable_pipeline_errors_become_airflow_fail(name: str) -> None:
    from _common import fail_fast
    from airflow.sdk.exceptions import AirflowFailException

    def stage() -> None:
        raise getattr(errors, name)("too many bad rows", "recsys.quarantine")

    with pytest.raises(AirflowFailException, match=f"{name}: too many bad rows .*not retried") as info:
        fail_fast(stage)()
    assert isinstance(info.value.__cause__, getattr(errors, name))


@pytest.mark.parametrize("exc", [errors.DatabaseError("cannot connect"), errors.ModelError("CUDA out of memory"),
                                 OSError("disk full"), RuntimeError("worker lost")])
def test_other_failures_stay_retryable(exc: Exception) -> None:
    from _common import fail_fast

    def stage() -> None:
        raise exc

    with pytest.raises(type(exc)):
        fail_fast(stage)()


def test_the_wrapped_task_keeps_its_signature() -> None:
    import inspect

    from _common import fail_fast

    def stage(rid: str, _v: dict, **context) -> dict:  # noqa: ANN003
        return {"rid": rid}

    assert inspect.signature(fail_fast(stage)) == inspect.signature(stage)
    assert fail_fast(stage)("r1", {}) == {"rid": "r1"}


def test_the_nightly_has_a_dagrun_timeout(airflow_db: dict[str, str]) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS)).dags["rerank_nightly"]
    assert timedelta(hours=12) < dag.dagrun_timeout < timedelta(days=1)
    assert all(t.retries >= 1 for t in dag.tasks)  # transient failures still retry


@pytest.mark.integration
def test_failed_validation_ends_the_run_on_the_first_try(airflow_db: dict[str, str], db_url: str,
                                                         tmp_path: Path) -> None:
    """A real `airflow dags test`: validation fails (10 % of the events have an unknown type); without
    fail_fast the validate task was retried twice (30 s backoff) before the run failed."""
    from pipeline.datagen import generate_shop

    generate_shop(db_url, users=80, items=40, days=5, seed=5)
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE shop.events SET event_type = 'teleport' WHERE event_id % 10 = 0")
    env = {**airflow_db, "AIRFLOW_CONN_RERANK_POSTGRES": db_url, "RERANK_DATABASE_URL": db_url,
           "RERANK_HOME": str(tmp_path / "home"), "RERANK_DASK_WORKERS": "1"}
    meta = Path(airflow_db["AIRFLOW_HOME"]) / "airflow.db"
    db = sqlite3.connect(meta)
    before = db.execute("SELECT coalesce(max(id), 0) FROM dag_run").fetchone()[0]
    db.close()
    airflow = str(Path(sys.executable).with_name("airflow"))
    start = time.monotonic()
    proc = subprocess.run([airflow, "dags", "test", "rerank_nightly", "-c",
                           json.dumps({"as_of": "2026-11-20T00:00:00+00:00"})],
                          env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    log = proc.stdout + proc.stderr
    db = sqlite3.connect(meta)
    run_id, state = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = 'rerank_nightly' AND id > ? "
                               "ORDER BY id DESC LIMIT 1", (before,)).fetchone()
    tis = dict(((task, (st, tries)) for task, st, tries in db.execute(
        "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = 'rerank_nightly' AND run_id = ?",
        (run_id,))))
    db.close()
    assert state == "failed", log[-4000:]
    assert tis["begin"][0] == "success"
    assert tis["validate"] == ("failed", 1), (tis, log[-4000:])
    assert "not retried" in log and "ValidationFailed" in log
    assert tis["extract"][0] == "upstream_failed"
    assert elapsed < 300
    with connect(db_url) as conn, conn.cursor() as cur:  # the failure callback still ran
        cur.execute("SELECT status FROM recsys.runs WHERE run_id = 'nightly_20261120T0000'")
        assert cur.fetchone() == ("failed",)
