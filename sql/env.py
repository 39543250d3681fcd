"""Alembic environment: online migrations only, URL passed in by pipeline.db.migrate."""

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = config.get_main_option("sqlalchemy.url")
LOCK_KEY = 727100


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Two processes migrating at once must not race: a session-level advisory lock held across every
        # migration of this upgrade (each runs in its own transaction, which would release a transaction lock
        # after the first), taken before the current revision is read.
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({LOCK_KEY})")
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if connection.in_transaction():
                connection.rollback()
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({LOCK_KEY})")
            connection.commit()


run_migrations_online()
