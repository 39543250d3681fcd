"""Closing the loop (issue 25): what users were shown, the A/B readout views, a report link per run.

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-08

- ``shop.impressions`` (input contract, optional): one row per item shown to a user, with its placement,
  1-based rank, A/B arm (``variant``) and the ``run_id`` of the list it came from. Shops that log it get the
  A/B readout and position-corrected ranker training. No key: a shop may show the same item twice.
- ``recsys.ab_user_daily`` / ``recsys.ab_daily`` (sql/views/ab_daily.sql): exposure and outcomes per user and
  day, and per arm and day. ``rerank_reader`` may read ``ab_daily`` (aggregates only, no user ids);
  ``rerank_writer`` reads both (the ``rerank ab report`` confidence intervals need the per-user rows).
- ``recsys.runs.report_uri``: where the run's HTML report is (beside its stage files under RERANK_HOME).

(Chained on 0007; issue 24 may add an 0008: re-chain on merge.)
"""

from pathlib import Path

from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None

VIEWS = Path(__file__).resolve().parents[1] / "views"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS shop.impressions (
            user_id bigint NOT NULL,
            item_id bigint NOT NULL,
            placement text NOT NULL DEFAULT 'home',
            rank int NOT NULL CHECK (rank >= 1),
            variant text NOT NULL DEFAULT 'control',
            run_id text,
            ts timestamptz NOT NULL
        );
        CREATE INDEX IF NOT EXISTS impressions_user_ts ON shop.impressions (user_id, ts);
        CREATE INDEX IF NOT EXISTS impressions_ts ON shop.impressions (ts);
        GRANT SELECT ON shop.impressions TO rerank_writer;
        ALTER TABLE recsys.runs ADD COLUMN IF NOT EXISTS report_uri text;
        """
    )
    op.execute((VIEWS / "ab_daily.sql").read_text())
    op.execute(
        """
        GRANT SELECT ON recsys.ab_daily TO rerank_reader;
        GRANT SELECT ON recsys.ab_daily, recsys.ab_user_daily TO rerank_writer;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP VIEW IF EXISTS recsys.ab_daily;
        DROP VIEW IF EXISTS recsys.ab_user_daily;
        ALTER TABLE recsys.runs DROP COLUMN IF EXISTS report_uri;
        DROP TABLE IF EXISTS shop.impressions;
        """
    )
