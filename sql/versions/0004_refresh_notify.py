"""Near-real-time refresh: NOTIFY on new shop events, a batch log, an index for overlay cleanup.

The trigger is statement-level (one NOTIFY per INSERT statement, not per row) and NOTIFY is delivered at
commit, so a woken refresher always sees the rows. It is created only when ``shop.events`` is a table; a
shop that maps its events through a view gets the refresher's polling fallback instead.

``recsys.refresh_batches`` records every committed refresh batch in the same transaction as its overlay
rows and the watermark: the event-id ranges are contiguous, so "each event processed exactly once" is a
query, not a belief.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CHANNEL = "rerank_events"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS recsys.refresh_batches (
            batch_id bigserial PRIMARY KEY,
            name text NOT NULL,
            from_event_id bigint NOT NULL,   -- exclusive: the watermark before the batch
            to_event_id bigint NOT NULL,     -- inclusive: the watermark after it
            events int NOT NULL,             -- clean events processed
            skipped int NOT NULL,            -- rows that failed the validation rules (never processed)
            users int NOT NULL,
            rows int NOT NULL,
            started_at timestamptz NOT NULL,
            committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            CHECK (to_event_id > from_event_id)
        );
        CREATE INDEX IF NOT EXISTS refresh_batches_name ON recsys.refresh_batches (name, to_event_id);
        CREATE INDEX IF NOT EXISTS recs_realtime_generated_at ON recsys.recs_realtime (generated_at);
        GRANT ALL ON recsys.refresh_batches TO rerank_writer;
        GRANT ALL ON SEQUENCE recsys.refresh_batches_batch_id_seq TO rerank_writer;
        """
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION recsys.notify_new_events() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END $$;
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE n.nspname = 'shop' AND c.relname = 'events' AND c.relkind IN ('r', 'p')) THEN
                DROP TRIGGER IF EXISTS events_notify_refresh ON shop.events;
                CREATE TRIGGER events_notify_refresh AFTER INSERT ON shop.events
                    FOR EACH STATEMENT EXECUTE FUNCTION recsys.notify_new_events();
            END IF;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS events_notify_refresh ON shop.events")
    op.execute("DROP FUNCTION IF EXISTS recsys.notify_new_events()")
    op.execute("DROP INDEX IF EXISTS recsys.recs_realtime_generated_at")
    op.execute("DROP TABLE IF EXISTS recsys.refresh_batches")
