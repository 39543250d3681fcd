"""The pipeline's role owns what it publishes; publications remember their oldest rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

- ``rerank_writer`` (ARCHITECTURE.md: the pipeline's role) owns the two read views and every kept run table.
  A pipeline logged in as ``rerank_writer`` could not publish before: ``CREATE OR REPLACE VIEW`` needs the
  view's owner, and the views belonged to whoever migrated. Each swap keeps the owner, and each new run table
  is handed to ``rerank_writer`` (publish/swap.py), since the view reads it with its owner's rights.
- Grants on the tables later migrations created (``GRANT ... ON ALL TABLES`` in 0001 covered only 0001's).
- ``recsys.publications.oldest_at``: the oldest ``generated_at`` among a publication's rows. A user-subset
  run republishes the other users' live rows unchanged; the view compares each user's near-real-time rows
  with that user's own nightly rows, and keeps the overlay rows newer than ``oldest_at`` (NULL: as old as
  ``generated_at``, as every publication before this revision).
- ``recsys.rules.factor`` must be finite: Postgres orders NaN above every number, so ``factor >= 1`` let
  NaN and Infinity through (an infinite boost published ``score = inf``). NOT VALID, as 0003's check.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE recsys.publications ADD COLUMN IF NOT EXISTS oldest_at timestamptz;
        ALTER TABLE recsys.rules ADD CONSTRAINT rules_factor_finite CHECK (factor < 'Infinity'::float8) NOT VALID;
        GRANT SELECT ON ALL TABLES IN SCHEMA shop TO rerank_writer;
        GRANT ALL ON ALL TABLES IN SCHEMA recsys TO rerank_writer;
        GRANT ALL ON ALL SEQUENCES IN SCHEMA recsys TO rerank_writer;
        ALTER VIEW recsys.user_recommendations OWNER TO rerank_writer;
        ALTER VIEW recsys.similar_items OWNER TO rerank_writer;
        DO $$
        DECLARE t text;
        BEGIN
            FOR t IN SELECT recs_table FROM recsys.publications
                     UNION SELECT similar_table FROM recsys.publications WHERE similar_table IS NOT NULL
            LOOP
                IF to_regclass(format('recsys.%I', t)) IS NOT NULL THEN
                    EXECUTE format('ALTER TABLE recsys.%I OWNER TO rerank_writer', t);
                END IF;
            END LOOP;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        ALTER VIEW recsys.user_recommendations OWNER TO CURRENT_USER;
        ALTER VIEW recsys.similar_items OWNER TO CURRENT_USER;
        ALTER TABLE recsys.publications DROP COLUMN IF EXISTS oldest_at;
        ALTER TABLE recsys.rules DROP CONSTRAINT IF EXISTS rules_factor_finite;
        """
    )
