"""Validation that does not grow with the shop: a high-water mark for events, and each bad row quarantined once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

``recsys.validation_state``: per source table, the highest ``event_id`` the last successful validation covered
(``high_water``) and when the last full pass ran (``last_full_at``); a nightly validates only the events above
the mark, with a full pass every ``RERANK_VALIDATE_FULL_EVERY_DAYS``. ``high_water_row`` (md5 of the event at the
mark) tells a replaced shop (re-import, regenerate: ids start afresh) from a grown one: then a full pass runs.

``recsys.quarantine.row_key``: md5 of the whole quarantined row (null for the importer's refused lines). A
unique index on ``(source, row_key)`` lets the validation insert ``ON CONFLICT DO NOTHING``, so a bad row is
quarantined once, not once per night. Existing validation rows are keyed and their repeats removed (the
earliest copy stays).
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS recsys.validation_state (
            source text PRIMARY KEY,
            high_water bigint,
            high_water_row text,
            last_full_at timestamptz,
            run_id text,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        GRANT ALL ON recsys.validation_state TO rerank_writer;
        ALTER TABLE recsys.quarantine ADD COLUMN IF NOT EXISTS row_key text;
        UPDATE recsys.quarantine SET row_key = md5(raw::text) WHERE source LIKE 'shop.%' AND row_key IS NULL;
        DELETE FROM recsys.quarantine q USING recsys.quarantine k
         WHERE q.source = k.source AND q.row_key = k.row_key AND q.quarantine_id > k.quarantine_id;
        CREATE UNIQUE INDEX IF NOT EXISTS quarantine_once ON recsys.quarantine (source, row_key)
         WHERE row_key IS NOT NULL;
        CREATE INDEX IF NOT EXISTS quarantine_created ON recsys.quarantine (created_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX IF EXISTS recsys.quarantine_created;
        DROP INDEX IF EXISTS recsys.quarantine_once;
        ALTER TABLE recsys.quarantine DROP COLUMN IF EXISTS row_key;
        DROP TABLE IF EXISTS recsys.validation_state;
        """
    )
