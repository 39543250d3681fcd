"""The `rerank` command line: bad settings exit non-zero with one clear line; the main forms work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
RERANK = str(Path(sys.executable).with_name("rerank"))


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    full.update(env)
    return subprocess.run([RERANK, *args], capture_output=True, text=True, timeout=300, env=full)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["db", "url"], {"RERANK_DATABASE_URL": "mysql://x"}, "RERANK_DATABASE_URL: Value error, not a libpq URI"),
        (["db", "url"], {"RERANK_TOP_N": "-3"}, "RERANK_TOP_N: Input should be greater than or equal to 1"),
        (["db", "url"], {"RERANK_TOPN": "3"}, "unknown setting RERANK_TOPN (did you mean RERANK_TOP_N?)"),
        (["generate", "--users", "-5", "--items", "10"], {}, "--users must be positive, got -5"),
        (["run", "nightly", "--as-of", "yesterday-ish"], {}, "as_of 'yesterday-ish' is not an ISO date"),
    ],
)
def test_bad_settings_exit_non_zero_with_one_line(args: list[str], env: dict[str, str], message: str,
                                                   tmp_path: Path) -> None:
    proc = _run(args, RERANK_HOME=str(tmp_path), **env)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["generate", "--tier", "XL"], "--tier"),
        (["run", "nightly", "--stage", "publsh"], "--stage"),
        (["evaluate", "--format", "mvielens", "--path", "x", "--protocol", "temporal", "--out", "o"], "--format"),
        (["evaluate", "--format", "movielens", "--path", "x", "--protocol", "random", "--out", "o"], "--protocol"),
        (["import", "tsv", "x.tsv"], "FORMAT"),
    ],
)
def test_closed_choices_are_refused_before_anything_runs(args: list[str], option: str, tmp_path: Path) -> None:
    proc = _run(args, RERANK_HOME=str(tmp_path), RERANK_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert proc.returncode == 2, proc.stderr
    assert f"Invalid value for '{option}'" in proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr


def test_a_tier_in_lower_case_is_accepted(tmp_path: Path) -> None:
    # the tier passes the choice; the negative count is the next thing refused (before any database)
    proc = _run(["generate", "--tier", "s", "--users", "-5"], RERANK_HOME=str(tmp_path))
    assert proc.returncode == 1 and "Invalid value" not in proc.stderr
    assert "--users must be positive" in proc.stderr or "users must be positive" in proc.stderr


def test_generate_run_recommend_and_rollback(db_url: str, tmp_path: Path) -> None:
    env = {"RERANK_DATABASE_URL": db_url, "RERANK_HOME": str(tmp_path), "RERANK_DASK_WORKERS": "1",
           "RERANK_TOP_N": "10", "RERANK_CANDIDATES": "40", "RERANK_RANK_WINDOWS": "2", "RERANK_RANK_MAX_EPOCHS": "3",
           "RERANK_EMBEDDING_METHOD": "tfidf"}
    assert _run(["generate", "--users", "200", "--items", "80", "--days", "7"], **env).returncode == 0
    proc = _run(["db", "status"], **env)
    assert json.loads(proc.stdout)["revision"]
    for as_of in ["2026-11-23", "2026-11-24"]:
        proc = _run(["run", "nightly", "--as-of", as_of], **env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(["recommend", "5", "--json"], **env)
    rows = json.loads(proc.stdout)
    assert [r["rank"] for r in rows] == list(range(1, 11))
    assert all(r["reason"] for r in rows) and {r["run_id"] for r in rows} == {"nightly_20261124T0000"}
    proc = _run(["publish", "rollback"], **env)
    assert proc.returncode == 0 and "nightly_20261123T0000" in proc.stdout
    rows = json.loads(_run(["recommend", "5", "--json"], **env).stdout)
    assert {r["run_id"] for r in rows} == {"nightly_20261123T0000"}


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_shops_fail_at_command_level_with_one_line_and_publish_nothing(db_url: str, tmp_path: Path) -> None:
    """An empty shop, events whose items are missing, an as_of before the first event: exit 1, one line."""
    env = {"RERANK_DATABASE_URL": db_url, "RERANK_HOME": str(tmp_path), "RERANK_DASK_WORKERS": "1",
           "RERANK_EMBEDDING_METHOD": "tfidf"}
    _assert_one_line_error(_run(["run", "nightly", "--as-of", "2026-11-24"], **env), "has no items",
                           "rerank generate")
    from pipeline.db.engine import connect

    with connect(db_url) as conn, conn.cursor() as cur:  # users and events, but no catalogue
        cur.execute("INSERT INTO shop.users (user_id, created_at) VALUES (1, '2026-11-01')")
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) "
                    "VALUES (1, 1, 5, 'view', '2026-11-20')")
    proc = _run(["run", "nightly", "--as-of", "2026-11-24"], **env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _run(["generate", "--users", "50", "--items", "20", "--days", "5"], **env).returncode == 0
    _assert_one_line_error(_run(["run", "nightly", "--as-of", "2020-01-01"], **env), "no items created before")
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM recsys.publications")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM recsys.runs WHERE status = 'failed'")
        assert cur.fetchone()[0] == 2  # one run id per as_of: the re-run of 2026-11-24 failed again
