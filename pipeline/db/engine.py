"""Connections: one place that turns settings into a URL and hands out psycopg2 / SQLAlchemy handles."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import psycopg2
import psycopg2.extensions

from pipeline.errors import DatabaseError
from pipeline.settings import Settings, get_settings


def database_url(settings: Settings | None = None, *, start: bool = True) -> str:
    """The shop database's libpq URI: ``RERANK_DATABASE_URL``, else the embedded server (started if asked)."""
    settings = settings or get_settings()
    if settings.database_url:
        return settings.database_url.replace("postgresql+psycopg2://", "postgresql://")
    from pipeline.db.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(settings.home_path, settings.pg_port)
    return pg.up() if start else pg.url()


@contextmanager
def connect(url: str, *, autocommit: bool = False) -> Iterator[psycopg2.extensions.connection]:
    """A psycopg2 connection that commits on success and rolls back on error."""
    try:
        conn = psycopg2.connect(url, application_name="ecom-rerank")
    except psycopg2.OperationalError as exc:
        raise DatabaseError(f"cannot connect to {_redact(url)}: {str(exc).strip()}",
                            "RERANK_DATABASE_URL, or `rerank db up` for the embedded server") from exc
    conn.autocommit = autocommit
    try:
        yield conn
        if not autocommit:
            conn.commit()
    except BaseException:
        if not autocommit and not conn.closed:
            conn.rollback()
        raise
    finally:
        conn.close()


@lru_cache(maxsize=8)
def sa_engine(url: str):  # noqa: ANN201 - sqlalchemy.Engine, imported lazily
    """A pooled SQLAlchemy engine (for pandas reads, GX and Alembic)."""
    from sqlalchemy import create_engine

    return create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1), pool_pre_ping=True)


def without_password(url: str) -> str:
    """``url`` without its password: what travels to remote Dask workers as a task argument."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.netloc.rsplit('@', 1)[0].split(':', 1)[0]}@{host}"))


def with_local_password(url: str) -> str:
    """On a worker: give a password-less ``url`` the password of this process's own ``RERANK_DATABASE_URL``
    when it names the same user, host and database (else libpq's ``PGPASSWORD`` / ``.pgpass`` apply)."""
    import os
    from urllib.parse import urlsplit

    given = urlsplit(url)
    local = os.environ.get("RERANK_DATABASE_URL", "").replace("postgresql+psycopg2://", "postgresql://")
    if given.password is not None or not local:
        return url
    mine = urlsplit(local)
    same = (mine.username, mine.hostname, mine.port, mine.path) == (given.username, given.hostname, given.port,
                                                                     given.path)
    return local.split("?", 1)[0] + (f"?{given.query}" if given.query else "") if same and mine.password else url


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
