"""Run the Alembic migrations under ``sql/`` against a URL."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import MigrationError

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def _config(url: str):  # noqa: ANN202
    from alembic.config import Config

    cfg = Config(str(SQL_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(SQL_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("postgresql://", "postgresql+psycopg2://", 1).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> str:
    """Migrate to ``revision``; return the revision the database is at afterwards."""
    from alembic import command

    if not SQL_DIR.exists():
        raise MigrationError(f"migrations not found at {SQL_DIR}", "install the project from its source tree")
    try:
        command.upgrade(_config(url), revision)
    except Exception as exc:  # alembic/sqlalchemy raise many types; one clear error out
        raise MigrationError(f"migration to {revision} failed: {exc}", "the database URL and its privileges") from exc
    return current(url) or ""


def head() -> str:
    """The newest revision under sql/versions."""
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_config("postgresql://unused/")).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"the migrations have {len(heads)} heads: {heads}", "each down_revision in sql/versions")
    return heads[0]


def current(url: str) -> str | None:
    """The revision the database is at (None when never migrated)."""
    import sqlalchemy as sa

    from pipeline.db.engine import sa_engine

    with sa_engine(url).connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version", schema="public"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM public.alembic_version").scalar()


def require_schema(url: str) -> None:
    """Fail with a clear message when the database has not been migrated."""
    if current(url) is None:
        raise MigrationError("the database has no ecom-rerank schema", "run `rerank db migrate`")
