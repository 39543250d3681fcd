"""Alembic environment: online migrations only, URL passed in by pipeline.db.migrate."""

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = config.get_main_option("sqlalchemy.url")


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
        with context.begin_transaction():
            # Two processes migrating at once must not race: serialise on an advisory lock.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(727100)")
            context.run_migrations()


run_migrations_online()
