"""The embedded server, the migrations and the reader role against a real PostgreSQL."""

from __future__ import annotations

import psycopg2
import pytest

from pipeline.db import migrate
from pipeline.db.engine import connect

pytestmark = pytest.mark.integration


def test_migration_creates_contract(db_url: str) -> None:
    assert migrate.current(db_url) == migrate.head()
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('shop', 'recsys') ORDER BY 1"
        )
        names = {r[0] for r in cur.fetchall()}
    for t in ["shop.users", "shop.items", "shop.events", "recsys.runs", "recsys.models", "recsys.quarantine",
              "recsys.refresh_state", "recsys.user_recommendations", "recsys.similar_items"]:
        assert t in names


def test_migrate_twice_is_a_no_op(db_url: str) -> None:
    assert migrate.upgrade(db_url) == migrate.head()
    assert migrate.upgrade(db_url) == migrate.head()


def test_migrations_form_one_chain_and_downgrade_cleanly(pg_server: str) -> None:
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    admin = psycopg2.connect(urlunsplit(urlsplit(pg_server)._replace(path="/postgres")))
    admin.autocommit = True
    name = f"mig_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(pg_server)._replace(path="/" + name))
    try:
        assert migrate.upgrade(url) == migrate.head()
        from alembic import command

        command.downgrade(migrate._config(url), "base")
        assert migrate.current(url) is None
        assert migrate.upgrade(url) == migrate.head()
    finally:
        from pipeline.db.engine import sa_engine

        sa_engine.cache_clear()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_reader_sees_only_the_two_views(db_url: str) -> None:
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE rerank_reader")
        cur.execute("SELECT count(*) FROM recsys.user_recommendations")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT count(*) FROM recsys.similar_items")
        assert cur.fetchone() == (0,)
        for table in ["shop.events", "recsys.runs", "recsys.recs_bootstrap"]:
            cur.execute("SAVEPOINT s")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(f"SELECT 1 FROM {table}")
            cur.execute("ROLLBACK TO SAVEPOINT s")


@pytest.mark.parametrize("factor", ["Infinity", "NaN"])
def test_a_rule_factor_must_be_finite(db_url: str, factor: str) -> None:
    # Postgres orders NaN above every number, so "factor >= 1" alone let NaN and Infinity boosts through
    with pytest.raises(psycopg2.errors.CheckViolation), connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO recsys.rules (kind, category, factor) VALUES ('boost', 'A', %s::float8)", (factor,))
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO recsys.rules (kind, category, factor) VALUES ('boost', 'A', 2.0) RETURNING rule_id")
        cur.execute("DELETE FROM recsys.rules WHERE rule_id = %s", (cur.fetchone()[0],))


def test_two_concurrent_upgrades_from_scratch_both_end_at_head(new_database) -> None:  # noqa: ANN001
    """The advisory lock holds across every migration of one upgrade: a second process waits for the whole
    upgrade, not for the first migration only (then it would re-run the later ones beside the first)."""
    import subprocess
    import sys

    code = "import sys; from pipeline.db import migrate; migrate.upgrade(sys.argv[1])"
    with new_database(prefix="mig", template=None) as url:  # processes, as in life (one Alembic context each)
        procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
        assert migrate.current(url) == migrate.head()


def test_an_evaluation_leaves_the_server_up_while_another_evaluations_scratch_database_exists(
        pg_server: str) -> None:
    """`rerank evaluate` stops an embedded server it started only when no other evaluation's scratch database
    is on it (two evaluations at once used to stop each other's server mid-run)."""
    from pipeline.db.scratch import scratch_database, server_in_use

    prefix = "rerank_evtest"  # not the evaluator's own prefix: other tests' evaluations do not interfere
    assert not server_in_use(pg_server, prefix=prefix)
    with scratch_database(pg_server, prefix=prefix):
        assert server_in_use(pg_server, prefix=prefix)
    assert not server_in_use(pg_server, prefix=prefix)
