"""A private, migrated database on a server, dropped afterwards: what the evaluation works in (never the
shop's own database)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


def with_database(url: str, name: str) -> str:
    """``url`` pointing at the database ``name`` on the same server."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextmanager
def scratch_database(server_url: str, prefix: str = "rerank_eval") -> Iterator[str]:
    """Create ``<prefix>_<random>`` on ``server_url``'s server, migrate it, yield its URL, drop it on exit."""
    import psycopg2
    from psycopg2 import sql

    from pipeline.db import migrate
    from pipeline.db.engine import sa_engine

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = with_database(server_url, "postgres")

    def run(statement: sql.Composable) -> None:
        conn = psycopg2.connect(admin)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    run(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(server_url, name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        sa_engine.cache_clear()
        run(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
