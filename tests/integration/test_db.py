"""The embedded server, the migrations and the reader role against a real PostgreSQL."""

from __future__ import annotations

import psycopg2
import pytest

from pipeline.db import migrate
from pipeline.db.engine import connect

pytestmark = pytest.mark.integration


def test_migration_creates_contract(db_url: str) -> None:
    assert migrate.current(db_url) == "0001"
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
    assert migrate.upgrade(db_url) == "0001"
    assert migrate.upgrade(db_url) == "0001"


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
