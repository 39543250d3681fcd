"""rerank_refresh: structure checks, and one real `airflow dags test` run that refreshes pending events."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.db.engine import connect

pytestmark = pytest.mark.dags
DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    if str(DAGS) not in sys.path:
        sys.path.insert(0, str(DAGS))
    bag = DagBag(dag_folder=str(DAGS / "rerank_refresh.py"))
    assert bag.import_errors == {}
    return bag.dags["rerank_refresh"]


def test_runs_every_minute_one_at_a_time_without_catchup(dag) -> None:
    assert dag.timetable.delta == timedelta(minutes=1)
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.doc_md and "rerank_refresh" in dag.doc_md
    assert dag.task_ids == ["refresh"]
    task = dag.get_task("refresh")
    assert task.retries >= 1
    assert task.execution_timeout is not None and task.execution_timeout <= timedelta(minutes=10)


@pytest.mark.integration
def test_airflow_dags_test_refreshes_pending_events(airflow_db: dict[str, str], db_url: str, tmp_path: Path) -> None:
    from pipeline.datagen import generate_shop
    from pipeline.refresh.seed import seed_live_run

    home = str(tmp_path / "home")
    as_of = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    generate_shop(db_url, users=120, items=80, days=7, seed=5, end=as_of)
    seed_live_run(db_url, home, as_of)
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE recsys.refresh_state SET last_event_id = (SELECT max(event_id) FROM shop.events)")
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                    "SELECT max(event_id) + 1, 7, 3, 'view', now() FROM shop.events RETURNING event_id")
        new_id = cur.fetchone()[0]
    env = {**airflow_db, "RERANK_DATABASE_URL": db_url, "RERANK_HOME": home, "RERANK_TOP_N": "15",
           "RERANK_CANDIDATES": "60"}
    airflow = str(Path(sys.executable).with_name("airflow"))
    proc = subprocess.run([airflow, "dags", "test", "rerank_refresh"], env=env, capture_output=True, text=True,
                          timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "state=success" in log, log[-4000:]
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'")
        assert cur.fetchone() == (new_id,)
        cur.execute("SET ROLE rerank_reader")
        cur.execute("SELECT count(*), min(run_id) FROM recsys.user_recommendations WHERE user_id = 7")
        rows, run_id = cur.fetchone()
    assert rows == 15 and run_id.startswith("refresh_")
