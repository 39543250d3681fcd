"""Edge cases of the orchestration: run ids, `rerank run nightly` (one stage, params, bad input), run
bookkeeping and settings that must fail fast.

The stage functions are replaced by recorders where a test is about the wiring, not the stages' work, so
these tests stay fast; the bookkeeping itself runs against a real Postgres (``db_url``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline import nightly, runs
from pipeline.db.engine import connect
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.settings import load_settings

pytestmark = pytest.mark.integration
AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
RERANK = str(Path(sys.executable).with_name("rerank"))


# --- run ids ------------------------------------------------------------------------------------------
def test_run_id_keeps_the_format_of_whole_minutes() -> None:
    assert runs.make_run_id("rerank_nightly", AS_OF) == "nightly_20261124T0000"
    # the same instant written with another offset is the same run
    plus_one = AS_OF.astimezone(timezone(timedelta(hours=1)))
    assert runs.make_run_id("rerank_nightly", plus_one) == "nightly_20261124T0000"


@pytest.mark.parametrize("later", [timedelta(seconds=30), timedelta(microseconds=250)])
def test_two_as_of_values_never_share_a_run_id(later: timedelta) -> None:
    """as_of accepts seconds (CLI, DAG param pattern, a manual trigger's run_after): a different as_of is a
    different run, or the second would overwrite the first's recsys.runs row, quarantine and artefacts."""
    assert runs.make_run_id("rerank_nightly", AS_OF + later) != runs.make_run_id("rerank_nightly", AS_OF)
    assert runs.make_run_id("rerank_nightly", AS_OF + later) == runs.make_run_id("rerank_nightly", AS_OF + later)


# --- run_nightly wiring (stages replaced by recorders) ---------------------------------------------------
@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """Replace every stage of pipeline.nightly (and the Dask cluster) by a recorder of its arguments."""
    calls: dict[str, dict] = {}

    def recorder(name: str):  # noqa: ANN202
        def stage(*args: object, **kwargs: object) -> dict:
            calls[name] = {"args": args, **kwargs}
            return {"stage": name}

        return stage

    for name in nightly.STAGES:
        monkeypatch.setattr(nightly, name, recorder(name))

    @contextmanager
    def no_cluster(*_a: object, **_k: object) -> Iterator[None]:
        yield None

    monkeypatch.setattr(nightly, "dask_client", no_cluster)
    return calls


def _settings(db_url: str, home: Path, **kw: object):
    return load_settings(database_url=db_url, home=str(home), dask_workers=1, **kw)


def _runs(db_url: str) -> list[tuple]:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, status FROM recsys.runs ORDER BY run_id")
        return cur.fetchall()


def test_unknown_stage_leaves_no_run_behind(db_url: str, tmp_path: Path, recorded: dict) -> None:
    """`--stage scor_users` (a typo) must say so before recording a run that stays 'running' forever."""
    with pytest.raises(PipelineError, match="unknown stage 'scor_users'"):
        nightly.run_nightly(_settings(db_url, tmp_path), as_of=AS_OF, only_stage="scor_users")
    assert _runs(db_url) == []
    assert recorded == {}


@pytest.mark.parametrize("top_n", [0, -3, 1001])
def test_top_n_out_of_range_is_refused(db_url: str, tmp_path: Path, recorded: dict, top_n: int) -> None:
    """`--top-n 0` silently became RERANK_TOP_N and -3 reached the stages; the DAG param allows 1..1000."""
    with pytest.raises(ConfigError, match="top_n"):
        nightly.run_nightly(_settings(db_url, tmp_path), as_of=AS_OF, top_n=top_n)
    assert recorded == {}
    assert _runs(db_url) == []


def test_one_stage_of_a_run_uses_that_runs_params(db_url: str, tmp_path: Path, recorded: dict) -> None:
    """`rerank run nightly --stage score_users` re-scores with the run's own user subset and list length:
    quality_gate and publish read the subset from the run's params, so scoring must use the same one."""
    s = _settings(db_url, tmp_path, top_n=50)
    nightly.run_nightly(s, as_of=AS_OF, user_ids=[3, 4], top_n=7)
    assert recorded["score_users"]["user_ids"] == [3, 4] and recorded["score_users"]["top_n"] == 7
    recorded.clear()
    nightly.run_nightly(s, as_of=AS_OF, only_stage="score_users")
    assert list(recorded) == ["score_users"]
    assert list(recorded["score_users"]["user_ids"]) == [3, 4]
    assert recorded["score_users"]["top_n"] == 7


def test_one_stage_with_other_params_than_its_run_is_refused(db_url: str, tmp_path: Path, recorded: dict) -> None:
    """Scoring other users or another length than the run's would mix two runs' inputs in one publication."""
    s = _settings(db_url, tmp_path)
    nightly.run_nightly(s, as_of=AS_OF, user_ids=[3, 4], top_n=7)
    recorded.clear()
    with pytest.raises(ConfigError, match="user_ids"):
        nightly.run_nightly(s, as_of=AS_OF, only_stage="score_users", user_ids=[5])
    with pytest.raises(ConfigError, match="top_n"):
        nightly.run_nightly(s, as_of=AS_OF, only_stage="score_users", top_n=9)
    assert recorded == {}
    # the same values as the run's are fine
    nightly.run_nightly(s, as_of=AS_OF, only_stage="score_users", user_ids=[4, 3], top_n=7)
    assert recorded["score_users"]["top_n"] == 7


@pytest.mark.parametrize("bad", [
    {"rerank": {"mmr_lamda": 0.5}},
    {"rerank": {"mmr_lambda": 3.0}},
    {"variants": {"b": {"weight": 1.0, "fusion": "sum"}}},
    {"gate": {"max_empty": 1}},
])
def test_bad_rerank_variant_and_gate_settings_fail_before_any_stage(db_url: str, tmp_path: Path, recorded: dict,
                                                                    bad: dict) -> None:
    """These dicts are validated only where they are used (score_users in a Dask worker, quality_gate), i.e.
    after hours of extraction and training; the run must refuse them before its first stage."""
    with pytest.raises(ConfigError):
        nightly.run_nightly(_settings(db_url, tmp_path, **bad), as_of=AS_OF)
    assert recorded == {}
    assert _runs(db_url) == []


def test_dag_begin_refuses_bad_rerank_settings(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG's first task (nightly.begin, settings from the environment) refuses them too."""
    monkeypatch.setenv("RERANK_RERANK", '{"mmr_lamda": 0.5}')
    with pytest.raises(ConfigError, match="mmr_lamda"):
        nightly.begin(db_url, str(tmp_path), AS_OF, params={"as_of": AS_OF.isoformat()})
    assert _runs(db_url) == []


def test_stage_without_its_inputs_fails_with_a_clear_error(db_url: str, tmp_path: Path) -> None:
    """A stage run on its own before the stages it reads from: one clear PipelineError, the run 'failed'."""
    s = _settings(db_url, tmp_path)
    with pytest.raises(InputDataError, match="quality_gate"):
        nightly.run_nightly(s, as_of=AS_OF, only_stage="quality_gate")
    assert _runs(db_url) == [("nightly_20261124T0000", "failed")]


def test_cli_stage_without_inputs_prints_one_line(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    env.update({"RERANK_DATABASE_URL": db_url, "RERANK_HOME": str(tmp_path), "RERANK_DASK_WORKERS": "1"})
    proc = subprocess.run([RERANK, "run", "nightly", "--as-of", "2026-11-24", "--stage", "publish"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    # (Dask may add a "Port 8787 is already in use" warning on a busy machine: only our own line is checked.)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "stage publish" in errors[0], proc.stderr[-2000:]


# --- run bookkeeping -----------------------------------------------------------------------------------
def test_success_after_a_failure_clears_the_error(db_url: str) -> None:
    """A run that failed, then was completed (a cleared DAG task, or `--stage`), reads as success only."""
    rid = runs.start_run(db_url, dag="rerank_nightly", as_of=AS_OF, params={})
    runs.finish_run(db_url, rid, "failed", "score_users: worker lost")
    assert runs.run_stats(db_url, rid)["error"] == "score_users: worker lost"
    runs.finish_run(db_url, rid, "success")
    stats = runs.run_stats(db_url, rid)
    assert stats["status"] == "success"
    assert "error" not in stats


# --- settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["yesterday", "1990-13-01", ""])
def test_bad_ts_floor_is_refused_when_settings_load(value: str) -> None:
    """RERANK_TS_FLOOR goes into the validation SQL as a timestamptz literal: a bad one failed only in the
    validate stage, with a database traceback."""
    with pytest.raises(ConfigError, match="RERANK_TS_FLOOR"):
        load_settings(ts_floor=value)


@pytest.mark.parametrize("value", ["1990-01-01", "2000-01-01T00:00:00+00:00", "2000-01-01 12:00"])
def test_good_ts_floor_is_accepted(value: str) -> None:
    assert load_settings(ts_floor=value).ts_floor == value


def test_object_store_home_is_not_silently_a_local_folder() -> None:
    with pytest.raises(ConfigError, match="RERANK_HOME"):
        load_settings(home="s3://bucket/rerank")
