"""Login roles (``rerank db migrate --create-logins``): the app login reads the two views and nothing else,
the pipeline login publishes (and runs a nightly) but cannot create roles or databases."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest
from publish_common import load_items, synthetic_recs

from pipeline.db.engine import connect
from pipeline.db.logins import APP_LOGIN, PIPELINE_LOGIN, create_logins, login_url, secret_path
from pipeline.publish import publish_run

pytestmark = pytest.mark.integration
RERANK = str(Path(sys.executable).with_name("rerank"))
DAY = datetime(2026, 11, 23, tzinfo=UTC)
#: What the app login (rerank_reader) may read: the lists, similar items and the A/B readout per arm and day.
VIEWS = {"recsys.user_recommendations", "recsys.similar_items", "recsys.ab_daily"}


@pytest.fixture
def logins(db_url: str, tmp_path: Path) -> dict[str, str]:
    """The two logins' URLs on ``db_url`` (passwords generated into tmp_path/secrets)."""
    made = create_logins(db_url, tmp_path)
    return {login.name: login_url(db_url, login) for login in made}


def _relations(url: str) -> list[str]:
    """Every table, view, materialized view and sequence of the project's schemas (seen by the owner)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT n.nspname || '.' || c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname IN ('shop', 'recsys', 'datagen', 'public') AND c.relkind IN ('r','v','m','p','S') "
                    "ORDER BY 1")
        return [r[0] for r in cur.fetchall()]


def test_passwords_are_kept_0600_and_reused(db_url: str, tmp_path: Path, logins: dict[str, str]) -> None:
    for name in (PIPELINE_LOGIN, APP_LOGIN):
        path = secret_path(tmp_path, name)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.read_text().strip() in logins[name]
    again = {login.name: login_url(db_url, login) for login in create_logins(db_url, tmp_path)}
    assert again == logins
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(login_url(db_url, APP_LOGIN, "wrong")).close()


def test_the_app_login_reads_its_views_and_nothing_else(db_url: str, logins: dict[str, str]) -> None:
    load_items(db_url, 50)
    publish_run(logins[PIPELINE_LOGIN], "nightly_20261123T0000",
                synthetic_recs("day1", DAY, users=10, items=50, top=5), None, generated_at=DAY)
    relations = _relations(db_url)
    assert set(relations) >= VIEWS and "shop.events" in relations and "recsys.runs" in relations
    app = psycopg2.connect(logins[APP_LOGIN])
    app.autocommit = True
    try:
        with app.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (APP_LOGIN,)
            cur.execute("SELECT count(*) FROM recsys.user_recommendations")
            assert cur.fetchone() == (50,)
            cur.execute("SELECT count(*) FROM recsys.similar_items")
            assert cur.fetchone() == (0,)
            refused = []
            for rel in relations:
                if rel in VIEWS:
                    continue
                try:
                    cur.execute(f"SELECT 1 FROM {rel} LIMIT 1")
                except psycopg2.errors.InsufficientPrivilege:
                    refused.append(rel)
            assert refused == [r for r in relations if r not in VIEWS]
            for stmt in ["TRUNCATE recsys.runs", "UPDATE shop.items SET title = 'x'",
                         "CREATE TABLE recsys.mine (x int)", "CREATE TABLE public.mine (x int)", "CREATE ROLE sneaky"]:
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(stmt)
    finally:
        app.close()


def test_the_pipeline_login_cannot_create_roles_or_databases(logins: dict[str, str]) -> None:
    conn = psycopg2.connect(logins[PIPELINE_LOGIN])
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, False, False)
            cur.execute("SELECT pg_has_role(current_user, 'rerank_writer', 'MEMBER')")
            assert cur.fetchone() == (True,)
            for stmt in ["CREATE ROLE sneaky", "CREATE ROLE sneaky LOGIN SUPERUSER", "CREATE DATABASE sneaky",
                         "ALTER ROLE rerank_pipeline CREATEROLE", "GRANT rerank_writer TO rerank_app"]:
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(stmt)
    finally:
        conn.close()


def test_cli_creates_the_logins_and_prints_their_urls(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    env.update(RERANK_DATABASE_URL=db_url, RERANK_HOME=str(tmp_path), RERANK_APP_DB_PASSWORD="app-secret-from-env")
    proc = subprocess.run([RERANK, "db", "migrate", "--create-logins"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"login {PIPELINE_LOGIN} (member of rerank_writer): password in {tmp_path}" in proc.stdout
    assert f"login {APP_LOGIN} (member of rerank_reader): password from the settings" in proc.stdout
    assert "app-secret-from-env" not in proc.stdout
    assert not secret_path(tmp_path, APP_LOGIN).exists()
    for login, user in [("app", APP_LOGIN), ("pipeline", PIPELINE_LOGIN)]:
        url = subprocess.run([RERANK, "db", "url", "--login", login], capture_output=True, text=True, env=env,
                             timeout=120, check=True).stdout.strip().splitlines()[-1]
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == (user,)
        conn.close()
    bad = subprocess.run([RERANK, "db", "url", "--login", "root"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and "root" in bad.stderr


def test_a_nightly_runs_as_the_pipeline_login(db_url: str, logins: dict[str, str], rerank_env: dict[str, str]) -> None:
    """The whole nightly (validate, extract, features, recall, ranker, gate, publish) with only rerank_writer's
    rights; the shop itself is written by its owner, as in a deployment."""
    from pipeline.datagen import generate_shop
    from pipeline.nightly import run_nightly
    from pipeline.settings import load_settings

    generate_shop(db_url, users=200, items=80, days=10, seed=3, end=DAY)
    settings = load_settings(database_url=logins[PIPELINE_LOGIN], home=rerank_env["RERANK_HOME"], dask_workers=1,
                             top_n=10, candidates=40)
    res = run_nightly(settings, as_of=DAY)
    with connect(logins[APP_LOGIN]) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT user_id), min(run_id), max(run_id) FROM recsys.user_recommendations")
        users, first, last = cur.fetchone()
    assert users > 0 and first == last == res["run_id"]
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM recsys.runs WHERE run_id = %s", (res["run_id"],))
        assert cur.fetchone() == ("success",)
