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


def server_in_use(server_url: str, prefix: str = "rerank_eval") -> bool:
    """Whether another ``<prefix>_*`` scratch database exists on the server: another evaluation is between its
    create and its drop. A caller that started an embedded server stops it only when this is False, so a
    second evaluation on the same server keeps its database (the two stopped each other's server before)."""
    import psycopg2

    conn = psycopg2.connect(with_database(server_url, "postgres"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_database WHERE starts_with(datname, %s)", (prefix + "_",))
            return int(cur.fetchone()[0]) > 0
    finally:
        conn.close()
