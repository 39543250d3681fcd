"""Shared fixtures: a throwaway PostgreSQL for the whole session (never a user's data).

With ``RERANK_TEST_DATABASE_URL`` the suite uses that server instead (it needs CREATEDB). Each test that
asks for ``db_url`` gets a fresh database cloned from a migrated template, so tests never see each other.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_DB = "rerank_test_template"
#: Test runs train the ranker on few windows and epochs: behaviour is what the suite checks, not quality.
SMALL_RUN_ENV = {"RERANK_RANK_WINDOWS": "2", "RERANK_RANK_MAX_EPOCHS": "3", "RERANK_EMBEDDING_METHOD": "tfidf"}


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _admin(url: str):
    import psycopg2

    conn = psycopg2.connect(_with_db(url, "postgres"))
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a PostgreSQL server for the test session."""
    given = os.environ.get("RERANK_TEST_DATABASE_URL")
    if given:
        yield given
        return
    # A private 0700 folder: as root the server's user cannot reach it, so its data goes to a folder of its
    # own (pipeline.db.embedded.SERVER_OWNED_BASE), removed below with the home.
    import shutil
    import tempfile

    from pipeline.db.embedded import EmbeddedPostgres

    home = Path(tempfile.mkdtemp(prefix="rerank-test-pg-"))
    pg = EmbeddedPostgres(home)
    url = pg.up()
    try:
        yield url
    finally:
        pg.down()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(pg.root, ignore_errors=True)  # as root, outside ``home`` (a 0700 folder)


@pytest.fixture(scope="session")
def template_url(pg_server: str) -> str:
    from pipeline.db import migrate

    conn = _admin(pg_server)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    conn.close()
    url = _with_db(pg_server, TEMPLATE_DB)
    migrate.upgrade(url)
    from pipeline.db.engine import sa_engine

    sa_engine(url).dispose()
    return url


@contextmanager
def throwaway_database(server_url: str, *, prefix: str = "t", template: str | None = TEMPLATE_DB) -> Iterator[str]:
    """A database of its own on ``server_url`` (a copy of the migrated template, or empty with
    ``template=None``), dropped on exit; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = _admin(server_url)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield _with_db(server_url, name)
    finally:
        from pipeline.db.engine import sa_engine

        sa_engine.cache_clear()
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture(scope="session")
def new_database(pg_server: str, template_url: str):  # noqa: ANN201 - the context manager factory
    """``new_database(prefix=..., template=...)``: :func:`throwaway_database` on the suite's server."""
    return lambda **kw: throwaway_database(pg_server, **kw)


@pytest.fixture
def db_url(pg_server: str, template_url: str) -> Iterator[str]:
    """A fresh, migrated database for one test (dropped afterwards)."""
    with throwaway_database(pg_server) as url:
        yield url


@pytest.fixture
def rerank_env(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for running pipeline code against ``db_url`` with a private RERANK_HOME."""
    env = {"RERANK_DATABASE_URL": db_url, "RERANK_HOME": str(tmp_path / "home"), **SMALL_RUN_ENV}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public datasets folder; tests that need it skip cleanly when it is absent."""
    path = Path(os.environ.get("RERANK_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.exists():
        pytest.skip(f"public datasets not found at {path} (set RERANK_SHARED_DATA)")
    return path
