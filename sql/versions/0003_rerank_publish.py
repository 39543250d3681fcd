"""Re-rank and publication: rule factor directions, repurchase windows, a merchandiser role, read views.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

- ``recsys.rules``: a boost must raise (factor >= 1) and a bury must lower (0 <= factor <= 1); the check is
  NOT VALID so rows written before it never block the upgrade, but every new or edited rule is checked.
- ``recsys.repurchase_windows``: days after a purchase before an item of a category (path prefix, longest
  wins) may be recommended again; a category not listed is never recommended again once bought.
- ``rerank_merchandiser``: edits rules and windows with SQL, reads nothing else.
- The read views keep their 0001 definition (sql/views); publish/swap.py re-creates them at each swap.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE recsys.rules ADD CONSTRAINT rules_factor_direction CHECK (
            (kind <> 'boost' OR factor >= 1) AND (kind <> 'bury' OR (factor >= 0 AND factor <= 1))
        ) NOT VALID;
        CREATE TABLE recsys.repurchase_windows (
            category text PRIMARY KEY,
            days double precision NOT NULL CHECK (days >= 0),
            note text
        );
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rerank_merchandiser') THEN
                CREATE ROLE rerank_merchandiser NOLOGIN;
            END IF;
        END $$;
        GRANT USAGE ON SCHEMA recsys TO rerank_merchandiser;
        GRANT SELECT, INSERT, UPDATE, DELETE ON recsys.rules, recsys.repurchase_windows TO rerank_merchandiser;
        GRANT USAGE ON SEQUENCE recsys.rules_rule_id_seq TO rerank_merchandiser;
        GRANT ALL ON recsys.repurchase_windows TO rerank_writer;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE IF EXISTS recsys.repurchase_windows;
        ALTER TABLE recsys.rules DROP CONSTRAINT IF EXISTS rules_factor_direction;
        REVOKE ALL ON recsys.rules FROM rerank_merchandiser;
        REVOKE ALL ON SEQUENCE recsys.rules_rule_id_seq FROM rerank_merchandiser;
        REVOKE USAGE ON SCHEMA recsys FROM rerank_merchandiser;
        """
    )
