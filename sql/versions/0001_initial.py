"""Initial schema: the shop input contract, the recsys output contract, roles and read views.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parents[1] / "views"

RECS_COLUMNS = """
    user_id bigint NOT NULL,
    rank int NOT NULL,
    item_id bigint NOT NULL,
    score double precision NOT NULL,
    reason text NOT NULL,
    anchor_item_id bigint,
    source text NOT NULL,
    variant text NOT NULL DEFAULT 'control',
    model_version text NOT NULL,
    run_id text NOT NULL,
    generated_at timestamptz NOT NULL
"""


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS shop")
    op.execute("CREATE SCHEMA IF NOT EXISTS recsys")
    op.execute("CREATE SCHEMA IF NOT EXISTS datagen")

    # --- input contract -------------------------------------------------------------------------------
    op.execute(
        """
        CREATE TABLE shop.users (
            user_id bigint PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now(),
            attrs jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE TABLE shop.items (
            item_id bigint PRIMARY KEY,
            title text NOT NULL,
            description text,
            category text NOT NULL,
            brand text,
            price numeric(12, 2),
            in_stock boolean NOT NULL DEFAULT true,
            visible boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            image_path text,
            attrs jsonb NOT NULL DEFAULT '{}'::jsonb
        );
        CREATE TABLE shop.events (
            event_id bigint PRIMARY KEY,
            user_id bigint NOT NULL,
            item_id bigint,
            event_type text NOT NULL,
            query text,
            session_id text,
            quantity int NOT NULL DEFAULT 1,
            ts timestamptz NOT NULL
        );
        CREATE INDEX events_user_ts ON shop.events (user_id, ts);
        CREATE INDEX events_ts ON shop.events (ts);
        CREATE INDEX events_item ON shop.events (item_id);
        CREATE INDEX events_purchases ON shop.events (user_id, item_id, ts) WHERE event_type = 'purchase';
        """
    )

    # --- generator ground truth (side tables, never read by the pipeline) -----------------------------
    op.execute(
        """
        CREATE TABLE datagen.user_tastes (
            user_id bigint NOT NULL,
            dimension text NOT NULL,
            key text NOT NULL,
            weight double precision NOT NULL,
            PRIMARY KEY (user_id, dimension, key)
        );
        """
    )

    # --- output contract ------------------------------------------------------------------------------
    op.execute(
        f"""
        CREATE TABLE recsys.runs (
            run_id text PRIMARY KEY,
            dag text NOT NULL,
            as_of timestamptz NOT NULL,
            status text NOT NULL CHECK (status IN ('running', 'success', 'failed', 'gated')),
            started_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz,
            stats jsonb NOT NULL DEFAULT '{{}}'::jsonb
        );
        CREATE TABLE recsys.models (
            model_version text PRIMARY KEY,
            trained_at timestamptz NOT NULL DEFAULT now(),
            metrics jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            artifact_uri text NOT NULL,
            status text NOT NULL CHECK (status IN ('candidate', 'champion', 'retired')),
            run_id text
        );
        CREATE UNIQUE INDEX models_one_champion ON recsys.models (status) WHERE status = 'champion';
        CREATE TABLE recsys.quarantine (
            quarantine_id bigserial PRIMARY KEY,
            source text NOT NULL,
            raw jsonb NOT NULL,
            reason text NOT NULL,
            run_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX quarantine_run ON recsys.quarantine (run_id, source);
        CREATE TABLE recsys.refresh_state (
            name text PRIMARY KEY,
            last_event_id bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO recsys.refresh_state (name, last_event_id) VALUES ('default', 0);
        CREATE TABLE recsys.rules (
            rule_id bigserial PRIMARY KEY,
            kind text NOT NULL CHECK (kind IN ('boost', 'bury', 'exclude')),
            item_id bigint,
            category text,
            brand text,
            factor double precision NOT NULL DEFAULT 1.0,
            starts_at timestamptz,
            ends_at timestamptz,
            note text
        );
        -- Every publication: which run table is (or was) behind the read view.
        CREATE TABLE recsys.publications (
            publication_id bigserial PRIMARY KEY,
            run_id text NOT NULL,
            recs_table text NOT NULL UNIQUE,
            similar_table text,
            generated_at timestamptz NOT NULL,
            published_at timestamptz NOT NULL DEFAULT now(),
            live boolean NOT NULL DEFAULT false,
            stats jsonb NOT NULL DEFAULT '{{}}'::jsonb
        );
        CREATE UNIQUE INDEX publications_one_live ON recsys.publications (live) WHERE live;
        -- Near-real-time overlay rows (one list per user, replaced whole by the refresh).
        CREATE TABLE recsys.recs_realtime ({RECS_COLUMNS}, PRIMARY KEY (user_id, rank));
        -- Empty tables the read views point at before the first publication.
        CREATE TABLE recsys.recs_bootstrap ({RECS_COLUMNS});
        CREATE TABLE recsys.similar_bootstrap (
            item_id bigint NOT NULL, rank int NOT NULL, similar_item_id bigint NOT NULL,
            score double precision NOT NULL, method text NOT NULL
        );
        """
    )
    op.execute(
        (VIEWS / "user_recommendations.sql")
        .read_text()
        .replace("{recs_table}", "recsys.recs_bootstrap")
        .replace("{generated_at}", "'-infinity'::timestamptz")
    )
    op.execute((VIEWS / "similar_items.sql").read_text().replace("{similar_table}", "recsys.similar_bootstrap"))

    # --- roles (cluster-wide, so created only when absent) --------------------------------------------
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rerank_reader') THEN
                CREATE ROLE rerank_reader NOLOGIN;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rerank_writer') THEN
                CREATE ROLE rerank_writer NOLOGIN;
            END IF;
        END $$;
        GRANT USAGE ON SCHEMA recsys TO rerank_reader;
        GRANT SELECT ON recsys.user_recommendations, recsys.similar_items TO rerank_reader;
        GRANT USAGE ON SCHEMA shop, recsys, datagen TO rerank_writer;
        GRANT SELECT ON ALL TABLES IN SCHEMA shop TO rerank_writer;
        GRANT ALL ON ALL TABLES IN SCHEMA recsys TO rerank_writer;
        GRANT ALL ON ALL SEQUENCES IN SCHEMA recsys TO rerank_writer;
        GRANT CREATE ON SCHEMA recsys TO rerank_writer;
        """
    )


def downgrade() -> None:
    op.execute("DROP SCHEMA IF EXISTS recsys CASCADE")
    op.execute("DROP SCHEMA IF EXISTS datagen CASCADE")
    op.execute("DROP SCHEMA IF EXISTS shop CASCADE")
