"""rerank_nightly: structure, params, Assets, callbacks, parse time, and one real `airflow dags test` run."""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.db.engine import connect

pytestmark = pytest.mark.dags
DAGS = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))
STAGES = ("validate", "extract", "item_features", "user_features", "cf_build", "train_ranker", "evaluate_gate",
          "score_users", "quality_gate", "publish", "report")
#: Modules a DAG file must not import at parse time (Airflow may import some of them itself: only the
#: modules the DAG file adds on top of `import airflow.sdk` count).
HEAVY = ("torch", "dask", "distributed", "pandas", "numpy", "great_expectations", "implicit", "sklearn", "scipy",
         "pyarrow", "psycopg2", "kubernetes", "pipeline")
PARSE_BOUND_S = 2.0

if str(DAGS) not in sys.path:  # Airflow puts DAGS_FOLDER on sys.path; the DAG files import their _common.py
    sys.path.insert(0, str(DAGS))


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def nightly(dagbag):
    return dagbag.dags["rerank_nightly"]


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "rerank_nightly" in dagbag.dag_ids


def test_every_dag_is_documented(dagbag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.doc_md and dag_id in dag.doc_md, dag_id
        assert "ecom-rerank" in dag.tags, dag_id


def test_every_task_has_retries_backoff_and_a_timeout(dagbag) -> None:
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            assert task.retries >= 1, where
            assert task.retry_exponential_backoff, where
            assert task.execution_timeout is not None, where


def test_nightly_failures_mark_the_run(nightly) -> None:
    from _common import mark_run_failed, route_report_warnings, warn_on_retry

    def listed(callbacks: object) -> list:
        return callbacks if isinstance(callbacks, list) else [callbacks]

    for task in nightly.tasks:
        assert mark_run_failed in listed(task.on_failure_callback), task.task_id
        assert warn_on_retry in listed(task.on_retry_callback), task.task_id
    assert route_report_warnings in listed(nightly.get_task("report").on_success_callback)


def test_stages_follow_the_architecture(nightly) -> None:
    assert set(STAGES) <= set(nightly.task_ids)
    assert nightly.get_task("extract").upstream_task_ids == {"begin", "validate"}
    assert nightly.get_task("train_ranker").upstream_task_ids >= {"item_features", "user_features", "cf_build"}
    assert nightly.get_task("publish").upstream_task_ids >= {"quality_gate"}
    assert nightly.max_active_runs == 1


def test_each_stage_produces_its_asset(nightly) -> None:
    for stage in STAGES:
        names = {a.name for a in nightly.get_task(stage).outlets}
        assert f"rerank.nightly.{stage}" in names, stage
    announce = nightly.get_task("announce")
    assert "rerank.recsys.user_recommendations" in {a.name for a in announce.outlets}
    assert "rerank.recsys.user_recommendations" not in {a.name for a in nightly.get_task("publish").outlets}
    assert announce.upstream_task_ids >= {"publish"}


def test_dry_run_emits_no_published_asset_event(nightly) -> None:
    """A dry run swaps nothing, so the readers' Asset must not fire: `announce` skips (a skip emits no event)."""
    from airflow.sdk.exceptions import AirflowSkipException

    announce = nightly.get_task("announce").python_callable
    run = {"run_id": "nightly_20261124T0000", "as_of": "2026-11-24T00:00:00+00:00"}
    with pytest.raises(AirflowSkipException, match="dry run"):
        announce(run, {"published": False, "dry_run": True, "rows": 10})
    events: dict = {}
    announce(run, {"publication_id": 7, "rows": 10}, outlet_events=_Events(events))
    assert [e.extra["run_id"] for e in events.values()] == ["nightly_20261124T0000"]


def test_an_impossible_as_of_fails_at_once_without_retries(nightly) -> None:
    """The params schema takes any date-shaped string; begin refuses 2026-02-30 with AirflowFailException,
    which Airflow does not retry (a ConfigError would be retried with backoff, uselessly)."""
    from airflow.sdk.exceptions import AirflowFailException

    begin = nightly.get_task("begin").python_callable
    with pytest.raises(AirflowFailException, match="2026-02-30"):
        begin(params={"as_of": "2026-02-30"})


def test_training_runs_in_the_gpu_pool(nightly) -> None:
    train = nightly.get_task("train_ranker")
    assert train.pool == "gpu"
    assert train.executor_config == {"pod_template_file": "/opt/rerank/pod_templates/gpu.yaml"}
    assert {t.pool for t in nightly.tasks if t.task_id != "train_ranker"} == {"default_pool"}


def test_timeouts_differ_per_stage(nightly) -> None:
    timeouts = {t.task_id: t.execution_timeout for t in nightly.tasks}
    assert timeouts["train_ranker"] > timeouts["quality_gate"]
    assert len(set(timeouts.values())) > 3


def _resolve(dag, conf: dict) -> dict:
    """What a trigger with ``conf`` resolves to (Airflow merges conf into a copy of the DAG's params)."""
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


@pytest.mark.parametrize("conf", [
    {},
    {"as_of": "2026-11-24"},
    {"as_of": "2026-11-24T00:00:00+00:00", "retrain": False, "user_ids": [1, 2], "top_n": 10, "dry_run": True},
    {"as_of": "2026-11-24T06:30:00Z"},
])
def test_good_params_validate(nightly, conf: dict) -> None:
    out = _resolve(nightly, conf)
    assert out["top_n"] == conf.get("top_n", 50)


@pytest.mark.parametrize("conf", [
    {"top_n": 0},
    {"top_n": 1001},
    {"top_n": "ten"},
    {"as_of": "yesterday"},
    {"as_of": "24/11/2026"},
    {"retrain": "yes"},
    {"user_ids": ["a"]},
    {"user_ids": [1, 1]},
    {"dry_run": None},
])
def test_bad_params_are_rejected(nightly, conf: dict) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        _resolve(nightly, conf)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_quickly_without_heavy_imports(dag_file: Path) -> None:
    code = (
        f"import sys, time, json; sys.path.insert(0, {str(DAGS)!r}); import airflow.sdk; "
        "before = set(sys.modules); t = time.perf_counter(); "
        f"import importlib; importlib.import_module({dag_file.stem!r}); secs = time.perf_counter() - t; "
        f"heavy = sorted({{m.split('.')[0] for m in set(sys.modules) - before}} & set({list(HEAVY)!r})); "
        "print(json.dumps({'seconds': secs, 'heavy': heavy}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["heavy"] == [], f"{dag_file.name} imports {res['heavy']} at parse time"
    assert res["seconds"] < PARSE_BOUND_S, res


def test_connection_becomes_a_libpq_url() -> None:
    from _common import connection_url

    conn = SimpleNamespace(login="rerank", password="p@ss:w/rd", host="db.internal", port=5433, schema="shop",
                           extra_dejson={"sslmode": "require", "cursor": "dictcursor"})
    assert connection_url(conn) == "postgresql://rerank:p%40ss%3Aw%2Frd@db.internal:5433/shop?sslmode=require"
    bare = SimpleNamespace(login=None, password=None, host="h", port=None, schema="", extra_dejson={})
    assert connection_url(bare) == "postgresql://h/postgres"


def test_database_prefers_the_airflow_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from _common import database_url

    monkeypatch.setenv("RERANK_DATABASE_URL", "postgresql://fallback@127.0.0.1:1/none")
    assert database_url() == "postgresql://fallback@127.0.0.1:1/none"
    monkeypatch.setenv("AIRFLOW_CONN_RERANK_POSTGRES", "postgresql://conn:secret@pg.example:5432/shop")
    assert database_url() == "postgresql://conn:secret@pg.example:5432/shop"


@pytest.mark.integration
def test_failure_callback_marks_the_run_failed(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from _common import mark_run_failed

    from pipeline import nightly as stages

    monkeypatch.setenv("RERANK_DATABASE_URL", db_url)
    monkeypatch.setenv("RERANK_HOME", str(tmp_path))
    monkeypatch.delenv("AIRFLOW_CONN_RERANK_POSTGRES", raising=False)
    as_of = datetime(2026, 11, 24, tzinfo=UTC)
    rid = stages.begin(db_url, str(tmp_path), as_of, params={"as_of": as_of.isoformat()})
    ti = SimpleNamespace(task_id="score_users", xcom_pull=lambda task_ids: rid)
    mark_run_failed({"ti": ti, "exception": RuntimeError("worker lost"), "params": {}})
    # begin itself failed (no XCom): the run id is derived from the DAG id and as_of.
    rid2 = stages.begin(db_url, str(tmp_path), datetime(2026, 11, 23, tzinfo=UTC), params={"as_of": "2026-11-23"})
    ti2 = SimpleNamespace(task_id="begin", xcom_pull=lambda task_ids: None)
    mark_run_failed({"ti": ti2, "exception": "boom", "params": {"as_of": "2026-11-23"},
                     "dag": SimpleNamespace(dag_id="rerank_nightly")})
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, status, stats->>'error' FROM recsys.runs ORDER BY run_id")
        assert cur.fetchall() == [(rid2, "failed", "begin: boom"), (rid, "failed", "score_users: worker lost")]
        # the failure was routed (recorded as an alert) and the failed run has its report page
        cur.execute("SELECT stats->'alerts'->0->>'level', stats->'alerts'->0->>'source', report_uri "
                    "FROM recsys.runs WHERE run_id = %s", (rid,))
        level, source, page = cur.fetchone()
    assert (level, source) == ("failure", "score_users") and Path(page).is_file()
    # Never raises, even when the database is unreachable.
    monkeypatch.setenv("RERANK_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    mark_run_failed({"ti": ti, "exception": "x", "params": {}})


class _Events(dict):
    """Stand-in for a task's ``outlet_events`` accessor: one object with ``extra`` per Asset."""

    def __init__(self, store: dict) -> None:
        super().__init__()
        self.store = store

    def __getitem__(self, asset):  # noqa: ANN001, ANN204
        from types import SimpleNamespace

        return self.store.setdefault(asset.name, SimpleNamespace(extra=None))


@pytest.mark.integration
def test_airflow_dags_test_publishes_lists(airflow_db: dict[str, str], db_url: str, tmp_path: Path) -> None:
    """One real run, with params, the database given only by the connection rerank_postgres (the fallback
    URL points nowhere) and no `gpu` pool created: what `make demo` relies on."""
    from pipeline.datagen import generate_shop

    generate_shop(db_url, users=300, items=120, days=10, seed=3)
    env = {**airflow_db, "AIRFLOW_CONN_RERANK_POSTGRES": db_url,
           "RERANK_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
           "RERANK_HOME": str(tmp_path / "home"), "RERANK_DASK_WORKERS": "1",
           "RERANK_RANK_WINDOWS": "2", "RERANK_RANK_MAX_EPOCHS": "3",
           "RERANK_EMBEDDING_METHOD": "tfidf"}
    conf = {"as_of": "2026-11-24T00:00:00+00:00", "top_n": 15, "retrain": False}
    airflow = str(Path(sys.executable).with_name("airflow"))
    proc = subprocess.run([airflow, "dags", "test", "rerank_nightly", "-c", json.dumps(conf)], env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "state=success" in log, log[-4000:]
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, stats->'params'->>'top_n', stats->'params'->>'retrain', report_uri "
                    "FROM recsys.runs WHERE run_id = 'nightly_20261124T0000'")
        status, top_n, retrain, page = cur.fetchone()
        assert (status, top_n, retrain) == ("success", "15", "false")
        # the run's HTML report beside its stage files, linked from recsys.runs
        assert Path(page) == tmp_path / "home" / "runs" / "nightly_20261124T0000" / "report.html"
        assert 'id="drift"' in Path(page).read_text()
        cur.execute("SET ROLE rerank_reader")
        cur.execute("SELECT count(DISTINCT user_id), max(rank) FROM recsys.user_recommendations")
        users, max_rank = cur.fetchone()
    assert users > 250 and max_rank == 15
    # Every stage's Asset got an event carrying the run id.
    db = sqlite3.connect(Path(airflow_db["AIRFLOW_HOME"]) / "airflow.db")
    rows = db.execute("SELECT a.name, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id").fetchall()
    db.close()
    events = {name: json.loads(extra) for name, extra in rows}
    assert {f"rerank.nightly.{s}" for s in STAGES} | {"rerank.recsys.user_recommendations"} <= set(events)
    assert events["rerank.recsys.user_recommendations"]["run_id"] == "nightly_20261124T0000"
    assert events["rerank.nightly.extract"]["run_id"] == "nightly_20261124T0000"


def test_as_of_is_parsed_once_by_begin_and_handed_to_every_stage(nightly) -> None:
    """Every stage after begin takes begin's {run_id, as_of}: none reads as_of back from the database or a
    file, and begin parses it from the trigger once."""
    import inspect

    begin = nightly.get_task("begin")
    for task_id, t in nightly.task_dict.items():
        if task_id == "begin":
            continue
        params = list(inspect.signature(t.python_callable).parameters)
        assert params[0] == "run", (task_id, params)
    source = inspect.getsource(inspect.getmodule(begin.python_callable))
    assert "run_as_of" not in source and source.count("as_of_from(") == 1
