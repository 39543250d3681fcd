"""Feature tables: recsys.item_features and recsys.user_features, one row per (run_id, key).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

A run replaces its own rows (DELETE + COPY in one transaction), so re-running a date is idempotent and
older runs stay readable next to the live one. Scalar features are typed columns; nested ones (affinities,
search terms, the behaviour sequence) are jsonb.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE recsys.item_features (
            run_id text NOT NULL,
            item_id bigint NOT NULL,
            category text,
            top_category text,
            brand text,
            price double precision,
            in_stock boolean,
            visible boolean,
            created_at timestamptz,
            age_days double precision,
            price_rel_category double precision,
            activity double precision NOT NULL DEFAULT 0,
            events bigint NOT NULL DEFAULT 0,
            recent_events bigint NOT NULL DEFAULT 0,
            purchases bigint NOT NULL DEFAULT 0,
            n_view bigint NOT NULL DEFAULT 0,
            n_click bigint NOT NULL DEFAULT 0,
            n_add_to_cart bigint NOT NULL DEFAULT 0,
            n_purchase bigint NOT NULL DEFAULT 0,
            decayed_view double precision NOT NULL DEFAULT 0,
            decayed_click double precision NOT NULL DEFAULT 0,
            decayed_add_to_cart double precision NOT NULL DEFAULT 0,
            decayed_purchase double precision NOT NULL DEFAULT 0,
            ctr double precision,
            atc_rate double precision,
            cvr double precision,
            trend double precision,
            has_image boolean NOT NULL DEFAULT false,
            image jsonb,
            PRIMARY KEY (run_id, item_id)
        );
        CREATE TABLE recsys.user_features (
            run_id text NOT NULL,
            user_id bigint NOT NULL,
            recency_days double precision,
            frequency bigint NOT NULL DEFAULT 0,
            monetary double precision NOT NULL DEFAULT 0,
            n_view bigint NOT NULL DEFAULT 0,
            n_click bigint NOT NULL DEFAULT 0,
            n_add_to_cart bigint NOT NULL DEFAULT 0,
            n_purchase bigint NOT NULL DEFAULT 0,
            n_search bigint NOT NULL DEFAULT 0,
            distinct_items bigint NOT NULL DEFAULT 0,
            sessions bigint NOT NULL DEFAULT 0,
            price_mean double precision,
            price_median double precision,
            price_rel_category double precision,
            category_affinity jsonb NOT NULL DEFAULT '{}'::jsonb,
            brand_affinity jsonb NOT NULL DEFAULT '{}'::jsonb,
            search_terms jsonb NOT NULL DEFAULT '[]'::jsonb,
            sequence jsonb NOT NULL DEFAULT '[]'::jsonb,
            new_user boolean NOT NULL DEFAULT true,
            PRIMARY KEY (run_id, user_id)
        );
        GRANT ALL ON recsys.item_features, recsys.user_features TO rerank_writer;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS recsys.user_features")
    op.execute("DROP TABLE IF EXISTS recsys.item_features")
