"""Postgres access: the URL resolution, connections, COPY helpers, the migration runner."""

from pipeline.db.engine import connect, database_url, sa_engine

__all__ = ["connect", "database_url", "sa_engine"]
